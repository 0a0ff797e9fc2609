"""The Python half of scripts/gpu_check.sh: its stages' bodies and its summary.

    gpu_check_steps.py plan                     each stage's limit ("name=seconds ...") and the cap
    gpu_check_steps.py environment
    gpu_check_steps.py built PYTHON
        exit 0 when PYTHON's tensorbridge is built from this tree
    gpu_check_steps.py build HOST_PYTHON PYTHON create PYTHON's venv if missing, install, stamp
    gpu_check_steps.py tests JUNIT_XML          choose the driver, run pytest (again after a crash)
    gpu_check_steps.py standin                  build the stand-in driver, print its path
    gpu_check_steps.py array_api
    gpu_check_steps.py fixture PATH
    gpu_check_steps.py summary init|stage|finish SUMMARY ...

Standard library only, so that it runs with any interpreter: the summary is
written before anything is built. A stage body prints "REASON: ..." lines for
the summary, and exits SKIPPED (77, as automake's tests do) when it had nothing
to do on this machine.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The stages in their order, each with its limit in seconds (`timeout -k`'s,
# the grace included), for one call of at most 600 s on a lent GPU machine:
# together at most TOTAL_LIMIT, which leaves two minutes of the call to spare.
# Derived from cold starts on the GPU machines (16 cores): importing torch,
# CuPy and scikit-learn takes 5-15 s the first time, cuInit 1-3 s, cuSOLVER's
# start-up 2-5 s; gpu_check.sh's header says what each stage costs.
LIMITS = {"environment": 25, "build": 90, "abi": 15, "smoke": 90, "tests": 120,
          "array_api": 35, "bench": 80, "fixture": 25}
STAGES = list(LIMITS)
TOTAL_LIMIT = 480
SKIPPED = 77
STAMP = "tensorbridge-gpu-check.stamp"


def reason(text):
    print(f"REASON: {text}", flush=True)


def rehearsing():
    """GPU_CHECK_REHEARSAL=1: the stand-in driver takes the GPU's place."""
    return os.environ.get("GPU_CHECK_REHEARSAL", "0") not in ("", "0")


# -- environment -------------------------------------------------------------------


