"""Every file in ``examples/`` runs, and ``python -m batched demo`` measures both modes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 120

# Output an example must print, beyond exiting 0. An example not listed here must still
# exit 0 and print something.
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "--- asyncio ---",
        "--- trio ---",
        "40 single calls",
        "many(): [[5.0, 33.0], [4.0, 24.0], [5.0, 30.0]]",
        "stats: completed=43 ",
    ],
    "decorator.py": [
        "--- trio ---",
        "caller-driven: 40 results, batch sizes [16, 16, 8]",
        "a list: [(1, 0), (2, 2), (3, 6)]",
        "owned by a block: batch sizes [16, 16, 8]",
        "two instances: big small",
    ],
    "cache.py": [
        "--- trio ---",
        "30 concurrent calls, 3 distinct keys: lookup saw ['apple', 'banana', 'kiwi']",
        "a repeated key later: lookup saw 3 keys in all",
        "cache: hits=1 size=3",
        "with a failing cache: 60, errors counted=2",
    ],
    "threads.py": [
        "every caller got its own result",
        "from asyncio: [9, 16, 25]",
        "from trio: [9, 16, 25]",
        "after `with score:` the function is closed",
    ],
    "test_my_model.py": [
        "examples/test_my_model.py: a model and its Batcher settings, under pytest",
        "6 passed",
    ],
    "torch_embeddings.py": [
        "256 callers: every embedding matches the unbatched one",
        "batched: ",
        "one call per item: ",
        "speed-up: ",
    ],
}
# Examples that need an optional dependency: skipped where it is not installed.
NEEDS: dict[str, str] = {"torch_embeddings.py": "torch"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Import this checkout's `batched`, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _check_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert proc.stdout.strip(), f"printed nothing\n--- stderr\n{proc.stderr}"


def test_examples_exist() -> None:
    assert EXAMPLES, "examples/ holds no .py file"
    missing = set(EXPECTED) - {path.name for path in EXAMPLES}
    assert not missing, f"expected output listed for missing examples: {sorted(missing)}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(path: Path) -> None:
    if path.name in NEEDS and importlib.util.find_spec(NEEDS[path.name]) is None:
        pytest.skip(f"needs {NEEDS[path.name]}")
    proc = _run(str(path))
    _check_ok(proc)
    for text in EXPECTED.get(path.name, []):
        assert text in proc.stdout, f"{text!r} not in the output:\n{proc.stdout}"
    if path.name == "torch_embeddings.py":
        # The figures vary from run to run: only their form is checked.
        assert re.search(
            r"^batched: [\d,]+ texts/s \(\d+ batches, mean batch [\d.]+\)$", proc.stdout, re.M
        ), proc.stdout
        assert re.search(r"^one call per item: [\d,]+ texts/s$", proc.stdout, re.M), proc.stdout
        assert re.search(r"^speed-up: \d+\.\dx$", proc.stdout, re.M), proc.stdout


def test_demo_prints_both_throughputs() -> None:
    proc = _run("-m", "batched", "demo", "--callers", "200", "--quick")
    _check_ok(proc)
    out = proc.stdout
    assert "200 concurrent callers" in out
    for backend in ("asyncio", "trio"):  # trio is a test dependency: both must run
        assert f"\n{backend}:\n" in out, out
    single = re.findall(r"one call per item \(batch_size=1\)\s+([\d,]+) items/s", out)
    batched = re.findall(r"batched \(batch_size=64\)\s+([\d,]+) items/s", out)
    assert len(single) == len(batched) == 2, out
    assert all(int(rate.replace(",", "")) > 0 for rate in single + batched), out
    assert len(re.findall(r"speed-up: \d+\.\dx", out)) == 2, out
    assert out.count("every caller got its own row: yes") == 2, out


def test_demo_one_backend() -> None:
    proc = _run("-m", "batched", "demo", "--callers", "50", "--quick", "--backend", "asyncio")
    _check_ok(proc)
    assert "asyncio:" in proc.stdout
    assert "trio:" not in proc.stdout


def test_demo_without_numpy_says_how_to_get_it() -> None:
    code = (
        "import sys; sys.modules['numpy'] = None\n"  # makes `import numpy` fail
        "from batched.__main__ import main\n"
        "raise SystemExit(main(['demo', '--quick']))\n"
    )
    proc = _run("-c", code)
    assert proc.returncode == 1, proc.stderr
    assert "pip install numpy" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["demo", "--callers", "0"], ["demo", "--timeout-ms", "nan"], ["nonsense"]],
)
def test_cli_rejects_bad_arguments(args: list[str]) -> None:
    proc = _run("-m", "batched", *args)
    assert proc.returncode == 2, proc.stderr
    assert "usage: python -m batched" in proc.stderr
