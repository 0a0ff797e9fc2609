"""The package as pip installs it: its metadata, license, extras and typing marker."""

import importlib.metadata
import pathlib
import re

import pytest

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
    assert "tensorbridge/py.typed" in installed_files()
    assert (pathlib.Path(tensorbridge.__file__).parent / "py.typed").exists()


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


def test_the_install_guide_says_how_to_get_the_cpu_build_of_torch():
    guide = (ROOT / "docs" / "guide" / "install.rst").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in guide
    assert "CUDA build" in guide and "GB" in guide


def test_a_green_run_lists_only_failures_and_errors(pytestconfig):
    addopts = pytestconfig.getini("addopts")
    assert "-rfE" in addopts and not any(o.startswith("-r") and o != "-rfE" for o in addopts)
    assert "--strict-markers" in addopts and pytestconfig.getini("xfail_strict")
