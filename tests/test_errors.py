"""Every refusal: the exception type, and a message naming the function, the
offending value and the fix."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tensorbridge as tb

UNSUPPORTED = {
    "float4_e2m1fn_x2": r"t\.view\(torch\.uint8\)",
    "int1": r"t\.to\(torch\.int8\)",
    "int2": r"t\.to\(torch\.int8\)",
    "int3": r"t\.to\(torch\.int8\)",
    "int4": r"t\.to\(torch\.int8\)",
    "int5": r"t\.to\(torch\.int8\)",
    "int6": r"t\.to\(torch\.int8\)",
    "int7": r"t\.to\(torch\.int8\)",
    "uint1": r"t\.to\(torch\.uint8\)",
    "uint2": r"t\.to\(torch\.uint8\)",
    "uint3": r"t\.to\(torch\.uint8\)",
    "uint4": r"t\.to\(torch\.uint8\)",
    "uint5": r"t\.to\(torch\.uint8\)",
    "uint6": r"t\.to\(torch\.uint8\)",
    "uint7": r"t\.to\(torch\.uint8\)",
    "bits8": r"t\.view\(torch\.uint8\)",
    "bits16": r"t\.view\(torch\.uint8\)",
    "bits1x8": r"t\.view\(torch\.uint8\)",
    "bits2x4": r"t\.view\(torch\.uint8\)",
    "bits4x2": r"t\.view\(torch\.uint8\)",
}


@pytest.mark.parametrize("name", [n for n in UNSUPPORTED if hasattr(torch, n)])
def test_dtypes_without_a_numpy_equivalent(path, name):
    t = torch.empty(4, dtype=getattr(torch, name))
    with pytest.raises(TypeError, match=rf"^to_numpy: torch\.{name} has no NumPy dtype; .*"
                                        + UNSUPPORTED[name]):
        tb.to_numpy(t)
    with pytest.raises(TypeError, match=rf"torch\.{name}"):
        tb.to_numpy(t, copy=True)


@pytest.mark.parametrize("dtype", ["qint8", "quint8", "qint32"])
def test_quantized_tensors(path, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized creation is deprecated
        q = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, getattr(torch, dtype))
    with pytest.raises(TypeError, match=rf"torch\.{dtype} has no NumPy dtype; .*dequantize"):
        tb.to_numpy(q)


def test_meta_tensors(path):
    with pytest.raises(TypeError, match=r"^to_numpy: .*meta tensor.*no data"):
        tb.to_numpy(torch.empty(2, 3, device="meta"))


def nested(layout):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nested tensors are a prototype
        return torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=layout)


def masked():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MaskedTensor is a prototype
        return torch.masked.masked_tensor(torch.ones(3), torch.tensor([True, False, True]))


# Tensors no NumPy array can hold, whatever the route (the fast path, or
# collect / to_numpy_async's): a clear error each, never torch's internal one
# or, for a MaskedTensor, its data with the mask dropped.
NO_ARRAY = {
    "nested strided": (lambda: nested(torch.strided), TypeError, r"nested tensor.*to_padded"),
    "nested jagged": (lambda: nested(torch.jagged), TypeError, r"nested tensor.*unbind"),
    "masked": (masked, TypeError, r"MaskedTensor.*get_data\(\).*get_mask\(\)"),
    "65 dimensions": (lambda: torch.zeros((1,) * 65), ValueError,
                      r"ndim=65, outside \[0, 64\].*reshape"),
}


@pytest.mark.parametrize("case", NO_ARRAY)
@pytest.mark.parametrize("call", ["to_numpy", "copy=True", "to_numpy_async", "collect"])
def test_tensors_no_numpy_array_holds(path, case, call):
    make, error, match = NO_ARRAY[case]
    convert = {"to_numpy": tb.to_numpy, "copy=True": lambda t: tb.to_numpy(t, copy=True),
               "to_numpy_async": lambda t: tb.to_numpy_async(t).wait(),
               "collect": lambda t: tb.collect([t])}[call]
    prefix = "collect: batch 0: " if call == "collect" else "to_numpy: "
    with pytest.raises(error, match=f"^{prefix}.*{match}"):
        convert(make())


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_tensors_inside_a_torch_func_transform(path, transform):
    def f(x):
        tb.to_numpy(x)
        return x.sum()

    run = torch.func.vmap(f) if transform == "vmap" else torch.func.grad(f)
    with pytest.raises(TypeError, match=r"^to_numpy: x is a tensor inside a torch\.func "
                                        r"transform .*outside it"):
        run(torch.ones(2, 3))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without MKL-DNN")
def test_an_mkldnn_tensor_is_copied_through_its_own_to_dense(path):
    t = torch.arange(6.0).reshape(2, 3)
    a = tb.to_numpy(t.to_mkldnn())
    np.testing.assert_array_equal(a, t.numpy())
    with pytest.raises(BufferError, match=r"copy=False, but its layout is torch\._mkldnn"):
        tb.to_numpy(t.to_mkldnn(), copy=False)


@pytest.mark.parametrize("value", [[1, 2, 3], (1.0,), 3, 2.5, "abc", None, object(), {"a": 1}])
def test_objects_that_are_not_arrays(path, value):
    with pytest.raises(TypeError, match=rf"^to_numpy: cannot convert an object of type "
                                        rf"'{type(value).__name__}'; .*__dlpack__.*"):
        tb.to_numpy(value)


@pytest.mark.parametrize("copy", ["yes", 1, 0, np.bool_(True)])
def test_copy_must_be_none_or_a_bool(path, copy):
    with pytest.raises(TypeError, match=rf"to_numpy: copy must be None, True or False, got "
                                        rf"{copy!r}"):
        tb.to_numpy(torch.ones(2), copy=copy)


def test_out_must_be_a_writeable_ndarray(path):
    t = torch.ones(2, 3)
    with pytest.raises(TypeError, match="to_numpy: out must be a numpy.ndarray, got list"):
        tb.to_numpy(t, out=[0] * 6)
    readonly = np.empty((2, 3), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="to_numpy: out is read-only"):
        tb.to_numpy(t, out=readonly)


@pytest.mark.parametrize("source", ["view", "copy", "numpy"])
def test_out_must_match_shape_and_dtype_exactly(path, source):
    t = {"view": torch.ones(2, 3), "copy": torch.ones(2, 3, dtype=torch.cfloat).conj(),
         "numpy": np.ones((2, 3), np.float32)}[source]
    dtype = np.complex64 if source == "copy" else np.float32
    for shape in [(3, 2), (6,), (2, 3, 1), (1, 2, 3), (2, 4)]:
        with pytest.raises(ValueError, match=rf"to_numpy: out has shape \({shape[0]},"
                                             rf".*result has shape \(2, 3\)"):
            tb.to_numpy(t, out=np.empty(shape, dtype))
    with pytest.raises(ValueError, match=r"to_numpy: out has dtype float64, but the result "
                                         r"has dtype (float32|complex64)"):
        tb.to_numpy(t, out=np.empty((2, 3), np.float64))


@pytest.mark.parametrize("convert", [tb.to_numpy, lambda t, out: tb.to_numpy_async(t, out=out)
                                     .wait()], ids=["to_numpy", "to_numpy_async"])
def test_a_bad_out_is_refused_before_the_input_is_asked_anything(path, convert):
    asked = []

    class Spy(torch.Tensor):  # every torch function called on it is recorded
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            asked.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    t = torch.ones(2, 3).as_subclass(Spy)
    readonly = np.empty((2, 3), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(TypeError, match="to_numpy: out must be a numpy.ndarray, got list"):
        convert(t, out=[0] * 6)
    with pytest.raises(ValueError, match="to_numpy: out is read-only"):
        convert(t, out=readonly)
    assert asked == []
    convert(t, out=np.empty((2, 3), np.float32))
    assert asked  # the spy does see what reading it asks


def test_copy_false_with_out_is_contradictory(path):
    with pytest.raises(ValueError, match="copy=False cannot be combined with out="):
        tb.to_numpy(torch.ones(2), copy=False, out=np.empty(2, np.float32))


def test_unknown_and_positional_arguments(path):
    t = torch.ones(2)
    unexpected = r"^to_numpy\(\) got an unexpected keyword argument"
    with pytest.raises(TypeError, match=f"{unexpected} 'dtype'"):
        tb.to_numpy(t, dtype=np.float64)
    with pytest.raises(TypeError, match=r"^to_numpy\(\) takes 1 positional argument but 2 were"):
        tb.to_numpy(t, True)
    with pytest.raises(TypeError, match=r"^to_numpy\(\) missing 1 required positional argument"):
        tb.to_numpy()
    with pytest.raises(TypeError, match=r"^to_numpy\(\) got multiple values for argument 'x'"):
        tb.to_numpy(t, x=t)
    with pytest.raises(TypeError, match=f"{unexpected} 'route'"):
        tb.to_numpy(t, route=None)  # the fallback's own first parameter is not a keyword
    np.testing.assert_array_equal(tb.to_numpy(x=t), [1, 1])  # x by keyword, as in a def


def test_wrong_arguments_are_refused_before_the_input_is_asked_anything(path):
    class Unaskable(torch.Tensor):
        @property
        def device(self):
            raise AssertionError("asked")

    t = torch.ones(2).as_subclass(Unaskable)
    with pytest.raises(TypeError, match="copy must be None, True or False"):
        tb.to_numpy(t, copy="yes")
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        tb.to_numpy(t, None)


def test_an_ndarray_subclass_is_copied_by_its_own_copy(path):
    class Tracked(np.ndarray):
        copies = 0

        def copy(self, order="K"):
            Tracked.copies += 1
            return super().copy(order)

    a = np.arange(3.0).view(Tracked)
    assert tb.to_numpy(a) is a
    copied = tb.to_numpy(a, copy=True)
    assert type(copied) is Tracked and Tracked.copies == 1 and not np.shares_memory(a, copied)


def test_array_like_that_needs_a_copy_with_copy_false(path):
    class Listy:
        def __array__(self, dtype=None, copy=None):
            if copy is False:
                raise ValueError("cannot view a list")
            return np.array([1, 2, 3])

    with pytest.raises(BufferError, match="to_numpy: copy=False, but this Listy can only "
                                          "be converted by copying"):
        tb.to_numpy(Listy(), copy=False)
    np.testing.assert_array_equal(tb.to_numpy(Listy()), [1, 2, 3])


def test_errors_raised_by_the_producer_propagate(path):
    class Broken:
        def __dlpack__(self, **kwargs):
            raise RuntimeError("producer exploded")

        def __dlpack_device__(self):
            return (1, 0)

    with pytest.raises(RuntimeError, match="producer exploded"):
        tb.to_numpy(Broken())
