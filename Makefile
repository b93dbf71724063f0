# jobworker: `make run` runs the service, `make test` runs the whole test suite,
# `make bench` measures the whole stack (as root; see docs/benchmarks.md).
# All install what they need on a fresh Debian 12 machine with a Rust toolchain.

CARGO       ?= cargo
PREFIX      ?= /usr/local
DESTDIR     ?=
SHARED      ?= ../shared
ADVISORY_DB := target/advisory-db

.PHONY: all build deps test lint fmt-check clippy deny test-host test-vm bench bench-deps

all: build

build:
	$(CARGO) build --workspace --locked

deps:
	.ci/install-deps

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

## Benchmarks of the whole stack against baselines measured in the same run (needs root).
## Prints a table and writes bench-results.json; see docs/benchmarks.md.
BENCH_PACKAGES := bubblewrap crun busybox-static util-linux

bench: bench-deps
	$(CARGO) build --release --workspace --locked
	$(CARGO) bench -p jobworker-api --bench stack --locked

bench-deps:
	@missing=""; for p in $(BENCH_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "bench: installing Debian packages:$$missing"; \
	    if [ "$$(id -u)" != 0 ]; then echo "bench: need root to install packages"; exit 1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
