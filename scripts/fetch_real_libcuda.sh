#!/usr/bin/env bash
# Fetches NVIDIA's real driver library, libcuda.so.1, as Debian packages it
# (libcuda1 from the non-free component: the 535 driver on bookworm), for
# tests/test_real_driver.py on machines without a GPU. Nothing is installed:
# apt runs with a private sources list, package lists and cache (the system's
# apt configuration is left as it is), and the package is unpacked with
# dpkg -x into DEST.
#
#   scripts/fetch_real_libcuda.sh DEST        (prints the absolute path of libcuda.so.1)
#
# Environment: LIBCUDA_PACKAGE (default libcuda1; e.g. libcuda1=535.261.03-1 for
# one version), DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR (default: the ones this
# machine's apt sources use, else deb.debian.org), DEBIAN_SUITE (default: this
# machine's codename). Needs a Debian machine (apt-get, dpkg, the archive
# keyring); works as root from scratch. A DEST that already holds the library is
# reused. Exits non-zero, saying why, when anything fails.
set -euo pipefail

die() { echo "fetch_real_libcuda: $*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
mkdir -p "$1"
dest=$(cd "$1" && pwd)

existing=$(find "$dest/root" -name libcuda.so.1 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ] && [ -e "$existing" ]; then
  echo "fetch_real_libcuda: reusing $existing" >&2
  echo "$existing"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (Debian)"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "no Debian archive keyring at $keyring"

# The suite and mirrors this machine's apt already uses (deb822 or one-line format).
. /etc/os-release
suite=${DEBIAN_SUITE:-${VERSION_CODENAME:-}}
[ -n "$suite" ] || die "cannot tell the Debian suite (no VERSION_CODENAME in /etc/os-release)"
uris=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
         2>/dev/null | sed -n -e 's/^URIs:[[:space:]]*//p' \
         -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' || true)
mirror=${DEBIAN_MIRROR:-$(printf '%s\n' $uris | grep -E '/debian/?$' | head -n 1 || true)}
security=${DEBIAN_SECURITY_MIRROR:-$(printf '%s\n' $uris | grep -E '/debian-security/?$' | head -n 1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${security:-http://deb.debian.org/debian-security}

apt_dir="$dest/apt"
rm -rf "$apt_dir"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
cat > "$apt_dir/sources.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: non-free
Signed-By: $keyring

Types: deb
URIs: $security
Suites: $suite-security
Components: non-free
Signed-By: $keyring
EOF
apt_options=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.sources"
  -o "Dir::Etc::SourceParts=$apt_dir/no-parts"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Retries=3"
)
echo "fetch_real_libcuda: non-free of $suite from $mirror and $security" >&2
apt-get "${apt_options[@]}" -q update >&2 || die "apt-get update failed"
package=${LIBCUDA_PACKAGE:-libcuda1}
(cd "$apt_dir/debs" && apt-get "${apt_options[@]}" -q download "$package" >&2) ||
  die "apt-get download $package failed"
deb=$(ls "$apt_dir"/debs/*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || die "apt-get download $package left no .deb"
dpkg-deb -c "$deb" | grep -q 'libcuda\.so\.1 ' || die "$(basename "$deb") has no libcuda.so.1"
rm -rf "$dest/root"
dpkg -x "$deb" "$dest/root" || die "dpkg -x $deb failed"
library=$(find "$dest/root" -name libcuda.so.1 | head -n 1)
[ -n "$library" ] && [ -e "$library" ] || die "libcuda.so.1 missing (or a dangling link) after dpkg -x"
echo "fetch_real_libcuda: $(basename "$deb") -> $library -> $(readlink -f "$library")" >&2
echo "$library"
