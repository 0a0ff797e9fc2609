import gc

import pytest

from tensorbridge import _convert, _core

# The routes a torch CPU tensor can take through to_numpy: "exchange", the C
# fast path over the DLPack C exchange API (torch >= 2.10); "numpy-method",
# the C fast path over Tensor.numpy() (older torch); "python", every call
# dispatched by the Python implementation (which still views plain tensors
# through the native route that applies).
PATHS = ["exchange", "numpy-method", "python"]


@pytest.fixture(params=PATHS)
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
