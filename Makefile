# jobworker: `make run` runs the service, `make test` runs the whole test suite,
# `make deb` builds the Debian package, `make bench` measures the whole stack (as root;
# see docs/benchmarks.md).
# All install what they need on a fresh Debian 12 machine with a Rust toolchain.

CARGO       ?= cargo
PREFIX      ?= /usr/local
DESTDIR     ?=
SHARED      ?= ../shared
ADVISORY_DB := target/advisory-db

# Install layout (see docs/design.md, "Install layout"). Units, sysusers.d and tmpfiles.d
# entries go below $(PREFIX)/lib, which systemd searches for both /usr/local and /usr;
# configuration always goes to /etc/jobworker, state is /var/lib/jobworker.
BINDIR      ?= $(PREFIX)/bin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
CONFDIR     ?= /etc/jobworker
# Where `make install` takes the binaries from; it builds them first when this is the
# default release directory.
INSTALL_FROM ?= target/release
INSTALL_BINS := jobworker-executor jobworker-api jobctl
INSTALL_UNITS := jobworker-executor.socket jobworker-executor.service jobworker-api.service
# $(call install_config,SOURCE,NAME,MODE): deploy/SOURCE becomes $(CONFDIR)/NAME, unless
# that file exists: an administrator's configuration is never replaced.
install_config = if [ -e $(DESTDIR)$(CONFDIR)/$(2) ]; then echo "keeping $(DESTDIR)$(CONFDIR)/$(2)"; \
	else install -m $(3) deploy/$(1) $(DESTDIR)$(CONFDIR)/$(2); fi

.PHONY: all build deps run certs test lint fmt-check clippy deny test-host test-vm test-units install uninstall deb deb-deps test-deb test-systemd test-dev-run bench bench-deps fuzz fuzz-short

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

## The whole suite: gates first, then the units, make run and the Debian package, the
## host tests (root ones run as root), a short run of every fuzz target, then the cgroup
## v2 tests in a VM and the package under systemd in another.
test: deps lint deny build test-units test-dev-run test-deb test-host fuzz-short test-vm test-systemd
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

## Two instances of `make run` side by side, and their clean stop (as root; otherwise
## SKIPPED): deploy/check-dev-run.sh.
test-dev-run: build
	deploy/check-dev-run.sh

## The systemd units: `systemd-analyze verify`, the exposure scores, and an install into
## a temporary DESTDIR (deploy/check-units.sh).
test-units: build
	deploy/check-units.sh

## Installs the release binaries, the systemd units (with the binaries' installed paths),
## the sysusers.d and tmpfiles.d entries, and the example configuration, which never
## replaces an existing file.
install:
	@if [ "$(INSTALL_FROM)" = target/release ]; then \
		echo "$(CARGO) build --release --locked (jobworker-executor, jobworker-api, jobctl)"; \
		$(CARGO) build --release --locked -p jobworker-executor --bin jobworker-executor \
			-p jobworker-api --bin jobworker-api -p jobctl --bin jobctl; \
	fi
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(TMPFILESDIR)
	test -d $(DESTDIR)$(CONFDIR) || install -d -m 0755 $(DESTDIR)$(CONFDIR)
	for b in $(INSTALL_BINS); do install -m 0755 $(INSTALL_FROM)/$$b $(DESTDIR)$(BINDIR)/$$b || exit 1; done
	for u in $(INSTALL_UNITS); do \
		sed 's|@BINDIR@|$(BINDIR)|g' deploy/$$u >$(DESTDIR)$(UNITDIR)/$$u.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		mv -f $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -m 0644 deploy/sysusers.d/jobworker.conf $(DESTDIR)$(SYSUSERSDIR)/jobworker.conf
	install -m 0644 deploy/tmpfiles.d/jobworker.conf $(DESTDIR)$(TMPFILESDIR)/jobworker.conf
	$(call install_config,executor.toml,executor.toml,0600)
	$(call install_config,jobworker-api.toml,api.toml,0644)

## The Debian package, $(DEB_DIR)/jobworker_<version>_<arch>.deb: the release binaries,
## the units, the sysusers.d and tmpfiles.d entries, the example configuration as
## conffiles, manual pages, and the maintainer scripts of deploy/debian; then lintian,
## which must have nothing to say (the overrides in deploy/debian/lintian-overrides say
## why each remaining tag stays). DEB_VERSION overrides the version.
DEB_DIR      ?= target/debian
DEB_VERSION  ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
DEB_ARCH     ?= $(shell dpkg --print-architecture)
DEB_FILE      = $(DEB_DIR)/jobworker_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_PACKAGES := dpkg-dev help2man lintian binutils

deb: deb-deps
	JOBWORKER_DEB_DIR=$(DEB_DIR) DEB_VERSION=$(DEB_VERSION) deploy/debian/build.sh >/dev/null
	lintian --display-info --display-level +pedantic --fail-on error,warning,info,pedantic $(DEB_FILE)
	@echo "make deb: $(DEB_FILE)"

deb-deps:
	.ci/apt-need $(DEB_PACKAGES)

## The package's contents, control data and maintainer scripts (deploy/debian/check-deb.sh).
test-deb: deb
	deploy/debian/check-deb.sh $(DEB_FILE)

## The package installed, used, upgraded, removed and purged under a real systemd in a
## QEMU guest (deploy/systemd-vm/run.sh, as root; about five minutes under software
## emulation, see docs/design.md, "Verification").
test-systemd: deb
	JOBWORKER_DEB=$(DEB_FILE) deploy/systemd-vm/run.sh

## Removes what `make install` put, except the configuration and the state.
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(INSTALL_BINS))
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(INSTALL_UNITS))
	rm -f $(DESTDIR)$(SYSUSERSDIR)/jobworker.conf $(DESTDIR)$(TMPFILESDIR)/jobworker.conf

## Benchmarks of the whole stack against baselines measured in the same run (needs root).
## Prints a table and writes bench-results.json; see docs/benchmarks.md.
BENCH_PACKAGES := bubblewrap crun busybox-static util-linux openssh-server

bench: bench-deps
	$(CARGO) build --release --workspace --locked
	$(CARGO) bench -p jobworker-api --bench stack --locked

bench-deps:
	.ci/apt-need $(BENCH_PACKAGES)

## Fuzzing (cargo-fuzz, nightly; .ci/fuzz installs what is missing). fuzz-short runs
## each target FUZZ_SHORT_SECONDS (part of test); fuzz runs each FUZZ_SECONDS.
FUZZ_SECONDS       ?= 600
FUZZ_SHORT_SECONDS ?= 30

fuzz:
	.ci/fuzz $(FUZZ_SECONDS)

fuzz-short:
	.ci/fuzz $(FUZZ_SHORT_SECONDS)
