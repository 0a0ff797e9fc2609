"""The package as pip installs it: its metadata, license, extras and typing marker;
and the suite's own configuration, by how pytest behaves under it."""

import importlib.metadata
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import TIERS
from helpers import installed_editable

import tensorbridge

ROOT = pathlib.Path(__file__).resolve().parents[1]
META = importlib.metadata.metadata("tensorbridge")


def installed_files():
    return {str(f) for f in importlib.metadata.files("tensorbridge")}


def test_the_license_is_apache_2_and_ships_with_the_wheel():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert META["License-Expression"] == "Apache-2.0"
    assert META.get_all("License-File") == ["LICENSE"]
    (shipped,) = [f for f in importlib.metadata.files("tensorbridge")
                  if f.name == "LICENSE" and ".dist-info" in str(f)]
    assert shipped.read_text() == text


def test_classifiers_say_what_is_supported():
    classifiers = set(META.get_all("Classifier"))
    assert META["Requires-Python"] == ">=3.10"
    versions = {c.rsplit(" ", 1)[1] for c in classifiers
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert any(c.startswith("Topic :: ") for c in classifiers)
    # Typing :: Typed promises the PEP 561 marker in the package
    assert "Typing :: Typed" in classifiers
    assert (pathlib.Path(tensorbridge.__file__).parent / "py.typed").exists()
    if not installed_editable():  # an editable install lists its redirect to src/, not src/
        assert "tensorbridge/py.typed" in installed_files()


def test_the_long_description_is_the_readme_and_renders():
    assert META["Description-Content-Type"] == "text/markdown"
    # The body of METADATA; the importlib_metadata backport (which dask loads
    # in place of the standard module) gives it as the Description field.
    description = META.get_payload() or META.get("Description")
    # (the installed copy: compared by its opening, so that editing the README
    # does not fail this test before the next install)
    opening = (ROOT / "README.md").read_text().split("\n\n", 2)[:2]
    assert description.split("\n\n", 2)[:2] == opening and len(description) > 5000
    markdown = pytest.importorskip("readme_renderer.markdown")
    html = markdown.render(description)
    assert html is not None and "<h1" in html and "<table>" in html


def test_extras_never_pin_or_cap_torch():
    # an installed torch >= 2.4 (CPU or CUDA build) satisfies every extra, so
    # pip keeps it: no upgrade, no switch to PyPI's CUDA build
    torch = [r for r in importlib.metadata.requires("tensorbridge") if r.startswith("torch")]
    extras = {r.split(";")[1].strip() for r in torch}
    assert {'extra == "torch"', 'extra == "bench"'} <= extras and len(torch) == len(extras)
    assert {r.split(";")[0].strip() for r in torch} == {"torch>=2.4"}


# -- the suite's own configuration, as it behaves -------------------------------------

def run_pytest_here(tmp_path, *args):
    """pytest in a fresh interpreter, over tests written to tmp_path, under this
    project's configuration (pyproject.toml)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
                           "--rootdir", str(tmp_path), "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_a_run_summarises_failures_and_errors_only_and_is_strict(tmp_path):
    (tmp_path / "test_outcomes.py").write_text(textwrap.dedent("""
        import warnings
        import pytest

        def test_passes():
            pass

        def test_fails():
            assert False

        def test_warns():
            warnings.warn("a warning is an error")

        @pytest.mark.skip(reason="skipped here")
        def test_skipped():
            pass

        @pytest.mark.xfail(reason="fails here")
        def test_xfails():
            assert False

        @pytest.mark.xfail(reason="meant to fail")
        def test_xpasses():
            pass
    """))
    (tmp_path / "test_undeclared_marker.py").write_text(
        "import pytest\n\n@pytest.mark.undeclared\ndef test_marked():\n    pass\n")
    # (the marker's error would otherwise stop the run before any test)
    result = run_pytest_here(tmp_path, "-q", "--continue-on-collection-errors", ".")
    summary = result.stdout.split("short test summary info")[1]
    listed = sorted(re.findall(r"^([A-Z]+) (?:\S+::)?(\S+)", summary, re.M))
    assert listed == [("ERROR", "test_undeclared_marker.py"), ("FAILED", "test_fails"),
                      ("FAILED", "test_warns"), ("FAILED", "test_xpasses")], result.stdout
    assert "3 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in" in summary, result.stdout


def test_every_test_file_keeps_tests_in_the_fast_tier(pytestconfig):
    # -m "not slow" is the inner loop: it must still touch every concept.
    tiers = pytestconfig.stash[TIERS]
    files = {name for name, _ in tiers}
    fast = {name for name, slow in tiers if not slow}
    assert files - fast == set(), "these test files have only slow tests"
