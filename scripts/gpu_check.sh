#!/usr/bin/env bash
# The one-shot check for a lent GPU machine (no network; its Python already
# holds torch, CuPy, scikit-learn, pybind11, scikit-build-core, cmake and
# ninja; not skorch or dask). CI rehearses it (GPU_CHECK_REHEARSAL=1) in an
# environment shaped like the GPU machine's, the stand-in driver in the GPU's
# place: every stage runs as on a GPU, and what truly needs one (CUDA kernels,
# streams, CuPy arrays, the GPU-marked tests) is recorded "skipped: needs a GPU".
#
#   OUT=/some/dir [PYTHON=python3] [QUICK=1] [GPU_CHECK_REHEARSAL=1] [STAGES="tests bench"] \
#     scripts/gpu_check.sh [STAGE...]
#
# Stages, in this order; limit = its `timeout -k` limit, the grace included
# (scripts/gpu_check_steps.py LIMITS: one place); cost = what it is expected
# to take on the GPU machine (16 cores):
#   stage        limit  cost   what
#   environment    25   10 s   versions, GPUs, tools, which optional modules are missing
#   build          90   30 s   venv (when PYTHON is not one) + the extension, --no-build-isolation,
#                              --no-index (nothing downloaded); ~1 s when already up to date
#   abi            15    5 s   our driver prototypes against this machine's own cuda.h
#   smoke          90   45 s   short checks, each in a child process of its own with its own
#                              limit, one JSON line each (scripts/gpu_check_smoke.py): a
#                              verdict per check even if one crashes; timings recorded, not judged
#   tests         120   60 s   the GPU-marked tests of every test file and the README's examples,
#                              on the real driver (a failure when torch finds a GPU and
#                              tensorbridge does not); pytest without the machine's plugins,
#                              only tensorbridge's warnings errors, 90 s per test at most,
#                              a crashed test named and the rest run in a new pytest
#                              (scripts/gpu_check_pytest.py)
#   array_api      35   15 s   TorchTransformer -> StandardScaler -> PCA -> LDA on CUDA tensors
#                              under scikit-learn's array API dispatch: device-to-host copies
#                              counted by torch's profiler (none of the features), results vs NumPy
#   bench          80   65 s   tensorbridge bench --device all (QUICK=1: --quick): CPU, GPU
#                              ("skipped" without one), the workflows; cut at its limit,
#                              it still leaves bench.json with the cases it finished
#   fixture        25   10 s   a TorchTransformer fitted on the GPU, pickled for tests/fixtures
#   in all        480  240 s   no stage starts or runs past 480 s: one device call of at most
#                              600 s gets a complete verdict with two minutes to spare
#                              (GPU_CHECK_PLAN_ONLY=1 prints the stages and the total)
#
# A run has no second chance: after one 600 s call and a 1-2 minute start,
# about 3 minutes of device time remain, too few for a fresh machine. If a
# stage fails and the machine is still warm (it goes back after 30 s idle),
# rerun only that stage in the next call: STAGES=smoke (about 1 minute: the
# build is reused when this tree's sources are unchanged), STAGES=tests
# (about 1.5 minutes), STAGES=bench (about 1.5 minutes); a stage that needs
# the extension brings the build along (30 s more) on a fresh machine.
#
# $OUT receives at most 5 files, rewritten after every stage (a run cut short
# still leaves them): gpu_check.json (each stage's status, time, reason and
# log tail; the smoke stage's checks), bench.json, torch_transformer_cuda.pkl
# (with a GPU) and logs.tar.gz (every stage's full log and the tests' JUnit
# XML). Everything else (logs being written, the ABI binary, the venv) lives
# in a scratch folder removed at exit; scripts/check_gpu_out.py checks the rule.
# GPU_CHECK_LIMITS="bench=30 tests=60" changes stages' limits (the 480 s cap
# stays). GPU_CHECK_PLAN_ONLY=1 prints the stages that would run (and why build is
# among them) and runs nothing.
# Exit status: 0 when no stage failed or timed out (skipped stages say why),
# 1 otherwise, 2 for a usage error.
set -uo pipefail
STEPS_PY=$(dirname "$0")/gpu_check_steps.py
plan=$(python3 "$STEPS_PY" plan) || { echo "gpu_check.sh: no python3 to read the stages" >&2; exit 2; }
declare -A LIMIT=()
ALL_STAGES=""
for pair in $(head -n 1 <<< "$plan"); do
  LIMIT[${pair%=*}]=${pair#*=}
  ALL_STAGES+="${ALL_STAGES:+ }${pair%=*}"
done
TOTAL_LIMIT=$(sed -n 's/.* cap=\([0-9]*\)$/\1/p' <<< "$plan")  # no stage starts or runs past it
for pair in ${GPU_CHECK_LIMITS:-}; do  # e.g. "bench=30": lower a stage's limit for a try-out
  [[ $pair =~ ^([a-z]+)=([0-9]+)$ ]] && [ -n "${LIMIT[${BASH_REMATCH[1]}]:-}" ] \
    || { echo "gpu_check.sh: GPU_CHECK_LIMITS: bad entry '$pair'" >&2; exit 2; }
  LIMIT[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
done
GRACE=5          # timeout -k: SIGTERM at limit - GRACE, SIGKILL at the limit

usage() { echo "usage: OUT=DIR [PYTHON=python3] [QUICK=1] [STAGES='...'] $0 [STAGE...]; stages: $ALL_STAGES" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "gpu_check.sh: set OUT to the folder that receives the results" >&2; usage; }
SELECTED=${*:-${STAGES:-$ALL_STAGES}}
for stage in $SELECTED; do
  [[ " $ALL_STAGES " == *" $stage "* ]] || { echo "gpu_check.sh: unknown stage '$stage'" >&2; usage; }
done
HOST_PY=${PYTHON:-python3}
HOST_PY=$(command -v "$HOST_PY") || { echo "gpu_check.sh: no interpreter '${PYTHON:-python3}'" >&2; exit 2; }
# absolute, but not through its symlinks: a venv's python must stay the venv's
[[ $HOST_PY == /* ]] || HOST_PY=$PWD/$HOST_PY
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # PYTHON and OUT may be relative to the caller's folder
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
case "$SCRATCH/" in "$OUT"/*) echo "gpu_check.sh: the scratch folder may not be inside OUT" >&2; exit 2 ;; esac
STAGING=$SCRATCH/out    # what OUT receives, assembled here first
LOGS=$SCRATCH/logs
mkdir -p "$STAGING" "$LOGS"
SUMMARY=$STAGING/gpu_check.json
STEPS=(timeout -k 5 30 "$HOST_PY" "$ROOT/scripts/gpu_check_steps.py")
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
selected() { [[ " $SELECTED " == *" $1 "* ]]; }
QUICK_FLAG=""
[ "${QUICK:-0}" != 0 ] && QUICK_FLAG=--quick
REHEARSAL=""
[ "${GPU_CHECK_REHEARSAL:-0}" != 0 ] && REHEARSAL=1
export GPU_CHECK_REHEARSAL=${REHEARSAL:-0}

# The extension goes into PYTHON's environment when it is a virtual one, else
# into a scratch venv that sees the system's packages.
if "$HOST_PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  PY=$HOST_PY
else
  PY=$SCRATCH/venv/bin/python
fi
if ! selected build && { selected smoke || selected tests || selected array_api || selected bench \
                         || selected fixture; }; then
  if why=$("$HOST_PY" scripts/gpu_check_steps.py built "$PY" 2>&1); then :; else
    SELECTED="build $SELECTED"
    BUILD_NOTE="run although not selected: a selected stage needs the extension and $why"
  fi
fi
SELECTED=$(for stage in $ALL_STAGES; do selected "$stage" && printf '%s ' "$stage"; done)
SELECTED=${SELECTED% }
if [ -n "${GPU_CHECK_PLAN_ONLY:-}" ]; then  # say what would run, run nothing
  echo "stages: $SELECTED"
  [ -n "${BUILD_NOTE:-}" ] && echo "build: $BUILD_NOTE"
  total=0
  for stage in $SELECTED; do total=$((total + LIMIT[$stage])); done
  echo "limits: $(for stage in $SELECTED; do printf '%s=%s ' "$stage" "${LIMIT[$stage]}"; done)"
  echo "total: ${total} s at most (no stage runs past ${TOTAL_LIMIT} s)"
  exit 0
fi
limits=$(for stage in $ALL_STAGES; do printf '%s=%s ' "$stage" "${LIMIT[$stage]}"; done)
"${STEPS[@]}" summary init "$SUMMARY" "$SELECTED" "${QUICK_FLAG:+1}" "$limits" \
  "${REHEARSAL:-0}" || exit 2

publish() {  # OUT gets the staging folder's files, each replaced in one rename
  local log
  for log in "$LOGS"/*; do  # a runaway log is cut to its head and tail
    [ -f "$log" ] && [ "$(stat -c %s "$log")" -gt $((4 << 20)) ] || continue
    { head -c $((1 << 20)) "$log"; printf '\n[... cut by gpu_check.sh ...]\n'; tail -c $((3 << 20)) "$log"; } > "$log.cut" && mv "$log.cut" "$log"
  done
  tar -czf "$STAGING/logs.tar.gz" -C "$SCRATCH" logs 2>/dev/null
  local file
  for file in "$STAGING"/*; do
    [ -f "$file" ] && [[ $file != *.part ]] || continue  # .part: a write cut short
    cp "$file" "$OUT/.$(basename "$file").part" && mv -f "$OUT/.$(basename "$file").part" "$OUT/$(basename "$file")"
  done
}

elapsed() { awk -v a="$STAGE_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
failed=0
STAGE_PID=""
CURRENT=""
on_signal() {  # the script itself is stopped: end the stage, keep what it left
  trap - TERM INT
  [ -n "$STAGE_PID" ] && kill -TERM "$STAGE_PID" 2>/dev/null && wait "$STAGE_PID" 2>/dev/null
  [ -n "$CURRENT" ] && "${STEPS[@]}" summary stage "$SUMMARY" "$CURRENT" interrupted \
    "$(elapsed)" "${LIMIT[$CURRENT]}" "" "$LOGS/$CURRENT.log" "gpu_check.sh was stopped"
  "${STEPS[@]}" summary finish "$SUMMARY" 1 interrupted >/dev/null
  publish
  exit 1
}
trap on_signal TERM INT

record() {  # name status seconds rc note
  "${STEPS[@]}" summary stage "$SUMMARY" "$1" "$2" "$3" "${LIMIT[$1]}" "$4" "$LOGS/$1.log" "${5:-}"
  publish
}

run_stage() {  # name command...: under the stage's limit, logged, recorded
  local name=$1
  shift
  LAST_STATUS="not selected"
  selected "$name" || return 0
  if [ -n "${BUILD_FAILED:-}" ] && [[ " smoke tests array_api bench fixture " == *" $name "* ]]; then
    record "$name" skipped 0 "" "not run: the build stage $BUILD_FAILED"
    return 0
  fi
  local limit=${LIMIT[$name]} left=$((TOTAL_LIMIT - SECONDS - 5))
  [ "$left" -lt "$limit" ] && limit=$left && LIMIT[$name]=$left
  if [ "$limit" -le $((GRACE + 5)) ]; then
    LAST_STATUS=skipped
    record "$name" skipped 0 "" "no time left in the script's ${TOTAL_LIMIT} s"
    return 0
  fi
  echo "== $name (limit ${limit} s)"
  CURRENT=$name
  STAGE_START=$EPOCHREALTIME
  # In the background so that a signal to this script is handled at once.
  timeout -k "$GRACE" "$((limit - GRACE))" "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  STAGE_PID=$!
  wait "$STAGE_PID"
  local rc=$? status=passed
  STAGE_PID=""
  CURRENT=""
  case $rc in
    0) ;;
    77) status=skipped ;;
    124|137) status="timed out"; failed=1 ;;
    *) status=failed; failed=1 ;;
  esac
  record "$name" "$status" "$(elapsed)" "$rc" "$( [ "$name" = build ] && echo "${BUILD_NOTE:-}")"
  LAST_STATUS=$status
  echo "   $status"
  grep '^REASON: ' "$LOGS/$name.log" | sed 's/^/   /'
  tail -n 5 "$LOGS/$name.log" | sed 's/^/   | /'
}

run_stage environment "$HOST_PY" scripts/gpu_check_steps.py environment

run_stage build "$HOST_PY" scripts/gpu_check_steps.py build "$HOST_PY" "$PY"
[ "$LAST_STATUS" = passed ] || [ "$LAST_STATUS" = "not selected" ] || BUILD_FAILED=$LAST_STATUS

cuda_h=""
for dir in "${CUDA_HOME:-/nonexistent}/include" /usr/local/cuda/include \
           $("$HOST_PY" -c 'import nvidia, glob; print(" ".join(p for d in nvidia.__path__ for p in glob.glob(d + "/*/include")))' 2>/dev/null); do
  if [ -f "$dir/cuda.h" ]; then cuda_h=$dir; break; fi
done
if [ -n "$cuda_h" ]; then
  run_stage abi bash -c 'echo "cuda.h from $1" && g++ -std=c++17 -I"$1" scripts/check_driver_abi.cpp -o "$2" && "$2"' \
    abi "$cuda_h" "$SCRATCH/check_driver_abi"
elif selected abi; then
  echo "REASON: no cuda.h on this machine (CUDA_HOME, /usr/local/cuda, nvidia wheels)" > "$LOGS/abi.log"
  record abi skipped 0 ""
fi

# The driver the stages after the build use: the machine's own, or in the
# rehearsal the stand-in (built here, two devices) in the GPU's place.
DRIVER=(env -u TENSORBRIDGE_LIBCUDA)
if [ -n "$REHEARSAL" ]; then
  if standin=$("$HOST_PY" scripts/gpu_check_steps.py standin 2> "$LOGS/standin.log"); then
    DRIVER=(env TENSORBRIDGE_LIBCUDA="$standin" STANDIN_DEVICES=2)
  else
    BUILD_FAILED="could not build the rehearsal's stand-in driver (logs/standin.log)"
    failed=1
  fi
fi

run_stage smoke "${DRIVER[@]}" "$PY" scripts/gpu_check_smoke.py \
  --budget "$((LIMIT[smoke] - GRACE - 5))"

run_stage tests "${DRIVER[@]}" "$PY" scripts/gpu_check_steps.py tests "$LOGS/tests-junit.xml"

run_stage array_api "${DRIVER[@]}" "$PY" scripts/gpu_check_steps.py array_api

# SCIPY_ARRAY_API=1: the array API workflow measures dispatch on as well as off.
run_stage bench "${DRIVER[@]}" SCIPY_ARRAY_API=1 "$PY" -m tensorbridge bench \
  --device all $QUICK_FLAG --json "$STAGING/bench.json"

run_stage fixture "${DRIVER[@]}" "$PY" scripts/gpu_check_steps.py fixture \
  "$STAGING/torch_transformer_cuda.pkl"

echo "== summary ($OUT/gpu_check.json; full logs in $OUT/logs.tar.gz)"
"${STEPS[@]}" summary finish "$SUMMARY" "$failed"
publish
exit $failed
