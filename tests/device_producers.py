"""DLPack producers in (stand-in) CUDA memory, for the engine tests."""

from __future__ import annotations

import numpy as np

from dlpack_producer import Producer

LEGACY_STREAM = 1
_EXPORTED = set()  # producers with capsules outstanding: their callbacks must stay alive


class DeviceArray(Producer):
    """`array`'s values in device memory of the stand-in driver.

    Its "current stream" is the legacy default stream, where `fill_later`
    queues fake kernels. Asked for a capsule on another stream, it first
    waits for its own work, as the DLPack stream contract requires. Its
    memory is unmapped as soon as the object is unreachable and every capsule
    it exported has been deleted, so a consumer that deleted a capsule before
    its copy completed would read unmapped memory.
    """

    def __init__(self, standin, array, device=0, **overrides):
        array = np.ascontiguousarray(array)
        self.standin = standin
        self.address = standin.malloc(device, max(array.nbytes, 1))
        standin.write(self.address, array.ctypes.data, array.nbytes)
        super().__init__(np.empty(array.shape, array.dtype), data=self.address,
                         device=(2, device), **overrides)
        self.exported = 0

    def __dlpack__(self, **kwargs):
        stream = kwargs.get("stream")
        if stream is not None and stream != LEGACY_STREAM:
            self.standin.synchronize(None)
        capsule = super().__dlpack__(**kwargs)
        self.exported += 1
        _EXPORTED.add(self)
        return capsule

    def _on_delete(self, managed):
        super()._on_delete(managed)
        self.exported -= 1
        if self.exported == 0:
            _EXPORTED.discard(self)

    def __del__(self):
        self.standin.free(self.address)

    def fill_later(self, value: int, delay_us: int) -> None:
        """Queue a fake kernel setting every byte to `value` after `delay_us`."""
        self.standin.enqueue_fill(None, self.address, value, self.array.nbytes, delay_us)

    def read(self) -> np.ndarray:
        out = np.empty_like(self.array)
        self.standin.synchronize(None)
        self.standin.read(out.ctypes.data, self.address, out.nbytes)
        return out
