#!/usr/bin/env bash
# Builds the Debian package, jobworker_<version>_<arch>.deb (what `make deb` runs), with
# the Debian tools themselves (dpkg-shlibdeps, dpkg-gencontrol, dpkg-deb):
#
#   - the tree is `make install DESTDIR=... PREFIX=/usr`, the install that `make
#     test-units` checks: the three release binaries (stripped), the units, the
#     sysusers.d and tmpfiles.d entries, and the example configuration in
#     /etc/jobworker, which the package declares as conffiles;
#   - a manual page per binary (help2man, from its --help);
#   - /usr/share/doc/jobworker: README.Debian, changelog.gz, and copyright, which also
#     lists the Rust crates linked into the binaries with their licences;
#   - the maintainer scripts of deploy/debian (see docs/design.md, "The Debian package").
#
# Prints the path of the package on stdout. Reproducible for a given commit: times come
# from SOURCE_DATE_EPOCH (default: the commit's time).
#
# Environment (optional):
#   DEB_VERSION             the package's version (default: the workspace's, e.g. 0.1.0)
#   DEB_MAINTAINER          the Maintainer field
#   JOBWORKER_DEB_DIR       where the package goes (default: <repo>/target/debian)
#   JOBWORKER_INSTALL_FROM  directory of already built binaries (default: target/release,
#                           built here)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
here=deploy/debian

log() { printf 'deb: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for tool in dpkg-deb dpkg-shlibdeps dpkg-gencontrol help2man strip; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing: \`make deb-deps\` (or .ci/install-deps) installs it"
done

workspace_version() {
    cargo metadata --format-version 1 --no-deps --locked |
        sed -n 's/.*"name":"jobctl","version":"\([^"]*\)".*/\1/p'
}
version=${DEB_VERSION:-$(workspace_version)}
[[ -n $version ]] || die "no version: set DEB_VERSION"
maintainer=${DEB_MAINTAINER:-jobworker maintainers <jobworker@example.org>}
arch=$(dpkg --print-architecture)
out=${JOBWORKER_DEB_DIR:-$repo/target/debian}
from=${JOBWORKER_INSTALL_FROM:-target/release}
# Not exported: a changed variable would make cargo rebuild the C parts of the TLS crate.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
first_year=$(git log --format=%ad --date=format:%Y 2>/dev/null | tail -n 1)
year=$(date -u -d "@$epoch" +%Y)
years=${first_year:-$year}
[[ $years == "$year" ]] || years="$years-$year"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit, with uncommitted changes"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"

# --- the tree ---------------------------------------------------------------------------
# make install builds the release binaries when they come from target/release.
log "make install DESTDIR=<stage> PREFIX=/usr"
make -s install DESTDIR="$root" PREFIX=/usr INSTALL_FROM="$from" >&2
bins=(jobworker-executor jobworker-api jobctl)
for b in "${bins[@]}"; do
    strip --remove-section=.comment --remove-section=.note "$root/usr/bin/$b"
done

declare -A summary=(
    [jobworker-executor]="jobworker's root daemon: runs isolated, resource-limited jobs"
    [jobworker-api]="jobworker's gRPC server (mutual TLS) in front of the executor"
    [jobctl]="command-line client of jobworker"
)
install -d -m 0755 "$root/usr/share/man/man1"
for b in "${bins[@]}"; do
    SOURCE_DATE_EPOCH=$epoch help2man --no-info --no-discard-stderr --name="${summary[$b]}" \
        --version-string="$version" "$root/usr/bin/$b" >"$tmp/$b.1" ||
        die "help2man $b failed"
    gzip -9n <"$tmp/$b.1" >"$root/usr/share/man/man1/$b.1.gz"
    chmod 0644 "$root/usr/share/man/man1/$b.1.gz"
done

doc=$root/usr/share/doc/jobworker
install -d -m 0755 "$doc"
install -m 0644 "$here/README.Debian" "$doc/README.Debian"
cargo tree --locked -e normal -p jobworker-executor -p jobworker-api -p jobctl \
    --prefix none --no-dedupe -f '{p}|{l}' |
    sed 's/ (\*)$//; s| (/[^)]*)||' | grep -Ev '^(jobworker|jobctl)' | LC_ALL=C sort -u |
    awk -F'|' '{ l = $2 == "" ? "a licence file of its own" : $2; printf " %s: %s\n", $1, l }' \
    >"$tmp/crates"
[[ -s $tmp/crates ]] || die "cargo tree named no crate"
sed -e "s/@YEARS@/$years/" -e "/^@CRATES@$/{r $tmp/crates" -e 'd}' "$here/copyright" \
    >"$doc/copyright"
chmod 0644 "$doc/copyright"
date_rfc=$(date -u -R -d "@$epoch")
cat >"$tmp/changelog" <<EOF
jobworker ($version) unstable; urgency=medium

  * Built from commit $commit.

 -- $maintainer  $date_rfc
EOF
gzip -9n <"$tmp/changelog" >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
if [[ -f $here/lintian-overrides ]]; then
    install -d -m 0755 "$root/usr/share/lintian/overrides"
    install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/jobworker"
fi

# --- the control area -------------------------------------------------------------------
install -d -m 0755 "$root/DEBIAN"
for s in postinst prerm postrm; do
    install -m 0755 "$here/$s" "$root/DEBIAN/$s"
done
(cd "$root" && find etc -type f -printf '/%p\n' | LC_ALL=C sort) >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
# md5sums of every file but the conffiles (dpkg keeps theirs itself).
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# dpkg-shlibdeps and dpkg-gencontrol read debian/control (and the changelog) of a
# source tree: a scratch one.
src=$tmp/src
mkdir -p "$src/debian"
sed "s|@MAINTAINER@|$maintainer|" "$here/control" >"$src/debian/control"
cp "$tmp/changelog" "$src/debian/changelog"
(
    cd "$src"
    printf 'misc:Depends=\n' >debian/substvars
    dpkg-shlibdeps -Tdebian/substvars "${bins[@]/#/$root/usr/bin/}"
    dpkg-gencontrol -pjobworker -P"$root" -v"$version" -Tdebian/substvars
) >&2

# Every file is root's, dated $epoch at the latest.
find "$root" -newermt "@$epoch" -exec touch -h -d "@$epoch" {} +
mkdir -p "$out"
deb=$out/jobworker_${version}_${arch}.deb
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
log "built $deb ($(du -h "$deb" | cut -f1))"
printf '%s\n' "$deb"