def environment():
    import importlib
    import shutil

    found = {"python": sys.version.split()[0], "executable": sys.executable}
    found["rehearsal"] = rehearsing()
    for name in ["numpy", "ml_dtypes", "torch", "cupy", "jax", "sklearn", "scipy", "pandas",
                 "matplotlib", "skorch", "dask", "distributed", "pytest", "hypothesis", "psutil",
                 "pybind11", "scikit_build_core", "cmake", "ninja"]:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            found[name] = f"missing ({type(error).__name__})"
    try:
        import torch

        found["torch.cuda"] = torch.cuda.is_available() and [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        found["torch.version.cuda"] = torch.version.cuda
    except Exception as error:  # noqa: BLE001
        found["torch.cuda"] = f"{type(error).__name__}: {error}"
    if shutil.which("nvidia-smi"):
        found["nvidia-smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                             text=True, timeout=20).stdout.strip()
    for tool in ("cmake", "ninja", "g++", "nvidia-smi"):
        where = shutil.which(tool)
        found[f"{tool} (on PATH)"] = where and subprocess.run(
            [where, "--version"], capture_output=True, text=True, timeout=20).stdout.split("\n")[0]
    found["cpus"] = os.cpu_count()
    print(json.dumps(found, indent=1))
    gpus = found["torch.cuda"]
    reason(f"torch sees {len(gpus)} GPU(s): {gpus[0]}" if isinstance(gpus, list) and gpus
           else "torch sees no GPU")
    missing = [name for name, version in found.items() if str(version).startswith("missing")]
    if missing:
        reason(f"not installed: {', '.join(missing)} (their tests and examples skip by name)")
    if rehearsing():
        reason("rehearsal: the stand-in driver takes the GPU's place")


# -- build -------------------------------------------------------------------------


def source_hash():
    """What the installed extension and package are made from."""
    digest = hashlib.sha256()
    paths = ["CMakeLists.txt", "pyproject.toml"]
    for top in ("csrc", "src"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
            paths += [os.path.relpath(os.path.join(folder, f), ROOT) for f in sorted(files)
                      if not f.endswith((".pyc", ".so"))]
    for path in paths:
        digest.update(path.encode() + b"\0")
        with open(os.path.join(ROOT, path), "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()


def built(python):
    """Why `python` needs a build, or None when it has this tree's tensorbridge."""
    if not os.path.exists(python):
        return f"{python} does not exist yet"
    probe = subprocess.run([python, "-c", "import sys, tensorbridge._core; print(sys.prefix)"],
                           capture_output=True, text=True, cwd="/", timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"tensorbridge does not import there ({last})"
    stamp = os.path.join(probe.stdout.strip(), STAMP)
    try:
        with open(stamp) as f:
            if f.read().strip() == source_hash():
                return None
    except OSError:
        return "it was not installed by gpu_check.sh's build stage (no stamp)"
    return "its tensorbridge was built from other sources (stale stamp)"


def build(host_python, python):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    pip = [python, "-m", "pip"]
    if not os.path.exists(python):
        venv = os.path.dirname(os.path.dirname(python))
        print(f"creating {venv} (sees this interpreter's packages; nothing is downloaded)",
              flush=True)
        made = subprocess.run([host_python, "-m", "venv", "--system-site-packages", venv])
        if made.returncode != 0:  # no ensurepip (Debian without python3-venv): pip from outside
            print("venv with pip failed; retrying without pip, installing with the host's pip",
                  flush=True)
            subprocess.run([host_python, "-m", "venv", "--system-site-packages", "--without-pip",
                            "--clear", venv], check=True)
            pip = [host_python, "-m", "pip", "--python", python]
    why = built(python)
    if why is None:
        reason("up to date: this tree's tensorbridge is already installed there")
        return 0
    print(f"building: {why}", flush=True)
    start = time.monotonic()
    installed = subprocess.run(pip + ["install", "--no-build-isolation", "--no-deps", "--no-index",
                                      "--force-reinstall", ROOT], env=env, cwd=ROOT)
    if installed.returncode != 0:
        reason(f"pip install failed (exit {installed.returncode}); the compiler's output is above")
        return 1
    prefix = subprocess.run([python, "-c", "import sys, tensorbridge._core; print(sys.prefix)"],
                            capture_output=True, text=True, cwd="/", check=True).stdout.strip()
    with open(os.path.join(prefix, STAMP), "w") as f:
        f.write(source_hash() + "\n")
    reason(f"built and installed in {time.monotonic() - start:.0f} s into {prefix}")
    return 0


# -- tests -------------------------------------------------------------------------


# The tests stage's selection: every test marked gpu, in every test file, and
# every README example (test_readme.py: they must run where users run them).
MARKED_GPU = re.compile(r"^[ \t]*(@pytest\.mark\.gpu\b|pytestmark = .*pytest\.mark\.gpu\b)",
                        re.MULTILINE)
KEEP_FILES = ["test_readme.py"]
MAX_RUNS = 6  # pytest runs in all: the first, and a rerun after each crash


def gpu_test_files():
    """The test files holding a GPU test, found by their text (importing them
    would cost the whole suite's imports)."""
    folder = os.path.join(ROOT, "tests")
    found = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                text = f.read()
            if name in KEEP_FILES or MARKED_GPU.search(text):
                found.append(f"tests/{name}")
    return found


def pytest_command(progress, require_gpu):
    """pytest as the GPU run needs it: no plugin of the machine's own (they
    may warn, or change the run), ours loaded by name, only our own warnings
    errors, a time limit per test, and the progress file that survives a crash."""
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
               "-p", "gpu_check_pytest", "--per-test-timeout=90", "-o", "faulthandler_timeout=45",
               "--warnings-fail-only-from=tensorbridge", f"--progress-file={progress}",
               "--keep-marked=gpu",
               *(f"--keep-file={name}" for name in KEEP_FILES)]
    if require_gpu:
        command.append("--fail-if-skipped=gpu")
    return command + gpu_test_files()


def read_progress(path):
    """What a progress file says: the tests started (in order), those ended,
    each test's outcome, and the last run's exit status (None: it crashed)."""
    started, ended, outcomes, finished = [], set(), {}, None
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                kind, _, value = line.rstrip("\n").partition("\t")
                if kind == "start":
                    started.append(value)
                    finished = None
                elif kind == "result":
                    outcome, _, nodeid = value.partition("\t")
                    if outcomes.get(nodeid) != "failed":  # a failed teardown stays failed
                        outcomes[nodeid] = outcome
                elif kind == "end":
                    ended.add(value)
                elif kind == "finished":
                    finished = int(value)
    return started, ended, outcomes, finished


def run_pytest(command, env, progress, junit_xml):
    """Runs pytest, and again after each crash, carrying on after the test that
    crashed (run N > 1 writes its JUnit XML beside the first, suffixed .N; a
    crashed run writes none: the progress file keeps its outcomes). Returns
    the exit status: 0 only when nothing crashed and the last run finished green."""
    crashed, last = [], 1
    for run in range(1, MAX_RUNS + 1):
        junit = junit_xml if run == 1 else junit_xml.replace(".xml", f".{run}.xml")
        if run > 1:
            print(f"\n== pytest run {run}: carrying on after {crashed[-1][0]}", flush=True)
        rc = subprocess.run([*command, f"--junitxml={junit}"], env=env, cwd=ROOT).returncode
        started, ended, outcomes, finished = read_progress(progress)
        if finished is not None and rc == finished:
            last = rc
            break
        unfinished = [nodeid for nodeid in started if nodeid not in ended]
        where = unfinished[-1] if unfinished else "(outside any test: collection or exit)"
        how = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
        crashed.append((where, how))
        reason(f"CRASHED: {where} ({how}); the tests after it ran in a new pytest")
        if not unfinished:
            break  # no test to step over: a rerun would crash the same way
    else:
        reason(f"stopped after {MAX_RUNS} pytest runs, each ended by a crash")
    _, _, outcomes, _ = read_progress(progress)
    counts = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    failed = sorted(nodeid for nodeid, outcome in outcomes.items() if outcome == "failed")
    reason(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
           + (f", {len(crashed)} crashed" if crashed else "")
           + f" in {run} pytest run(s)" + (f"; failed: {', '.join(failed[:10])}" if failed else ""))
    return 1 if crashed else last


def tests(junit_xml):
    """On a GPU: the GPU tests of every test file and the README's examples,
    on the real driver (a failure when torch finds a GPU and tensorbridge does
    not). In the rehearsal (GPU_CHECK_REHEARSAL=1): the same tests, with the
    stand-in driver in the GPU's place; what needs a GPU skips, by name."""
    env = dict(os.environ)
    if not rehearsing():
        env.pop("TENSORBRIDGE_LIBCUDA", None)
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                           env=env, cwd="/", timeout=120)
    print(probe.stdout + probe.stderr, flush=True)
    if probe.returncode != 0:
        reason("the probe (import tensorbridge, torch) failed: see the log")
        return 1
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    status = found["tensorbridge_status"]
    if rehearsing():
        if not found["tensorbridge_cuda"]:
            reason(f"FAILED: the rehearsal's stand-in driver did not load: {status.get('reason')}")
            return 1
        reason("rehearsal: the GPU run's tests, with the stand-in driver in the GPU's place "
               "(what needs a GPU is skipped: needs a GPU)")
    elif found["tensorbridge_cuda"]:
        reason(f"tensorbridge finds {status.get('device_count')} GPU(s): the GPU tests of every "
               "test file and the README's examples, on the real driver")
        env["TENSORBRIDGE_TEST_DRIVER"] = "real"
    elif found["torch_gpus"]:
        reason(f"FAILED: torch sees {found['torch_gpus']} GPU(s) but tensorbridge.cuda_available() "
               f"is False: {status.get('reason')!s} (library {status.get('library')!s})")
        return 1
    else:
        reason("no GPU on this machine: nothing to test (GPU_CHECK_REHEARSAL=1 rehearses this "
               "stage with the stand-in driver)")
        return SKIPPED
    scripts = os.path.join(ROOT, "scripts")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [scripts, env.get("PYTHONPATH")]))
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    # test_array_api.py holds its GPU test only where scipy's array API is on
    env["SCIPY_ARRAY_API"] = "1"
    progress = f"{junit_xml}.progress"
    if os.path.exists(progress):
        os.remove(progress)
    command = pytest_command(progress, require_gpu=not rehearsing())
    print(" ".join(command), flush=True)
    return run_pytest(command, env, progress, junit_xml)


def standin():
    """Builds the stand-in driver (tests/standin) and prints its path: the
    rehearsal's TENSORBRIDGE_LIBCUDA."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from standin.build import build

    print(build())


_PROBE = """
import json
import tensorbridge as tb
found = {"tensorbridge_cuda": tb.cuda_available(), "tensorbridge_status": tb.cuda_status()}
try:
    import torch
    found["torch_gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
except ImportError:
    found["torch_gpus"] = 0
print(json.dumps(found, default=str))
"""


# -- array_api -----------------------------------------------------------------------


def array_api():
    """TorchTransformer -> StandardScaler -> PCA -> LDA on CUDA tensors under
    scikit-learn's array API dispatch: the features never reach the host.
    Every device-to-host copy is counted (torch's profiler, CUPTI); the results
    are checked against the same pipeline on NumPy."""
    os.environ["SCIPY_ARRAY_API"] = "1"  # before scipy is imported, as scikit-learn needs
    import tempfile

    import torch

    if not torch.cuda.is_available():
        reason("skipped: needs a GPU (the GPU-resident pipeline was not run)")
        return SKIPPED
    import numpy as np
    import sklearn
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tensorbridge.sklearn import TorchTransformer

    def pipeline():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(),
                                    torch.nn.Linear(512, 128))
        return make_pipeline(TorchTransformer(model, batch_size=4096, device="cuda"),
                             StandardScaler(), PCA(n_components=16, svd_solver="full"),
                             LinearDiscriminantAnalysis())

    generator = torch.Generator().manual_seed(0)
    X_host = torch.randn(20_000, 256, generator=generator)
    y_host = (X_host[:, 0] + X_host[:, 1] > 0).long()
    X, y = X_host.cuda(), y_host.cuda()
    features_bytes = X.shape[0] * 128 * 4
    expected = pipeline().fit(X_host.numpy(), y_host.numpy()).predict_proba(X_host.numpy())
    with sklearn.config_context(array_api_dispatch=True):
        pipe = pipeline().fit(X, y)  # warm-up: kernels, cuBLAS/cuSOLVER handles
        torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            pipe = pipeline().fit(X, y)
            proba = pipe.predict_proba(X)
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        trace = os.path.join(folder, "trace.json")
        profile.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f).get("traceEvents", [])
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "DtoH" in e.get("name", "")]
    sizes = sorted((int(e.get("args", {}).get("bytes", 0)) for e in copies), reverse=True)
    found = {"device_to_host_copies": len(copies), "device_to_host_bytes": sum(sizes),
             "largest_copies_bytes": sizes[:5], "features_bytes": features_bytes,
             "memcpy_events_seen": sum(e.get("cat") == "gpu_memcpy" for e in events),
             "result": f"{type(proba).__module__}.{type(proba).__name__} on "
                       f"{getattr(proba, 'device', '?')}"}
    problems = []
    if not found["memcpy_events_seen"]:
        problems.append("the profiler recorded no memcpy at all (no CUPTI?): nothing was counted")
    # A copy of features is at least one batch row block; scikit-learn's own
    # scalars (tolerances, ranks) are a few bytes each.
    feature_copies = [size for size in sizes if size >= 4096 * 4]
    if feature_copies:
        problems.append(f"{len(feature_copies)} device-to-host copies of 16 KiB or more: "
                        f"{feature_copies[:5]} bytes")
    if not (isinstance(proba, torch.Tensor) and proba.is_cuda):
        problems.append(f"predict_proba returned {found['result']}, not a CUDA tensor")
    else:
        gap = float(np.abs(proba.cpu().numpy() - expected).max())
        found["max_abs_difference_vs_numpy"] = gap
        if gap > 1e-3:
            problems.append(f"results differ from the NumPy pipeline by {gap}")
    try:
        import cupy
    except ImportError:
        found["cupy"] = "not installed: not checked"
    else:
        X_cupy = cupy.asarray(X_host.numpy())
        with sklearn.config_context(array_api_dispatch=True):
            # fitted on CuPy: pipe[0], fitted on torch, takes torch only under dispatch
            out = pipeline()[0].fit(X_cupy).transform(X_cupy)
        found["cupy"] = f"{type(out).__module__}.{type(out).__name__}"
        if not isinstance(out, cupy.ndarray):
            problems.append(f"a CuPy X gave {found['cupy']}, not a CuPy array")
    print(json.dumps(found, indent=1))
    if problems:
        reason("FAILED: " + "; ".join(problems))
        return 1
    reason(f"pipeline on CUDA: {len(copies)} device-to-host copies, {sum(sizes)} bytes in all "
           f"(features: {features_bytes} bytes, none copied); same results as NumPy")
    return 0


# -- fixture -----------------------------------------------------------------------


def fixture(path):
    """A TorchTransformer fitted on the GPU, for tests/fixtures: CI checks that
    it loads where no GPU exists."""
    import joblib
    import numpy as np
    import torch

    from tensorbridge.sklearn import TorchTransformer

    if not torch.cuda.is_available():
        reason("skipped: needs a GPU (fixture not written)")
        return SKIPPED
    torch.manual_seed(0)
    model = TorchTransformer(torch.nn.Linear(4, 3), device="cuda").fit(
        np.ones((8, 4), np.float32))
    joblib.dump(model, path)
    reason(f"wrote {os.path.basename(path)} (fitted on {model.device_})")
    return 0


# -- the summary -------------------------------------------------------------------
#
# gpu_check.json: {"schema": 1, "complete" (false when the script was stopped:
# then "interrupted" is true), "exit_status", "started", "finished",
# "selected", "quick", "rehearsal", "limits_s", "stages": [{"stage", "status",
# "seconds", "limit_s", "exit", "reason", "log_tail"}, ...]} (the smoke stage's
# entry adds "checks": each check's JSON line) with one entry per stage in
# STAGES; status is "pending", "not selected", "passed", "failed", "timed out",
# "skipped" or "interrupted".

TAIL_LINES, TAIL_CHARS = 40, 4000


def _load(path):
    with open(path) as f:
        return json.load(f)


def _save(summary, path):
    part = f"{path}.part"
    with open(part, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(part, path)


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def summary_init(path, selected, quick, limits, rehearsal="0"):
    chosen = selected.split()
    limit_of = dict(pair.split("=") for pair in limits.split())
    _save({"schema": 1, "complete": False, "exit_status": None, "started": _now(),
           "finished": None, "selected": chosen, "quick": quick == "1",
           "rehearsal": rehearsal == "1",
           "limits_s": {name: int(value) for name, value in limit_of.items()},
           "stages": [{"stage": name, "status": "pending" if name in chosen else "not selected",
                       "seconds": None, "limit_s": int(limit_of.get(name, 0)), "exit": None,
                       "reason": None, "log_tail": None} for name in STAGES]}, path)


def summary_stage(path, name, status, seconds, limit, rc, log, note=""):
    summary = _load(path)
    lines = []
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            lines = f.read().splitlines()
    reasons = [line[len("REASON: "):] for line in lines if line.startswith("REASON: ")]
    tail = "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:]
    entry = next(s for s in summary["stages"] if s["stage"] == name)
    entry.update(status=status, seconds=float(seconds), limit_s=int(limit),
                 exit=int(rc) if rc not in ("", None) else None,
                 reason="; ".join(filter(None, [note, *reasons])) or None, log_tail=tail)
    if name == "bench":
        entry["bench"] = _bench_digest(os.path.join(os.path.dirname(path), "bench.json"))
    if name == "smoke":
        entry["checks"] = _smoke_checks(lines)
    _save(summary, path)


def _bench_digest(path):
    try:
        report = _load(path)
    except (OSError, ValueError) as error:
        return {"error": f"no bench JSON: {error}"}
    return {"schema": report.get("schema", 1), "complete": report.get("complete"),
            "interrupted": report.get("interrupted", False),
            "cases": len(report.get("cases", [])), "results": len(report.get("results", [])),
            "failed": [{k: f.get(k) for k in ("case", "method", "error")}
                       for f in report.get("failed", [])[:10]]}


def _smoke_checks(lines):
    """The smoke stage's verdicts: its log's JSON lines, one per check."""
    checks = []
    for line in lines:
        if line.startswith('{"check": '):
            try:
                checks.append(json.loads(line))
            except ValueError:
                continue
    return checks


def summary_finish(path, exit_status, how="complete"):
    summary = _load(path)
    summary.update(complete=how == "complete", exit_status=int(exit_status), finished=_now())
    if how != "complete":
        summary[how] = True
    _save(summary, path)
    for stage in summary["stages"]:
        seconds = "" if stage["seconds"] is None else f"{stage['seconds']:5.0f} s"
        print(f"  {stage['stage']:12} {stage['status']:13} {seconds:>8}  {stage['reason'] or ''}")


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "plan":
        print(" ".join(f"{name}={limit}" for name, limit in LIMITS.items()))
        print(f"total={sum(LIMITS.values())} cap={TOTAL_LIMIT}")
        return 0
    if command == "environment":
        return environment()
    if command == "built":
        why = built(args[0])
        print(why or "up to date")
        return 0 if why is None else 1
    if command == "build":
        return build(*args)
    if command == "tests":
        return tests(*args)
    if command == "standin":
        return standin()
    if command == "array_api":
        return array_api()
    if command == "fixture":
        return fixture(*args)
    if command == "summary":
        action, *rest = args
        return {"init": summary_init, "stage": summary_stage, "finish": summary_finish}[action](
            *rest)
    print(f"gpu_check_steps.py: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)
