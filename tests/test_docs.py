"""The manual (docs/) and the README as its front page.

The README stays short and points into the manual; the API reference documents
every public name, as the pages are written and, where Sphinx is installed
(CI's docs stage: requirements/docs.txt), as Sphinx builds them. The pages'
examples run in the docs build itself (``sphinx-build -b doctest``)."""

import inspect
import os
import pathlib
import re
import subprocess
import sys
import zlib

import pytest

import tensorbridge as tb

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
README_LIMIT = 250

sklearn_layer = pytest.importorskip("tensorbridge.sklearn")


def public_objects():
    """{dotted name: object} of every public name but ``__version__``."""
    return {f"{module.__name__}.{name}": getattr(module, name)
            for module in (tb, sklearn_layer) for name in module.__all__
            if not name.startswith("__")}


def toctree_entries(page):
    """The documents a page's toctrees list, as paths relative to docs/."""
    text = page.read_text()
    entries = []
    for block in re.findall(r"^\.\. toctree::\n((?:[ \t]+.*\n|\n)+)", text, re.M):
        entries += [line.strip() for line in block.splitlines()
                    if line.strip() and not line.strip().startswith(":")]
    folder = page.parent.relative_to(DOCS)
    return [(folder / entry).as_posix() for entry in entries]


def reachable_pages():
    """Every page reachable from docs/index.rst through toctrees, by path."""
    seen, todo = set(), ["index"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        page = next((DOCS / f"{name}{suffix}" for suffix in (".rst", ".md")
                     if (DOCS / f"{name}{suffix}").exists()), None)
        assert page is not None, f"docs: a toctree lists {name}, which does not exist"
        if page.suffix == ".rst":
            todo += toctree_entries(page)
    return seen


def test_the_readme_is_a_front_page():
    lines = README.count("\n")
    assert lines <= README_LIMIT, (
        f"README.md has {lines} lines, over {README_LIMIT}: move the detail into the manual "
        "(docs/) and leave at most a line in the README")


def test_the_readme_links_the_manual_and_every_link_lands():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if "://" not in link]
    for link in local:
        path, _, anchor = link.partition("#")
        if path:
            assert (ROOT / path).exists(), f"README links {link}, which does not exist"
        if anchor and not path:
            headings = re.findall(r"^#+ (.+)$", README, re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                     for h in headings}
            assert anchor in slugs, f"README links #{anchor}, a heading it lacks"
        elif anchor:
            titles = re.findall(r"^(.+)\n[-=~^]{3,}$", (ROOT / path).read_text(), re.M)
            slugs = {re.sub(r"[^\w]+", "-", t.strip("` ").lower()).strip("-") for t in titles}
            assert anchor in slugs, f"README links {link}: {path} has no such section"
    manual = {f"docs/{page}.rst" for page in ("quickstart", "guide/index", "api/index",
                                               "architecture")}
    assert manual <= {link.partition("#")[0] for link in local}
    pages = reachable_pages()
    for page in ("quickstart", "guide/index", "api/index", "architecture", "changelog"):
        assert page in pages, f"the manual's contents do not reach {page}"


def test_ci_builds_the_manual_with_the_readme_command():
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    build = next(c for c in commands if "sphinx-build" in c)
    assert "requirements/docs.txt" in build and "-W" in build and "-b doctest" in build
    assert build in (ROOT / ".ci" / "run").read_text()


def api_directives():
    """(directive, target) of every autodoc directive on the reference pages
    reachable from the manual's contents."""
    found = []
    for name in sorted(reachable_pages()):
        if name.startswith("api/"):
            text = (DOCS / f"{name}.rst").read_text()
            found += re.findall(r"^\.\. (auto\w+):: (\S+)", text, re.M)
    return found


def test_the_api_reference_documents_every_public_name_once():
    directives = api_directives()
    targets = [target for _, target in directives]
    objects = public_objects()
    for name in objects:
        assert targets.count(name) == 1, f"{name} is not in the API reference (docs/api/) once"
    for directive, target in directives:
        assert target in objects, f"docs/api/ documents {target}, which is not a public name"
        kind = "autoclass" if inspect.isclass(objects[target]) else "autofunction"
        assert directive == kind, f"{target} is documented with {directive}, not {kind}"


def read_inventory(path):
    """{name: (role, page)} of a Sphinx objects.inv (format version 2)."""
    data = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    entries = {}
    for line in zlib.decompress(data[header_end:]).decode().splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+-?\d+\s+(\S*)\s+.*", line)
        if match:
            entries[match[1]] = (match[2], match[3])
    return entries


def test_the_built_reference_has_every_public_name_and_method(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    # Built as the README's command builds it, warnings as errors, with the
    # driver a user has (not the suite's stand-in).
    env = {k: v for k, v in os.environ.items()
           if k not in ("TENSORBRIDGE_LIBCUDA", "STANDIN_DEVICES")}
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                            "html", str(DOCS), str(tmp_path / "html")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert build.returncode == 0, build.stderr
    inventory = read_inventory(tmp_path / "html" / "objects.inv")
    for name, obj in public_objects().items():
        role = "py:class" if inspect.isclass(obj) else "py:function"
        assert name in inventory, f"{name} is not in the built API reference"
        assert inventory[name][0] == role and inventory[name][1].startswith("api/"), name
        if inspect.isclass(obj):
            for method in ("fit", "transform", "wait"):
                if callable(vars(obj).get(method)):
                    assert f"{name}.{method}" in inventory, f"{name}.{method} is not documented"
