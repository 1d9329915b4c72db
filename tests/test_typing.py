"""What a user's type checker infers: mypy and pyright on a small module that uses batched.

Each ``reveal_type(...)  # expect: TYPE`` line of ``USER_MODULE`` must be revealed as TYPE
by both checkers (module prefixes dropped, so ``builtins.int`` and ``int`` compare
equal), and nothing else may be reported but the misuses marked ``# misuse``: a list
passed to a batched function whose items are themselves lists, where the checker must
name ``.one()``. The checkers run on this checkout's ``batched`` (MYPYPATH; pyright's
``extraPaths``), in a fresh cache, so the figures of an installed copy never leak in.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from _helpers import ROOT

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT_S = 180

USER_MODULE = '''\
from __future__ import annotations

from typing import Any

import anyio

import batched
import batched.aio
import batched.aio.inference
import batched.inference


class Output:
    """A model's output, named so that its revealed type is plain to compare."""


@batched.dynamically(batch_size=8, timeout_ms=2.0)
async def embed(texts: list[str]) -> list[int]:
    return [len(text) for text in texts]


@batched.dynamically
def score(xs: list[float]) -> list[float]:
    return [x * 2 for x in xs]


@batched.dynamically(batch_size=4)
async def total(rows: list[list[int]]) -> list[int]:
    return [sum(row) for row in rows]


@batched.dynamically
def widths(rows: list[list[str]]) -> list[int]:
    return [len(row) for row in rows]


@batched.aio.dynamically(batch_size=4)
def square(xs: list[int]) -> list[int]:
    return [x * x for x in xs]


class Model:
    @batched.dynamically(batch_size=4)
    async def predict(self, xs: list[str]) -> list[bool]:
        return [bool(x) for x in xs]

    @batched.dynamically
    def classify(self, xs: list[int]) -> list[str]:
        return [str(x) for x in xs]


@batched.inference.dynamically(batch_size=4)
def model(input_ids: Any) -> Output:
    return Output()


@batched.inference.dynamically
async def amodel(features: dict[str, Any]) -> Output:
    return Output()


@batched.aio.inference.dynamically(batch_size=4)
def threaded(input_ids: Any) -> Output:
    return Output()


class Encoder:
    @batched.inference.dynamically(batch_size=4, pad_tokens={"input_ids": 0})
    def encode(self, input_ids: Any) -> Output:
        return Output()


async def double(xs: list[int]) -> list[float]:
    return [x / 2 for x in xs]


async def main() -> None:
    reveal_type(embed)  # expect: BatchedFunction[str, int]
    reveal_type(await embed("a"))  # expect: int
    reveal_type(await embed(["a", "b"]))  # expect: list[int]
    reveal_type(await embed.many(["a", "b"]))  # expect: list[int]
    reveal_type(await embed.one("a"))  # expect: int
    reveal_type(embed.stats.cache_stats)  # expect: CacheStats | None
    reveal_type(score)  # expect: SyncBatchedFunction[float, float]
    reveal_type(score(1.0))  # expect: float
    reveal_type(score([1.0, 2.0]))  # expect: list[float]
    reveal_type(await score.acall(1.0))  # expect: float
    reveal_type(await total.one([1, 2]))  # expect: int
    reveal_type(await total([[1], [2, 3]]))  # expect: list[int]
    reveal_type(await total.many([[1], [2, 3]]))  # expect: list[int]
    reveal_type(widths.one(["a", "b"]))  # expect: int
    reveal_type(widths([["a"], ["b"]]))  # expect: list[int]
    reveal_type(await square(3))  # expect: int
    reveal_type(await Model().predict("x"))  # expect: bool
    reveal_type(await Model().predict(["x", ""]))  # expect: list[bool]
    reveal_type(Model().classify(1))  # expect: str
    reveal_type(model)  # expect: InferenceFunction[Output]
    reveal_type(model(input_ids=[[1, 2]]))  # expect: Output
    reveal_type(await model.acall(input_ids=[[1, 2]]))  # expect: Output
    reveal_type(await amodel({"input_ids": [[1, 2]]}))  # expect: Output
    reveal_type(Encoder().encode(input_ids=[[1]]))  # expect: Output
    reveal_type(threaded)  # expect: AsyncInferenceFunction[Output]
    reveal_type(await threaded(input_ids=[[1]]))  # expect: Output
    async with batched.Batcher(double, batch_size=4) as b:
        reveal_type(b)  # expect: Batcher[int, float]
        reveal_type(await b(1))  # expect: float
        reveal_type(await b.many([1, 2]))  # expect: list[float]
        reveal_type(b.stats)  # expect: BatchStats


