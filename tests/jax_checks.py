"""to_numpy over JAX arrays, run by tests/test_jax.py in a process of its own:
JAX starts threads and warns on fork once imported, which the rest of the
suite (fork tests, warnings as errors) must not inherit.

Each check is a function; the process runs those named on its command line
(all by default) and exits non-zero at the first that fails."""

import gc
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import tensorbridge as tb

jax.config.update("jax_enable_x64", True)  # float64 and int64 arrays, as NumPy has


def same_memory(a, x):
    return np.shares_memory(a, np.asarray(x))


def check_every_dtype_is_a_zero_copy_read_only_view():
    for dtype in [jnp.bool_, jnp.int8, jnp.int16, jnp.int32, jnp.int64, jnp.uint8, jnp.uint16,
                  jnp.uint32, jnp.uint64, jnp.float16, jnp.float32, jnp.float64, jnp.complex64,
                  jnp.complex128, jnp.bfloat16, jnp.float8_e4m3fn, jnp.float8_e5m2]:
        x = jnp.arange(6).reshape(2, 3).astype(dtype)
        a = tb.to_numpy(x)
        assert a.dtype == np.dtype(dtype) and a.shape == (2, 3), (dtype, a.dtype, a.shape)
        assert same_memory(a, x), dtype
        # JAX arrays are immutable, and JAX's legacy capsule cannot say so
        assert not a.flags.writeable, dtype
        np.testing.assert_array_equal(a.astype(np.float64), np.asarray(x).astype(np.float64))
    assert tb.to_numpy(jnp.arange(3).astype(jnp.bfloat16)).dtype == ml_dtypes.bfloat16


def check_layouts_and_shapes():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    for y in [x.T, x[:, 1:, ::2], jnp.float32(3.5), jnp.zeros((0, 3)), x.reshape(-1)]:
        a = tb.to_numpy(y)
        np.testing.assert_array_equal(a, np.asarray(y))
        assert a.shape == y.shape


def check_copies_and_out():
    x = jnp.arange(6.0)
    copied = tb.to_numpy(x, copy=True)
    assert copied.flags.writeable and copied.flags.owndata and not same_memory(copied, x)
    copied[0] = 100.0
    assert float(x[0]) == 0.0  # the JAX array is untouched
    out = np.empty(6)
    assert tb.to_numpy(x, out=out) is out
    np.testing.assert_array_equal(out, np.asarray(x))
    a = tb.to_numpy(x, copy=False)
    assert same_memory(a, x)


def check_the_view_outlives_the_array():
    x = jnp.arange(1000.0) * 2
    a = tb.to_numpy(x)
    del x
    gc.collect()
    jnp.ones(1000).block_until_ready()  # memory freed too early would be reused here
    np.testing.assert_array_equal(a, np.arange(1000.0) * 2)


def check_collect_and_to_numpy_async():
    batches = [jnp.full((2, 3), float(i)) for i in range(4)]
    result = tb.collect(batches)
    np.testing.assert_array_equal(result, np.concatenate([np.asarray(b) for b in batches]))
    assert result.flags.writeable  # collect's result is its own memory
    np.testing.assert_array_equal(tb.to_numpy_async(batches[1]).wait(), np.asarray(batches[1]))


def check_a_dtype_without_dlpack_is_a_clear_error():
    x = jnp.arange(4, dtype=jnp.int4)
    try:
        tb.to_numpy(x)
    except (TypeError, BufferError, RuntimeError) as error:
        assert "DLPack" in str(error) or "int4" in str(error), error
    else:
        raise AssertionError("an int4 JAX array was converted")


CHECKS = {name: check for name, check in globals().items() if name.startswith("check_")}

if __name__ == "__main__":
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
        print("passed:", name)
