#!/usr/bin/env bash
# The one-shot check for a lent GPU machine (no network; its Python already
# holds torch, CuPy, pybind11, scikit-build-core, cmake and ninja), run by CI
# too, where the stand-in driver takes the GPU's place.
#
#   OUT=/some/dir [PYTHON=python3] [QUICK=1] scripts/gpu_check.sh
#
# Stages, each under its own timeout (480 s in all at most), each writing
# its log to $OUT/<stage>.log and the running summary to $OUT/gpu_check.json:
#   environment  versions, GPUs, which optional modules are missing
#   build        the extension, --no-build-isolation (no downloads)
#   abi          our driver prototypes against this machine's own cuda.h
#   tests        tests/test_gpu.py on the real driver when a GPU is found,
#                else the engine tests against the stand-in driver
#   bench        tensorbridge bench: CPU, the GPU ("skipped" without one) and
#                the workflows (TorchTransformer on the GPU when present)
#   fixture      a TorchTransformer fitted on the GPU, pickled for tests/fixtures
# Exit status: 0 when no stage failed (skipped stages say why in the JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STAGES="$OUT/.stages"
: > "$STAGES"
failed=0

record() {  # name status seconds detail
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"
  "$PY" - "$STAGES" "$OUT/gpu_check.json" <<'PY'
import json, sys
stages = []
for line in open(sys.argv[1]):
    name, status, seconds, detail = line.rstrip("\n").split("\t", 3)
    stages.append({"stage": name, "status": status, "seconds": float(seconds), "detail": detail})
json.dump({"stages": stages}, open(sys.argv[2], "w"), indent=2)
PY
}

run_stage() {  # name timeout command...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local status=passed
  if [ $rc -eq 124 ]; then status="timed out after ${limit}s"; failed=1
  elif [ $rc -ne 0 ]; then status="failed (exit $rc)"; failed=1; fi
  record "$name" "$status" "$((SECONDS - start))" "$(tail -n 3 "$OUT/$name.log" | tr '\t\n' '  ')"
  echo "   $status"
  tail -n 5 "$OUT/$name.log"
}

run_stage environment 30 "$PY" - <<'PY'
import importlib, json, shutil, subprocess
found = {}
for name in ["numpy", "ml_dtypes", "torch", "cupy", "sklearn", "pytest", "hypothesis", "psutil"]:
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as error:  # noqa: BLE001
        found[name] = f"missing ({type(error).__name__})"
try:
    import torch
    found["torch.cuda"] = torch.cuda.is_available() and [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
except Exception as error:  # noqa: BLE001
    found["torch.cuda"] = str(error)
if shutil.which("nvidia-smi"):
    found["nvidia-smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                         text=True).stdout.strip()
print(json.dumps(found, indent=1))
PY

# Build into the interpreter's own environment when it is a virtual one, else
# into a new one that sees the system's packages (nothing is downloaded).
if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  "$PY" -m venv --system-site-packages "$OUT/venv" && PY="$OUT/venv/bin/python"
fi
run_stage build 120 "$PY" -m pip install --no-build-isolation --no-deps --no-index -q .

cuda_h=""
for dir in "${CUDA_HOME:-/nonexistent}/include" /usr/local/cuda/include \
           $("$PY" -c 'import nvidia, glob; print(" ".join(p for d in nvidia.__path__ for p in glob.glob(d + "/*/include")))' 2>/dev/null); do
  if [ -f "$dir/cuda.h" ]; then cuda_h=$dir; break; fi
done
if [ -n "$cuda_h" ]; then
  run_stage abi 30 bash -c "g++ -std=c++17 -I'$cuda_h' scripts/check_driver_abi.cpp -o '$OUT/check_driver_abi' && '$OUT/check_driver_abi'"
else
  record abi "skipped" 0 "no cuda.h on this machine (CUDA_HOME, /usr/local/cuda, nvidia wheels)"
fi

if env -u TENSORBRIDGE_LIBCUDA "$PY" -c 'import tensorbridge as tb, sys; sys.exit(not tb.cuda_available())' 2>/dev/null; then
  run_stage tests 120 env -u TENSORBRIDGE_LIBCUDA TENSORBRIDGE_TEST_DRIVER=real \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_readme.py
else
  run_stage tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_device_engine.py tests/test_gpu.py
fi

run_stage bench 150 env -u TENSORBRIDGE_LIBCUDA "$PY" -m tensorbridge bench --device all ${QUICK:+--quick} --json "$OUT/bench.json"

# A TorchTransformer fitted on this machine's GPU, for tests/fixtures: CI
# checks that it loads where no GPU exists.
run_stage fixture 30 env -u TENSORBRIDGE_LIBCUDA "$PY" - "$OUT/torch_transformer_cuda.pkl" <<'PY'
import sys, joblib, numpy as np, torch
from tensorbridge.sklearn import TorchTransformer
if not torch.cuda.is_available():
    print("no CUDA GPU: fixture not written"); sys.exit(0)
torch.manual_seed(0)
model = TorchTransformer(torch.nn.Linear(4, 3), device="cuda").fit(np.ones((8, 4), np.float32))
joblib.dump(model, sys.argv[1])
print("wrote", sys.argv[1], model.device_)
PY

echo "== summary in $OUT/gpu_check.json"
cat "$OUT/gpu_check.json"
exit $failed
