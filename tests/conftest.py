import gc
import sys

import pytest

from tensorbridge import _convert, _core

# The routes a torch CPU tensor can take through to_numpy: "exchange", the C
# fast path over the DLPack C exchange API (torch >= 2.10); "numpy-method",
# the C fast path over Tensor.numpy() (older torch); "python", every call
# dispatched by the Python implementation (which still views plain tensors
# through the native route that applies).
PATHS = ["exchange", "numpy-method", "python"]


# The fast tier (-m "not slow") takes the two routes of today's torch; the
# full suite all three.
@pytest.fixture(params=[pytest.param(p, marks=pytest.mark.slow) if p == "numpy-method" else p
                        for p in PATHS])
def path(request):
    _core.set_fast_path(request.param != "python")
    _core.set_exchange_api(request.param == "exchange")
    yield request.param
    _core.set_fast_path(True)
    _core.set_exchange_api(True)
    _convert.install()


@pytest.fixture
def collect_garbage():
    gc.collect()
    yield gc.collect
    gc.collect()


# -- the CUDA driver the engine tests run against ------------------------------
#
# By default: the stand-in driver (tests/standin), built here and named by
# TENSORBRIDGE_LIBCUDA before anything loads a driver. With
# TENSORBRIDGE_TEST_DRIVER=real (scripts/gpu_check.sh on a GPU machine): the
# real libcuda, and the stand-in tests skip themselves.
import os

REAL_DRIVER = os.environ.get("TENSORBRIDGE_TEST_DRIVER") == "real"
_standin = None


def pytest_configure(config):
    global _standin
    if os.environ.get("TENSORBRIDGE_SANITIZE") and "ASAN_OPTIONS" in os.environ:
        # Leak detection in this process only: in every child (each would
        # import torch) it costs about a minute and checks nothing of ours.
        os.environ["ASAN_OPTIONS"] += ":detect_leaks=0"
    if REAL_DRIVER:
        return
    from standin.build import StandIn, build

    library = build()
    os.environ["TENSORBRIDGE_LIBCUDA"] = str(library)
    os.environ.setdefault("STANDIN_DEVICES", "2")
    _standin = StandIn(library)


@pytest.fixture
def standin():
    """The stand-in's control panel, reset; checks the pool is clean and
    nothing is left pinned in place after."""
    if _standin is None:
        pytest.skip("runs against the stand-in driver only")
    import tensorbridge as tb
    from tensorbridge import _core

    _standin.reset()
    yield _standin
    _core.wait_for_all_transfers()
    # Whatever the test did, the engine never made a call that cuda.h forbids
    # (tests that provoke one on purpose clear the count).
    misuses, spinning = _standin.misuses(), _standin.calls("spinning cuEventSynchronize")
    _standin.reset()
    assert not misuses, misuses
    assert spinning == 0, "a wait spun a core (an event without CU_EVENT_BLOCKING_SYNC)"
    gc.collect()
    stats = tb.pinned_memory_stats()
    tb.set_pinned_memory_limit(_DEFAULT_LIMIT)
    _core.set_staging_chunk_bytes(16 << 20)
    assert stats["in_use_bytes"] == 0, stats
    assert stats["registered_bytes"] == 0, stats  # every pin closed, or its handle collected


_DEFAULT_LIMIT = 4 << 30


def pytest_collection_finish(session):
    # Tests call gc.collect() often (collect_garbage, standin): frozen, what the
    # imports and collection made (torch, scikit-learn, the parametrized cases)
    # is no longer scanned each time (0.15 s a call), only what the tests make.
    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session):
    # Frozen objects are never collected, not even at exit: thawed, the
    # interpreter frees at shutdown what it always did (LeakSanitizer's view).
    gc.unfreeze()


# Every collected test as (file name, marked slow), kept before `-m` deselects
# any: test_package.py checks that each file keeps tests in the fast tier.
TIERS = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    config.stash[TIERS] = [(item.path.name, item.get_closest_marker("slow") is not None)
                           for item in items]
    # GPU tests need a real GPU, found by tensorbridge's own probe.
    import tensorbridge as tb

    if REAL_DRIVER and tb.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU: none found by tensorbridge.cuda_available() on "
                                   "the real driver (run with TENSORBRIDGE_TEST_DRIVER=real on "
                                   "a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and any(fuzz.FUZZ_CASES.values()):
        cases = ", ".join(f"{name} {count}" for name, count in fuzz.FUZZ_CASES.items())
        terminalreporter.write_line(f"fuzz cases tried: {cases}")


# The two routes of to_numpy for device memory: any DLPack producer through
# the Python route, and a producer publishing the C exchange API (as torch
# CUDA tensors do) copied by the native fast path.
@pytest.fixture(params=["dlpack", "exchange"])
def Device(request):
    from device_producers import DeviceArray, ExchangeDeviceArray

    return DeviceArray if request.param == "dlpack" else ExchangeDeviceArray
