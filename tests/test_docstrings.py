"""Every public name has a numpydoc docstring with an Examples section, and
every example runs (GPU-only lines are marked ``# doctest: +SKIP``)."""

import doctest
import inspect

import pytest
from helpers import missing_modules

import tensorbridge as tb

sklearn_layer = pytest.importorskip("tensorbridge.sklearn")


def public_objects():
    for module, names in ((tb, tb.__all__), (sklearn_layer, sklearn_layer.__all__)):
        for name in names:
            if name.startswith("__"):
                continue
            yield f"{module.__name__}.{name}", getattr(module, name)


def docstrings():
    """(name, docstring) of every public function, class and public method."""
    for name, obj in public_objects():
        yield name, inspect.getdoc(obj)
        if inspect.isclass(obj):
            for attribute, member in vars(obj).items():
                if not attribute.startswith("_") and callable(member) and member.__doc__:
                    yield f"{name}.{attribute}", inspect.getdoc(member)


@pytest.mark.parametrize("name, obj", list(public_objects()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_name_has_an_examples_section(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------\n" in doc, f"{name} has no numpydoc Examples section"
    assert ">>> " in doc.split("Examples\n--------\n", 1)[1], f"{name}'s Examples hold no example"


@pytest.mark.parametrize("name, doc", list(docstrings()), ids=lambda v: v if "\n" not in v else "")
def test_examples_run(name, doc):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(doc, {}, name, None, 0)
    missing = missing_modules("".join(example.source for example in test.examples))
    if missing:
        pytest.skip(f"{name}'s examples need {', '.join(missing)}, not installed here")
    runner = doctest.DocTestRunner(
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
