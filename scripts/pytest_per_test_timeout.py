"""A pytest plugin for scripts/gpu_check.sh: a time limit per test, and GPU
tests that must not all be skipped, with nothing but pytest and the standard
library (the GPU machine has no network, so pytest-timeout may be missing).

    PYTHONPATH=scripts python -m pytest -p pytest_per_test_timeout \\
        --per-test-timeout=90 [-o faulthandler_timeout=45] [--fail-if-skipped=gpu] ...

Why faulthandler: its watchdog is a C thread, so it fires even when a test
hangs in native code that holds the GIL (a Python timer thread would wait for
the GIL forever). On expiry it prints every thread's traceback and ends the
process at once, and the stage fails with the place it hung instead of sitting
until the stage's own limit.

faulthandler has one timer per process, which pytest's `faulthandler_timeout`
also sets for each test (dump only, no exit). This plugin arms its own timer
after pytest's (at logstart, inside pytest's hook wrapper) and replaces it;
the earlier dump-only warning at `faulthandler_timeout` is kept by a Python
thread (best effort: it needs the GIL).

Output goes to the stderr the run started with, duplicated when this module
is imported (before pytest captures fd 2): a process that ends inside a test
would otherwise take its captured output with it.
"""

import faulthandler
import os
import signal
import threading

import pytest

_STDERR = os.fdopen(os.dup(2), "w", buffering=1)


def pytest_addoption(parser):
    group = parser.getgroup("per-test timeout (scripts/pytest_per_test_timeout.py)")
    group.addoption("--per-test-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="end the whole run, with every thread's traceback, when one test "
                         "(setup and teardown included) takes longer than this; 0: no limit")
    group.addoption("--fail-if-skipped", action="append", default=[], metavar="MARKER",
                    help="fail the run when tests carry MARKER and every one of them was "
                         "skipped (a GPU run whose GPU tests all skip themselves has tested "
                         "nothing; a few skips, such as CuPy missing, are only reported)")


class _Limits:
    def __init__(self, config):
        self.seconds = config.getoption("per_test_timeout")
        try:
            self.warn_after = float(config.getini("faulthandler_timeout") or 0)
        except ValueError:  # -p no:faulthandler: no such ini key
            self.warn_after = 0.0
        self.markers = config.getoption("fail_if_skipped")
        self.skipped = []
        self.ran = 0
        self.warning = None

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logstart(self, nodeid, location):
        if self.seconds > 0:
            faulthandler.dump_traceback_later(self.seconds, exit=True, file=_STDERR)
            if 0 < self.warn_after < self.seconds:
                self.warning = threading.Timer(self.warn_after, self._warn, (nodeid,))
                self.warning.daemon = True
                self.warning.start()

    def _warn(self, nodeid):
        print(f"\n{nodeid}: still running after {self.warn_after:g} s (the limit is "
              f"{self.seconds:g} s); every thread's traceback:", file=_STDERR, flush=True)
        faulthandler.dump_traceback(file=_STDERR, all_threads=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logfinish(self, nodeid, location):
        if self.seconds > 0:
            faulthandler.cancel_dump_traceback_later()
            if self.warning is not None:
                self.warning.cancel()
                self.warning = None

    def pytest_runtest_logreport(self, report):
        if not any(marker in report.keywords for marker in self.markers):
            return
        if report.skipped:
            self.skipped.append(report.nodeid)
        elif report.when == "call":
            self.ran += 1

    def _tested_nothing(self):
        return bool(self.skipped) and self.ran == 0

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self._tested_nothing() and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self._tested_nothing():
            terminalreporter.write_line(
                f"FAILED: all {len(self.skipped)} test(s) marked {'/'.join(self.markers)} were "
                f"skipped, e.g. {self.skipped[0]}", red=True)
        if self.seconds > 0:
            terminalreporter.write_line(f"per-test time limit: {self.seconds:g} s")


def pytest_configure(config):
    config.pluginmanager.register(_Limits(config), "per-test-timeout-limits")
    # A stage's time limit (`timeout` sends SIGTERM) shows where the run was.
    if hasattr(signal, "SIGTERM"):
        faulthandler.register(signal.SIGTERM, file=_STDERR, all_threads=True, chain=True)


def pytest_unconfigure(config):
    if hasattr(signal, "SIGTERM"):
        faulthandler.unregister(signal.SIGTERM)
    faulthandler.cancel_dump_traceback_later()
    _STDERR.close()
