"""to_device on a machine without a CUDA-enabled torch: the CPU target and
every refusal. The GPU copies themselves are in test_gpu.py (real GPU) and
test_device_copies.py (the staging engine, against the stand-in)."""

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tensorbridge as tb


def test_cpu_target_shares_memory_like_torch_as_tensor():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = tb.to_device(a, "cpu")
    assert t.device.type == "cpu" and t.dtype == torch.float32
    a[0, 0] = 42
    assert t[0, 0] == 42  # one memory, as torch.as_tensor(a) gives
    assert tb.to_device(t, "cpu") is t


def test_cpu_target_converts_dtypes_and_copies_what_torch_cannot_share():
    a = np.arange(6, dtype=np.float64)
    half = tb.to_device(a, "cpu", dtype=torch.float16)
    assert half.dtype == torch.float16 and half.tolist() == list(range(6))
    bf16 = tb.to_device(np.ones(3, ml_dtypes.bfloat16), "cpu")
    assert bf16.dtype == torch.bfloat16 and bf16.tolist() == [1.0, 1.0, 1.0]
    backwards = tb.to_device(a[::-1], "cpu")
    assert backwards.tolist() == a[::-1].tolist()
    frozen = a.copy()
    frozen.flags.writeable = False
    t = tb.to_device(frozen, "cpu")
    t[0] = 7  # a copy: the read-only array is left alone
    assert frozen[0] == 0
    assert tb.to_device(memoryview(b"ab"), "cpu").tolist() == [97, 98]


@pytest.mark.parametrize(("device", "dtype", "error", "message"), [
    ("gpu", None, ValueError, "device='gpu' is not a torch device"),
    ("meta", None, ValueError, "must be a CUDA device or the CPU, got 'meta'"),
    ("cpu", "float16", TypeError, "dtype must be a torch dtype"),
])
def test_bad_devices_and_dtypes(device, dtype, error, message):
    with pytest.raises(error, match=message):
        tb.to_device(np.ones(3), device, dtype=dtype)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_input_to_numpy_refuses_is_refused_naming_to_device(device, monkeypatch):
    from tensorbridge import _driver

    # CUDA "usable", so that the cuda target reaches the input's conversion
    monkeypatch.setattr(_driver, "cuda_status", lambda: {"available": True, "reason": ""})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(TypeError, match=r"^to_device: cannot convert an object of type 'list'"):
        tb.to_device([1, 2], device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_target_without_a_usable_gpu_says_so():
    with pytest.raises(RuntimeError, match=r"no usable CUDA GPU for 'cuda:1'.*"
                                           r"torch.cuda.is_available\(\) is False"):
        tb.to_device(np.ones(3), "cuda:1")
