"""Sphinx configuration of the manual.

Built by the README's command (html, then the doctest builder, both with
warnings as errors); CI's docs stage runs the same command. The API reference
is generated from the docstrings (numpydoc), so tensorbridge must be installed
in the building environment, with torch and scikit-learn (requirements/docs.txt).
"""

import doctest
import os

# The array API example of the guide runs scikit-learn on torch tensors, which
# needs SCIPY_ARRAY_API=1 before SciPy is first imported (autodoc imports it
# through tensorbridge.sklearn). As a user sets it before their imports.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import tensorbridge

project = "tensorbridge"
author = "the tensorbridge authors"
copyright = "the tensorbridge authors, Apache-2.0"
version = release = tensorbridge.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False
default_role = "code"

# numpydoc: members are listed by autodoc's :members:, not by a second table.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types

# MyST: the included Markdown files' headings become the pages' sections.
myst_heading_anchors = 3

# Doctests: every ``>>>`` block of the pages and docstrings, and the
# ``testcode`` blocks, run by ``sphinx-build -b doctest``. Blocks that need a
# CUDA device carry ``:skipif: not CUDA``; docstring lines ``# doctest: +SKIP``.
doctest_global_setup = """
import numpy as np
import tensorbridge as tb
CUDA = tb.cuda_available()
"""
doctest_default_flags = (doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
                         | doctest.IGNORE_EXCEPTION_DETAIL | doctest.DONT_ACCEPT_TRUE_FOR_1)

html_theme = "alabaster"
html_title = f"tensorbridge {release}"
html_theme_options = {"description": "PyTorch and DLPack to NumPy and scikit-learn",
                      "fixed_sidebar": True}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path = []
html_show_sourcelink = False
