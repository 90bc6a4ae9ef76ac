"""Every public numerical function of geometry/ and safety/ documents its arguments, what it returns
(shapes, units) and its cost, curvlinops style. Imports only; well under a second."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from typing import Protocol

import pytest

import raystudy.geometry
import raystudy.safety


def public_callables():
    """(qualified name, function, the docstring holding its Args) for every public function and
    public method defined in the two packages; a class documents its constructor's Args."""
    for pkg in (raystudy.geometry, raystudy.safety):
        for info in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for name, obj in vars(mod).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                    continue
                if inspect.isfunction(obj):
                    yield f"{mod.__name__}.{name}", obj, obj.__doc__
                elif inspect.isclass(obj) and not dataclasses.is_dataclass(obj) and Protocol not in obj.__mro__:
                    yield f"{mod.__name__}.{name}", obj.__init__, obj.__doc__
                    for attr, member in vars(obj).items():
                        if inspect.isfunction(member) and not attr.startswith("_"):
                            yield f"{mod.__name__}.{name}.{attr}", member, member.__doc__


CALLABLES = sorted(public_callables(), key=lambda c: c[0])


def test_found_the_numerical_api():
    names = {c[0].rsplit(".", 1)[-1] for c in CALLABLES}
    assert {"lanczos_eigenvalues", "trace_estimate", "slq_density", "fisher_rao_norm",
            "expected_calibration_error", "apply", "matvec"} <= names


@pytest.mark.parametrize("name,fn,doc", CALLABLES, ids=[c[0] for c in CALLABLES])
def test_args_returns_and_cost_documented(name, fn, doc):
    """A constructor's Args live in its class docstring, which has no Returns."""
    takes_args = any(p not in ("self", "cls") for p in inspect.signature(fn).parameters)
    doc, returns = doc or "", fn.__name__ != "__init__"
    missing = [s for s, needed in (("Args:", takes_args), ("Cost", True)) if needed and s not in doc]
    if returns and "Returns:" not in doc and "Yields:" not in doc:
        missing.append("Returns:")
    assert not missing, f"{name}: docstring lacks {missing}"
