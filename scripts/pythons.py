"""The CPython versions tensorbridge ships wheels for, and where they are here.

Usage:
  python3 scripts/pythons.py            the versions, one a line (3.10 ...)
  python3 scripts/pythons.py --find     "VERSION PATH" for each found on this machine

The versions are read from one place, [tool.cibuildwheel] build in
pyproject.toml (cp310-manylinux_x86_64 ...), so the release pipeline,
scripts/build_wheels.sh and CI's per-Python test runs build and test the same
set. --find looks for each as python3.X on PATH (a pyenv shim counts only if
it runs), then under $PYENV_ROOT/versions (default ~/.pyenv), newest patch
release first; a version found nowhere is named on stderr and left out.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cibuildwheel_build(text: str) -> str | list[str]:
    """[tool.cibuildwheel] build of a pyproject.toml's text."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the table's `build` entry, a string or list of strings
        table = re.search(r"^\[tool\.cibuildwheel\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        entry = table and re.search(r"^build\s*=\s*(\[.*?\]|\"[^\"]*\")", table.group(1),
                                    re.M | re.S)
        if entry is None:
            raise KeyError("build") from None
        found = re.findall(r'"([^"]*)"', entry.group(1))
        return found if entry.group(1).startswith("[") else found[0]
    return tomllib.loads(text)["tool"]["cibuildwheel"]["build"]


def versions(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> list[str]:
    build = cibuildwheel_build(pyproject.read_text())
    found = []
    for selector in [build] if isinstance(build, str) else build:
        match = re.fullmatch(r"cp3(\d+)-manylinux_x86_64", selector)
        if match is None:
            sys.exit(f"pyproject.toml: [tool.cibuildwheel] build entry {selector!r} is not "
                     "of the form cp3XX-manylinux_x86_64")
        found.append(f"3.{match.group(1)}")
    return found


def runs_as(python: str, version: str) -> str | None:
    """The interpreter's own path if `python` runs and is CPython `version`
    with the GIL (the cp3XX wheels; a free-threaded build would need cp3XXt)."""
    try:
        result = subprocess.run(
            [python, "-c", "import platform, sys, sysconfig; print(platform.python_implementation()"
             ", '%d.%d' % sys.version_info[:2], sysconfig.get_config_var('Py_GIL_DISABLED') or 0,"
             " sys.executable)"],
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = result.stdout.split(maxsplit=3)
    if result.returncode != 0 or words[:3] != ["CPython", version, "0"]:
        return None
    return words[3].strip()


def find(version: str) -> str | None:
    candidates = []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    releases = sorted(pyenv.glob(f"versions/{version}.*/bin/python{version}"),
                      key=lambda p: [int(n) if n.isdigit() else -1
                                     for n in re.split(r"[.]", p.parents[1].name)], reverse=True)
    candidates.extend(str(p) for p in releases)
    for candidate in candidates:
        path = runs_as(candidate, version)
        if path:
            return path
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--find", action="store_true",
                        help="print 'VERSION PATH' for each version found on this machine")
    args = parser.parse_args(argv)
    for version in versions():
        if not args.find:
            print(version)
            continue
        path = find(version)
        if path is None:
            print(f"pythons.py: CPython {version} not found (python{version} on PATH, "
                  "or under $PYENV_ROOT/versions)", file=sys.stderr)
        else:
            print(version, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
