# jobworker: `make run` runs the service, `make test` runs the whole test suite.
# Both install what they need on a fresh Debian 12 machine with a Rust toolchain.

CARGO       ?= cargo
PREFIX      ?= /usr/local
DESTDIR     ?=
SHARED      ?= ../shared
ADVISORY_DB := target/advisory-db

.PHONY: all build deps run certs test lint fmt-check clippy deny test-host test-vm

all: build

build:
	$(CARGO) build --workspace --locked

deps:
	.ci/install-deps

## The whole service in the foreground (as root), with the development PKI.
run:
	deploy/dev-run.sh

## The development PKI in dev-pki/ (a CA, a server certificate, alice, bob and admin).
certs:
	$(CARGO) run --locked -q -p jobctl --bin jobworker-dev-certs -- dev-pki

## The whole suite: gates first, then host tests (root ones run as root), then the
## cgroup v2 tests in a VM.
test: deps lint deny build test-host test-vm
	@echo "make test: all passed"

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

deny:
	@test -d $(SHARED)/rustsec || { echo "deny: $(SHARED)/rustsec is missing (the RustSec snapshot)"; exit 1; }
	$(SHARED)/rustsec/prepare-db $(ADVISORY_DB)
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check

test-host:
	@if [ "$$(id -u)" != 0 ]; then echo "NOTE: not root: root tests will print SKIPPED lines"; fi
	$(CARGO) test --workspace --locked

test-vm:
	.ci/vm/test-vm.sh