async def misuse() -> None:
    await total([1, 2])  # misuse
    await total.acall([1, 2])  # misuse
    widths(["a", "b"])  # misuse


anyio.run(main)
'''

_EXPECT = re.compile(r"#\s*expect:\s*(.+?)\s*$")
_QUALIFIED = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")


def _normal(type_text: str) -> str:
    """A type as both checkers spell it: no module prefixes, no spaces."""
    return _QUALIFIED.sub(r"\1", type_text).replace(" ", "")


def _lines_marked(text: str, mark: str) -> set[int]:
    return {n for n, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(mark)}


def _expected() -> dict[int, str]:
    found: dict[int, str] = {}
    for n, line in enumerate(USER_MODULE.splitlines(), 1):
        match = _EXPECT.search(line)
        if match:
            found[n] = _normal(match.group(1))
    return found


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _write_user_module(tmp_path: Path) -> Path:
    path = tmp_path / "user.py"
    path.write_text(USER_MODULE, encoding="utf-8")
    return path


def _check(revealed: dict[int, str], errors: dict[int, str], output: str) -> None:
    expected = _expected()
    got = {n: _normal(text) for n, text in revealed.items()}
    assert got == expected, f"revealed types differ\n{output}"
    misuses = _lines_marked(USER_MODULE, "# misuse")
    assert misuses, "the module marks no misuse"
    assert set(errors) == misuses, f"errors on other lines than the misuses\n{output}"
    for n in misuses:
        assert ".one(" in errors[n], f"line {n} does not point to .one()\n{output}"


def test_expectations_are_read() -> None:
    # The checks below compare against these; a broken regex would make them compare nothing.
    expected = _expected()
    assert len(expected) == 30
    assert expected[min(expected)] == "BatchedFunction[str,int]"
    assert _normal("builtins.list[builtins.int]") == "list[int]"
    assert _normal("batched.cache.CacheStats | None") == "CacheStats|None"


def test_mypy_infers_the_documented_types(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    path = _write_user_module(tmp_path)
    proc = _run(
        [
            sys.executable, "-m", "mypy", "--strict", "--enable-error-code", "deprecated",
            "--no-error-summary", "--show-error-codes", "--hide-error-context",
            # As for an installed package: errors inside batched are not the user's.
            "--follow-imports", "silent",
            "--cache-dir", str(tmp_path / "cache"), "--python-version", "3.11", str(path),
        ],
        tmp_path,
        MYPYPATH=str(ROOT),
    )
    output = proc.stdout + proc.stderr
    revealed: dict[int, str] = {}
    errors: dict[int, str] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^[^:]*user\.py:(\d+): (note|error): (.*)$", line)
        if match is None:
            continue
        n, kind, text = int(match.group(1)), match.group(2), match.group(3)
        note = re.match(r'^Revealed type is "(.*)"$', text)
        if kind == "note" and note:
            revealed[n] = note.group(1)
        elif kind == "error":
            errors[n] = errors.get(n, "") + text
    assert proc.returncode == 1, output  # the misuses are errors
    _check(revealed, errors, output)


def test_pyright_infers_the_documented_types(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyright") is None:
        pytest.skip("needs pyright (in the test extra)")
    path = _write_user_module(tmp_path)
    config = {
        "pythonVersion": "3.11",
        "extraPaths": [str(ROOT)],
        "reportDeprecated": "error",
        "include": [path.name],
    }
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config), encoding="utf-8")
    proc = _run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable], tmp_path)
    output = proc.stdout + proc.stderr
    # Text, not --outputjson: the JSON report leaves out a deprecation's message.
    diagnostics: list[tuple[int, str, str]] = []
    for line in proc.stdout.splitlines():
        match = re.match(r"^\s+\S*user\.py:(\d+):\d+ - (\w+): (.*)$", line)
        if match:
            diagnostics.append((int(match.group(1)), match.group(2), match.group(3)))
        elif diagnostics and line[:1].isspace():  # a message's next line (indented)
            n, kind, text = diagnostics[-1]
            diagnostics[-1] = (n, kind, f"{text}\n{line.strip()}")
    revealed: dict[int, str] = {}
    errors: dict[int, str] = {}
    for n, kind, text in diagnostics:
        note = re.match(r'^Type of ".*" is "(.*)"$', text, re.S)
        if kind == "information" and note:
            revealed[n] = note.group(1)
        else:
            errors[n] = errors.get(n, "") + text
    assert proc.returncode == 1, output  # the misuses are errors
    _check(revealed, errors, output)
