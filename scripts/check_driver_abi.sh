#!/usr/bin/env bash
# Our driver declarations (csrc/cuda_driver.h) against NVIDIA's cuda.h and
# cudaTypedefs.h of several CUDA versions, fetched from PyPI's runtime wheels.
#
#   scripts/check_driver_abi.sh [HEADERS_DIR [VERSION...]]
#
# HEADERS_DIR holds (or receives) <version>/cuda.h as scripts/fetch_cuda_headers.sh
# writes them; versions already there are not downloaded again; without it a
# scratch folder is used. VERSION defaults to 12.2 12.8 12.9 13.0.
# For each version:
#   1. every PFN_<name>_v<N> named by a CHECK_ENTRY / PENDING_ENTRY / PENDING_TYPE
#      line of scripts/check_driver_abi.cpp must be the largest non-per-thread
#      PFN version of <name> in that cudaTypedefs.h that is <= the version we ask
#      cuGetProcAddress for (kDeclaredCudaVersion; cuMemcpyBatchAsync:
#      kBatchCopyCudaVersion), i.e. exactly the ABI the driver hands us;
#   2. scripts/check_driver_abi.cpp must compile (its static_asserts are the
#      prototype, constant and layout checks) and run;
#   3. once, a deliberately broken copy of cuda_driver.h must fail to compile
#      (so that the check cannot pass by checking nothing).
# One "PASS <version>" or "FAIL <version>: why" line per version; exit 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
PY=${PYTHON:-python3}

headers=${1:-}
[ $# -gt 0 ] && shift
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(12.2 12.8 12.9 13.0)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
[ -n "$headers" ] || headers="$scratch/headers"

if ! scripts/fetch_cuda_headers.sh "$headers" "${versions[@]}" > "$scratch/folders"; then
  echo "FAIL: could not fetch the CUDA headers (see above)"
  exit 1
fi

declared=$(sed -n 's/.*kDeclaredCudaVersion = \([0-9]*\);.*/\1/p' csrc/cuda_driver.h)
batch=$(sed -n 's/.*kBatchCopyCudaVersion = \([0-9]*\);.*/\1/p' csrc/cuda_driver.h)
if [ -z "$declared" ] || [ -z "$batch" ]; then
  echo "FAIL: kDeclaredCudaVersion / kBatchCopyCudaVersion not found in csrc/cuda_driver.h"
  exit 1
fi

failed=0
self_tested=0
while read -r folder; do
  version=$(basename "$folder")
  # 1. the PFN versions named in the check are the ones cuGetProcAddress serves.
  if ! why=$("$PY" - "$folder/cudaTypedefs.h" scripts/check_driver_abi.cpp "$declared" "$batch" <<'PY'
import re, sys
typedefs, check, declared, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
available = {}
for name, v in re.findall(r"\bPFN_(cu\w+?)_v(\d+)\)\(", open(typedefs).read()):
    available.setdefault(name, set()).add(int(v))   # per-thread (_ptsz/_ptds) ones don't match
problems = []
for name, v in re.findall(r"^\s*(?:CHECK|PENDING)_(?:ENTRY|TYPE)\(\w+,\s*PFN_(cu\w+?)_v(\d+)\)",
                          open(check).read(), re.M):
    asked = batch if name == "cuMemcpyBatchAsync" else declared
    served = max((x for x in available.get(name, ()) if x <= asked), default=None)
    if served is None:
        if name in available:
            problems.append(f"{name}: no ABI <= {asked} in {sorted(available[name])}")
        continue  # not in this header (the batch copy before 12.8): the .cpp skips it too
    if served != int(v):
        problems.append(f"{name}: the check names v{v}, but at {asked} the driver serves v{served}")
if problems:
    print("; ".join(problems))
    sys.exit(1)
PY
  ); then
    echo "FAIL $version: $why"
    failed=1
    continue
  fi
  # 2. compile and run the check.
  binary="$scratch/check_$version"
  if ! "$CXX" -std=c++17 -Wall -Werror -I"$folder" -I csrc scripts/check_driver_abi.cpp \
      -o "$binary" 2> "$scratch/log_$version"; then
    echo "FAIL $version: does not compile against $folder/cuda.h:"
    grep -E 'error' "$scratch/log_$version" | head -n 5 | sed 's/^/    /'
    failed=1
    continue
  fi
  if ! output=$("$binary"); then
    echo "FAIL $version: $output"
    failed=1
    continue
  fi
  # 3. once: a broken copy of our header must be refused.
  if [ $self_tested -eq 0 ]; then
    mkdir -p "$scratch/broken"
    sed 's/CUresult(void\* dst, CUdeviceptr src, size_t bytes/CUresult(void* dst, CUdeviceptr src, unsigned bytes/' \
      csrc/cuda_driver.h > "$scratch/broken/cuda_driver.h"
    if cmp -s csrc/cuda_driver.h "$scratch/broken/cuda_driver.h"; then
      echo "note: self-test skipped (cuMemcpyDtoHAsync's declaration changed shape)"
    elif "$CXX" -std=c++17 -I"$folder" -I "$scratch/broken" scripts/check_driver_abi.cpp \
        -o "$scratch/broken/check" 2>/dev/null; then
      echo "FAIL $version: self-test: a cuMemcpyDtoHAsync with a 32-bit size compiled"
      failed=1
      continue
    fi
    self_tested=1
  fi
  echo "PASS $version: ${output##*$'\n'}"
  if [[ $output == *pending* ]]; then
    printf '%s\n' "$output" | grep '^  pending' | sed 's/^ */    /'
  fi
done < "$scratch/folders"

if [ "$(wc -l < "$scratch/folders")" -ne ${#versions[@]} ]; then
  echo "FAIL: expected ${#versions[@]} header folders, got $(wc -l < "$scratch/folders")"
  failed=1
fi
exit $failed
