# jobworker: `make run` runs the service, `make test` runs the whole test suite.
# Both install what they need on a fresh Debian 12 machine with a Rust toolchain.

CARGO       ?= cargo
PREFIX      ?= /usr/local
DESTDIR     ?=
SHARED      ?= ../shared
ADVISORY_DB := target/advisory-db

.PHONY: all build deps test lint fmt-check clippy deny test-host test-vm fuzz fuzz-short

all: build

build:
	$(CARGO) build --workspace --locked

deps:
	.ci/install-deps

## The whole suite: gates first, then host tests (root ones run as root), a short run
## of every fuzz target, then the cgroup v2 tests in a VM.
test: deps lint deny build test-host fuzz-short test-vm
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

## Fuzzing (cargo-fuzz, nightly; .ci/fuzz installs what is missing). fuzz-short runs
## each target FUZZ_SHORT_SECONDS (part of test); fuzz runs each FUZZ_SECONDS.
FUZZ_SECONDS       ?= 600
FUZZ_SHORT_SECONDS ?= 30

fuzz:
	.ci/fuzz $(FUZZ_SECONDS)

fuzz-short:
	.ci/fuzz $(FUZZ_SHORT_SECONDS)
