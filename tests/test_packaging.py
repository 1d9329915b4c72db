"""The package's metadata: its extras give what the code they are for imports.

The imports are read from the sources (``ast``), so an example or a ``batched.testing``
module that starts to need a new package fails here until its extra names it. (That a
wheel built from a clean clone installs with only anyio and attrs needs a fresh virtual
environment and the package index: it is checked by hand, not here.)
"""

from __future__ import annotations

import ast
import sys
import tomllib
from typing import TYPE_CHECKING

from _helpers import ROOT
from packaging.requirements import Requirement

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
NAME: str = PROJECT["name"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
RUNTIME = {Requirement(text).name for text in PROJECT["dependencies"]}  # anyio, attrs

# Import names that a distribution of another name provides.
PROVIDED_BY = {"pydantic": "fastapi", "yaml": "pyyaml", "opentelemetry": "opentelemetry-api"}
# Imports that are optional where they appear: behind a parameter the user picks.
OPTIONAL = {
    "uvloop",  # batched.testing's "asyncio+uvloop" backend only
}


def _dist(requirement: Requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def expanded(extra: str) -> set[str]:
    """The distributions an extra installs, its references to other extras followed (anyio's
    own ``trio`` extra counted as trio)."""
    found: set[str] = set()
    for text in EXTRAS[extra]:
        requirement = Requirement(text)
        if _dist(requirement) == NAME:
            for other in requirement.extras:
                found |= expanded(other)
            continue
        found.add(_dist(requirement))
        found |= set(requirement.extras) if _dist(requirement) == "anyio" else set()
    return found


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def third_party_imports(paths: Iterable[Path]) -> dict[str, set[str]]:
    """Each top-level module imported at runtime that is neither stdlib nor batched: the
    files that import it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if _under_type_checking(node, parents):
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("batched", "__future__"):
                    continue
                found.setdefault(top, set()).add(path.name)
    return found


def _missing(imports: dict[str, set[str]], dists: set[str]) -> dict[str, set[str]]:
    return {
        module: files
        for module, files in imports.items()
        if PROVIDED_BY.get(module, module).replace("_", "-") not in dists | RUNTIME
        and module not in OPTIONAL
    }


def test_the_distribution_is_not_mixedbreads() -> None:
    assert NAME == "batched-anyio"  # PyPI's "batched" is mixedbread's project
    assert (ROOT / "batched" / "__init__.py").is_file()  # the import name stays batched


def test_the_examples_extra_gives_what_every_example_imports() -> None:
    imports = third_party_imports(sorted((ROOT / "examples").glob("*.py")))
    assert {"torch", "fastapi", "numpy"} <= set(imports)  # the reader reads the examples
    missing = _missing(imports, expanded("examples"))
    assert not missing, f"add to the `examples` extra in pyproject.toml: {missing}"


def test_the_examples_extra_gives_the_plugins_of_the_pytest_settings() -> None:
    # examples/test_my_model.py runs pytest from the repository root, so under the settings
    # in pyproject.toml: with --strict-config an ini option of a missing plugin is an error.
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "pytest"
    ]["ini_options"]
    if "timeout" in settings:
        assert "pytest-timeout" in expanded("examples")


def test_the_testing_extra_is_what_batched_testing_imports() -> None:
    imports = third_party_imports(sorted((ROOT / "batched" / "testing").glob("*.py")))
    missing = _missing(imports, expanded("testing"))
    assert not missing, f"add to the `testing` extra in pyproject.toml: {missing}"
    needed = {PROVIDED_BY.get(module, module) for module in imports} - OPTIONAL - RUNTIME
    assert expanded("testing") - RUNTIME == needed  # slim: nothing it does not import


def test_the_metrics_extra_gives_what_batched_metrics_imports() -> None:
    imports = third_party_imports(sorted((ROOT / "batched" / "metrics").glob("*.py")))
    assert {"prometheus_client", "opentelemetry"} <= set(imports)
    missing = _missing(imports, expanded("metrics"))
    assert not missing, f"add to the `metrics` extra in pyproject.toml: {missing}"
    # The suite tests the observers with the real libraries: CI installs `.[test]` alone.
    assert expanded("metrics") <= expanded("test")


def test_the_test_extra_covers_the_testing_extra() -> None:
    # .ci/run installs `.[test]` alone, and the suite uses batched.testing.
    assert expanded("testing") <= expanded("test")


def test_the_torch_extra_pins_no_exact_version() -> None:
    for extra in ("torch", "examples"):
        for text in EXTRAS[extra]:
            requirement = Requirement(text)
            if _dist(requirement) == "torch":
                assert not any(spec.operator in ("==", "===") for spec in requirement.specifier)


def test_the_finder_finds_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nimport numpy.linalg\nfrom fastapi import FastAPI\nfrom . import x\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
        "def f():\n    import trio\n",
        encoding="utf-8",
    )
    assert set(third_party_imports([source])) == {"numpy", "fastapi", "trio"}
    assert _missing({"pydantic": {"m.py"}, "rich": {"m.py"}}, {"fastapi"}) == {"rich": {"m.py"}}
