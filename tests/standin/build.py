"""Builds the stand-in CUDA driver (fake_cuda.cpp) and loads its control panel."""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import subprocess
import tempfile

SOURCE = pathlib.Path(__file__).with_name("fake_cuda.cpp")


def build() -> pathlib.Path:
    """Compile the stand-in once per source version and sanitizer; returns the
    library path. Under TENSORBRIDGE_SANITIZE (the checked builds of .ci/run)
    the stand-in is instrumented too, so that the sanitizer sees its threads'
    synchronisation."""
    sanitize = os.environ.get("TENSORBRIDGE_SANITIZE", "")
    flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"] if sanitize else []
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    target = pathlib.Path(tempfile.gettempdir()) / f"tensorbridge-standin-{digest}" / "libcuda.so.1"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        subprocess.run(["g++", "-std=c++17", "-O1", "-g", "-shared", "-fPIC", "-pthread", *flags,
                        str(SOURCE), "-o", str(partial)], check=True)
        partial.replace(target)
    return target


class StandIn:
    """The stand-in's control panel (the standin_* functions)."""

    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        size_t, ptr = ctypes.c_size_t, ctypes.c_void_p
        signatures = {
            "standin_calls": (ctypes.c_long, [ctypes.c_char_p]),
            "standin_version_asked": (ctypes.c_int, [ctypes.c_char_p]),
            "standin_reset": (None, []),
            "standin_fail": (None, [ctypes.c_char_p, ctypes.c_int, ctypes.c_long, ctypes.c_long]),
            "standin_set_delay_us": (None, [ctypes.c_long, ctypes.c_long]),
            "standin_malloc": (size_t, [ctypes.c_int, size_t]),
            "standin_free": (None, [size_t]),
            "standin_write": (ctypes.c_int, [size_t, ptr, size_t]),
            "standin_read": (ctypes.c_int, [ptr, size_t, size_t]),
            "standin_stream_create": (ptr, []),
            "standin_enqueue_fill": (ctypes.c_int, [ptr, size_t, ctypes.c_int, size_t,
                                                    ctypes.c_long]),
            "standin_enqueue_gate": (None, [ptr, ctypes.POINTER(ctypes.c_int)]),
            "standin_synchronize": (None, [ptr]),
            "standin_live_pinned_bytes": (ctypes.c_long, []),
            "standin_registered_bytes": (ctypes.c_long, []),
            "standin_register_calls_after_fork": (ctypes.c_long, []),
            "standin_set_sticky": (None, [ctypes.c_int]),
            "standin_largest_batch": (size_t, []),
            "standin_gate_allocations": (None, [ctypes.POINTER(ctypes.c_int)]),
            "standin_allocating": (ctypes.c_int, []),
            "standin_counted": (ctypes.c_char_p, []),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        self.lib = lib

    def calls(self, name: str) -> int:
        return self.lib.standin_calls(name.encode())

    def version_asked(self, name: str) -> int:
        return self.lib.standin_version_asked(name.encode())

    def fail(self, name: str, result: int = 999, skip: int = 0, times: int = 1) -> None:
        self.lib.standin_fail(name.encode(), result, skip, times)

    def counted(self) -> dict:
        """Every name counted since the last reset, with its count."""
        text = self.lib.standin_counted().decode()
        return {name: int(n) for name, n in (item.split("=") for item in text.split(";") if item)}

    def misuses(self) -> dict:
        """The calls the real driver would have refused (see fake_cuda.cpp)."""
        return {name: n for name, n in self.counted().items() if name.startswith("misuse: ")}

    def __getattr__(self, name):
        return getattr(self.lib, f"standin_{name}")
