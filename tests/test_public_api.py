"""The public namespace: what ``batched`` exports, how it presents it, what it imports."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest
from _helpers import ROOT

import batched

# Public classes meant to be subclassed or implemented by users; every other public class
# is marked `typing.final` (composition over subclassing).
OPEN_CLASSES = {
    "BatchedError",  # the base of the library's errors: catch it, refine it
    "Entry",  # the batcher hands pools private subclasses of it
    "Pool",  # protocols: users implement their own
    "Strategy",
    "BatchedMethod",  # typing-only protocols of the decorator
    "SyncBatchedMethod",
    "BatcherOptions",  # a TypedDict of settings
}


def _public_objects() -> list[tuple[str, object]]:
    return [(name, getattr(batched, name)) for name in batched.__all__]


def test_all_names_exist_once() -> None:
    assert len(batched.__all__) == len(set(batched.__all__))
    missing = [name for name in batched.__all__ if not hasattr(batched, name)]
    assert not missing


def test_every_public_attribute_is_in_all() -> None:
    # Like anyio's tests/test_all_attributes.py: a public name missing from __all__ fails.
    stray = [
        name
        for name, value in vars(batched).items()
        if not name.startswith("_")
        and name not in batched.__all__
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # `from __future__ import annotations`
    ]
    assert not stray, f"public names missing from batched.__all__: {stray}"


def test_public_names_show_the_public_module() -> None:
    wrong = {
        name: obj.__module__
        for name, obj in _public_objects()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ != "batched"
    }
    assert not wrong, f"__module__ should be 'batched': {wrong}"


@pytest.mark.parametrize("name", [name for name, obj in _public_objects() if inspect.isclass(obj)])
def test_public_classes_are_final_unless_meant_to_be_extended(name: str) -> None:
    final = getattr(getattr(batched, name), "__final__", False) is True
    if name in OPEN_CLASSES:
        assert not final, f"batched.{name} is meant to be subclassed or implemented"
    else:
        assert final, f"batched.{name} should be marked @typing.final"


def test_public_names_are_documented() -> None:
    undocumented = [
        name
        for name, obj in _public_objects()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj)
    ]
    assert not undocumented


def test_no_private_module_under_a_public_name() -> None:
    for name, value in vars(batched).items():
        # pytest rewrites the asserts of a package that has a pytest11 entry point, and
        # the rewrite binds `@py_builtins`: not a name any user can reach.
        if not name.isidentifier() or name.startswith("_"):
            continue
        if not isinstance(value, types.ModuleType):
            continue
        # A public name bound to a module must be that public submodule itself.
        assert value.__name__ == f"batched.{name}", (name, value.__name__)
        parts = value.__name__.split(".")
        assert not any(part.startswith("_") for part in parts), value.__name__
    for name, obj in _public_objects():
        assert not isinstance(obj, types.ModuleType) or not obj.__name__.split(".")[-1].startswith(
            "_"
        ), f"batched.{name} re-exports the private module {obj.__name__}"


def _modules_loaded_by(code: str) -> set[str]:
    probe = (
        f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(proc.stdout.split())


@pytest.mark.parametrize("code", ["import batched", "import batched.__main__"])
def test_import_does_not_load_optional_dependencies(code: str) -> None:
    loaded = _modules_loaded_by(code)
    assert "batched" in loaded
    assert not loaded & {"numpy", "trio", "uvloop", "torch", "hypothesis"}, loaded


# -- batched.testing: public, imported on its own, never by `import batched` -----------


def test_testing_module_exports_documented_final_names() -> None:
    import batched.testing as testing

    assert len(testing.__all__) == len(set(testing.__all__))
    defined_here = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == testing.__name__
    }
    assert defined_here <= set(testing.__all__), defined_here - set(testing.__all__)
    for name in testing.__all__:
        obj = getattr(testing, name)
        if isinstance(obj, tuple):  # OUTCOME_KINDS
            continue
        assert obj.__module__ == "batched.testing", (name, obj.__module__)
        assert inspect.getdoc(obj), f"batched.testing.{name} has no docstring"
        if inspect.isclass(obj):
            assert getattr(obj, "__final__", False) is True, f"batched.testing.{name} not final"


def test_import_batched_does_not_import_testing() -> None:
    code = "import batched, sys; print('batched.testing' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == "False"
