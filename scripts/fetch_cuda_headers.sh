#!/usr/bin/env bash
# Downloads NVIDIA's own cuda.h (and cudaTypedefs.h, which holds the versioned
# PFN_* typedefs) from the CUDA runtime wheels on PyPI, for
# scripts/check_driver_abi.sh. Nothing is installed and nothing lands in the
# repository: each header goes to DEST/<version>/.
#
#   scripts/fetch_cuda_headers.sh DEST [VERSION...]     (default: 12.2 12.8 12.9 13.0)
#
# VERSION is major.minor; 12.x comes from nvidia-cuda-runtime-cu12==12.x.*,
# 13.x and later from nvidia-cuda-runtime==13.x.* (the 13 wheels dropped the
# -cuXX suffix and keep their headers under nvidia/cu13/include/). A version
# already present in DEST (both headers there) is not downloaded again.
# Prints one folder per version on stdout (what -I needs); progress on stderr.
# Exits non-zero, saying which, when a download or an extraction fails.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 DEST [VERSION...]" >&2
  exit 2
fi
dest=$1
shift
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(12.2 12.8 12.9 13.0)
PY=${PYTHON:-python3}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for version in "${versions[@]}"; do
  if ! [[ $version =~ ^[0-9]+\.[0-9]+$ ]]; then
    echo "fetch_cuda_headers: version must be major.minor, got '$version'" >&2
    exit 2
  fi
  out="$dest/$version"
  if [ -s "$out/cuda.h" ] && [ -s "$out/cudaTypedefs.h" ]; then
    echo "fetch_cuda_headers: $version already in $out" >&2
    echo "$out"
    continue
  fi
  major=${version%%.*}
  if [ "$major" -le 12 ]; then
    requirement="nvidia-cuda-runtime-cu${major}==${version}.*"
  else
    requirement="nvidia-cuda-runtime==${version}.*"
  fi
  wheels="$scratch/$version"
  echo "fetch_cuda_headers: downloading $requirement" >&2
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
      -d "$wheels" "$requirement" >&2; then
    echo "fetch_cuda_headers: FAILED to download $requirement" >&2
    exit 1
  fi
  mkdir -p "$out"
  # zipfile rather than unzip: a fresh machine may not have unzip.
  if ! "$PY" - "$out" "$wheels"/*.whl <<'PY' >&2; then
import sys, zipfile, os
out, wheel_paths = sys.argv[1], sys.argv[2:]
if len(wheel_paths) != 1:
    sys.exit(f"expected one wheel, got {wheel_paths}")
with zipfile.ZipFile(wheel_paths[0]) as wheel:
    for header in ("cuda.h", "cudaTypedefs.h"):
        members = [n for n in wheel.namelist() if n.endswith("/include/" + header)]
        if len(members) != 1:
            sys.exit(f"{os.path.basename(wheel_paths[0])}: no single */include/{header} "
                     f"(found {members})")
        with wheel.open(members[0]) as src, open(os.path.join(out, header), "wb") as dst:
            dst.write(src.read())
    print(f"fetch_cuda_headers: {os.path.basename(wheel_paths[0])} -> {out}")
PY
    echo "fetch_cuda_headers: FAILED to extract the headers of $requirement" >&2
    rm -rf "$out"
    exit 1
  fi
  got=$(sed -n 's/^#define CUDA_VERSION \([0-9]*\).*/\1/p' "$out/cuda.h")
  want=$(( major * 1000 + ${version#*.} * 10 ))
  if [ "$got" != "$want" ]; then
    echo "fetch_cuda_headers: $out/cuda.h says CUDA_VERSION '$got', expected $want" >&2
    exit 1
  fi
  echo "$out"
done
