"""The pytest plugin of scripts/gpu_check.sh's tests stage, with nothing but
pytest and the standard library (the GPU machine has no network: none of
pytest's own plugins can be counted on, and its auto-loaded ones are off).

    PYTHONPATH=scripts PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -p gpu_check_pytest \\
        [--per-test-timeout=90 [-o faulthandler_timeout=45]] [--fail-if-skipped=gpu] \\
        [--keep-marked=gpu --keep-file=test_readme.py] [--warnings-fail-only-from=tensorbridge] \\
        [--progress-file=PATH] ...

- A time limit per test. Why faulthandler: its watchdog is a C thread, so it
  fires even when a test hangs in native code that holds the GIL (a Python
  timer thread would wait for the GIL forever). On expiry it prints every
  thread's traceback and ends the process at once: the run names the place it
  hung instead of sitting until the stage's own limit. faulthandler has one
  timer per process, which pytest's `faulthandler_timeout` also sets for each
  test (dump only, no exit); this plugin arms its own after pytest's (at
  logstart, inside pytest's hook wrapper) and keeps the earlier dump-only
  warning with a Python thread (best effort: it needs the GIL).
- GPU tests that must not all be skipped (`--fail-if-skipped`).
- The selection: only tests carrying one of the `--keep-marked` markers or in
  one of the `--keep-file` files run; the rest are deselected.
- Warnings: `--warnings-fail-only-from` keeps "warnings are errors" for
  warnings attributed to the named packages (ours) and only reports the rest,
  so that a deprecation in a torch, NumPy or plugin release we do not control
  cannot end a run that has no second chance.
- `--progress-file`: each test's start and end are appended to PATH as they
  happen, and tests already started there are deselected. After a crash
  (a segfault, or the time limit's exit) the file's last unfinished start
  names the test that took the process down, and a rerun with the same file
  carries on after it (gpu_check_steps.py does both).

Output goes to the stderr the run started with, duplicated when this module
is imported (before pytest captures fd 2): a process that ends inside a test
would otherwise take its captured output with it.
"""

import faulthandler
import os
import re
import signal
import threading

import pytest

_STDERR = os.fdopen(os.dup(2), "w", buffering=1)


def pytest_addoption(parser):
    group = parser.getgroup("gpu_check.sh's tests stage (scripts/gpu_check_pytest.py)")
    group.addoption("--per-test-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="end the whole run, with every thread's traceback, when one test "
                         "(setup and teardown included) takes longer than this; 0: no limit")
    group.addoption("--fail-if-skipped", action="append", default=[], metavar="MARKER",
                    help="fail the run when tests carry MARKER and every one of them was "
                         "skipped (a GPU run whose GPU tests all skip themselves has tested "
                         "nothing; a few skips, such as CuPy missing, are only reported)")
    group.addoption("--keep-marked", action="append", default=[], metavar="MARKER",
                    help="run only tests carrying MARKER (or in a --keep-file file)")
    group.addoption("--keep-file", action="append", default=[], metavar="NAME",
                    help="run every test of the test file NAME (its base name)")
    group.addoption("--warnings-fail-only-from", action="append", default=[],
                    metavar="PACKAGE",
                    help="warnings attributed to PACKAGE (and its modules) stay errors; "
                         "every other warning is reported, not raised")
    group.addoption("--progress-file", default=None, metavar="PATH",
                    help="append each test's start and end to PATH; deselect the tests "
                         "already started there (a rerun after a crash carries on)")


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


class _Selection:
    def __init__(self, markers, files):
        self.markers, self.files = markers, set(files)

    def keeps(self, item):
        return (os.path.basename(str(item.path)) in self.files
                or any(item.get_closest_marker(marker) for marker in self.markers))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        kept = [item for item in items if self.keeps(item)]
        if len(kept) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if not self.keeps(i)])
            items[:] = kept


class _Progress:
    """Lines "start\\tNODEID", "result\\tOUTCOME\\tNODEID" (passed, failed or skipped;
    a test's first failing phase or its call), "end\\tNODEID" and, last,
    "finished\\tEXITSTATUS"."""

    def __init__(self, path):
        self.path = path
        self.started = set()
        if os.path.exists(path):
            with open(path) as f:
                self.started = {line.split("\t", 1)[1].rstrip("\n") for line in f
                                if line.startswith("start\t")}
        self.file = open(path, "a", buffering=1)

    def _write(self, kind, value):
        self.file.write(f"{kind}\t{value}\n")
        self.file.flush()  # in the kernel's hands before the test runs: a crash keeps it

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        done = [item for item in items if item.nodeid in self.started]
        if done:
            config.hook.pytest_deselected(items=done)
            items[:] = [item for item in items if item.nodeid not in self.started]

    def pytest_runtest_logstart(self, nodeid, location):
        self._write("start", nodeid)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self._write("result", f"{report.outcome}\t{report.nodeid}")

    def pytest_runtest_logfinish(self, nodeid, location):
        self._write("end", nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        self._write("finished", int(session.exitstatus))
        self.file.close()


def pytest_configure(config):
    config.pluginmanager.register(_Limits(config), "gpu-check-limits")
    markers, files = config.getoption("keep_marked"), config.getoption("keep_file")
    if markers or files:
        config.pluginmanager.register(_Selection(markers, files), "gpu-check-selection")
    if config.getoption("progress_file"):
        config.pluginmanager.register(_Progress(config.getoption("progress_file")),
                                      "gpu-check-progress")
    packages = config.getoption("warnings_fail_only_from")
    if packages:
        # Appended last, so applied last: ahead of the project's own filters.
        config.addinivalue_line("filterwarnings", "default")
        pattern = "|".join(re.escape(package) for package in packages)
        config.addinivalue_line("filterwarnings", f"error:::({pattern})(\\.|$)")
    # A stage's time limit (`timeout` sends SIGTERM) shows where the run was.
    if hasattr(signal, "SIGTERM"):
        faulthandler.register(signal.SIGTERM, file=_STDERR, all_threads=True, chain=True)


def pytest_unconfigure(config):
    if hasattr(signal, "SIGTERM"):
        faulthandler.unregister(signal.SIGTERM)
    faulthandler.cancel_dump_traceback_later()
    _STDERR.close()
