"""Every docstring example (``>>>``) in the purenet package runs as written and prints what it shows.

The examples are collected with ``doctest.DocTestFinder`` from every module of
the package, one test per docstring.  A module of ``purenet.interop`` that
cannot be imported because an optional dependency is missing (Flax or
Equinox: the ``interop`` extra) is skipped, naming the extra; any other
import failure fails.
"""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import purenet

OPTIONAL = ("flax", "equinox")  # what `pip install ".[interop]"` adds
OPTIONAL_PACKAGE = "purenet.interop"
FEWEST_EXAMPLES = 6


def _module_names(package: str, path) -> list[str]:
    """Every module below ``package``; a subpackage's path is found without running its ``__init__``."""
    names = []
    for info in pkgutil.iter_modules(path, package + "."):
        names.append(info.name)
        if info.ispkg:
            names += _module_names(info.name, importlib.util.find_spec(info.name).submodule_search_locations)
    return names


def _missing_optional() -> list[str]:
    missing = []
    for library in OPTIONAL:
        try:
            found = importlib.util.find_spec(library) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(library)
    return missing


def _is_optional(name: str) -> bool:
    return name == OPTIONAL_PACKAGE or name.startswith(OPTIONAL_PACKAGE + ".")


def _cases() -> list:
    finder = doctest.DocTestFinder(exclude_empty=True)
    cases = []
    for name in sorted(_module_names("purenet", purenet.__path__)):
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            missing = _missing_optional()
            if _is_optional(name) and missing:
                reason = (
                    f"{name} needs the optional extra 'interop' (pip install \".[interop]\"): "
                    f"{', '.join(missing)} not installed"
                )
                cases.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason=reason)))
            else:
                cases.append(pytest.param(error, id=name))  # the test raises it
            continue
        cases += [pytest.param(test, id=test.name) for test in finder.find(module, name) if test.examples]
    return cases


CASES = _cases()


@pytest.mark.parametrize("test", CASES)
def test_docstring_example(test):
    if isinstance(test, BaseException):
        raise test
    report = []
    result = doctest.DocTestRunner(verbose=False).run(test, out=report.append)
    assert result.failed == 0, "".join(report)


def test_there_are_examples_to_run():
    examples = [case.values[0] for case in CASES if isinstance(case.values[0], doctest.DocTest)]
    assert len(examples) >= FEWEST_EXAMPLES, [test.name for test in examples]
