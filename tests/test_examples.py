"""Every file in ``examples/`` runs (``python -m batched demo``: see test_demo.py)."""

from __future__ import annotations

import importlib.util
import re
from typing import TYPE_CHECKING

import pytest
from _helpers import ROOT, check_exit_ok, run_python

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 120

# Output an example must print, beyond exiting 0. An example not listed here must still
# exit 0 and print something.
EXPECTED: dict[str, list[str]] = {
    "auto_timeout.py": [
        "--- asyncio ---",
        "--- trio ---",
        "a lone request: fixed 5 ms waited for company: yes",
        "a lone request: auto left at once: yes",
        "steady load, auto: more than one item per batch: yes",
    ],
    "quickstart.py": [
        "--- asyncio ---",
        "--- trio ---",
        "40 single calls",
        "many(): [[5.0, 33.0], [4.0, 24.0], [5.0, 30.0]]",
        "stats: completed=43 ",
    ],
    "two_workers.py": [
        "--- asyncio ---",
        "--- trio ---",
        "results: 200, e.g. 'REQUEST 7'",
        "both workers served: yes",
        "every caller's request id reached a worker: True",
        "stats: completed=200 ",
    ],
    "deadlines.py": [
        "--- asyncio ---",
        "--- trio ---",
        "with a 500 ms deadline: result 6, batch reason 'deadline'",
        "'in 0.1 s' timed out while it waited",
        "next batch, earliest deadline first: ['in 1 s', 'in 2 s', 'in 3 s']",
        "the expired request reached the model: False",
        "stats: completed=6 cancelled=1",
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
    "metrics.py": [
        "--- asyncio ---",
        "--- trio ---",
        'batched_batch_size_sum{batcher="embed"} 40.0',
        'batched_items_total{batcher="embed",outcome="completed"} 39.0',
        'batched_items_total{batcher="embed",outcome="failed"} 1.0',
        'batched_batches_total{batcher="embed",reason="full"} 2.0',
        'batched_batches_total{batcher="embed",reason="timeout"} 1.0',
        'batched_waiting_items{batcher="embed"} 0.0',
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
    "fastapi_app.py": [
        "lifespan: 200 responses ok, mean batch size ",
        "lifespan: batched: yes",
        "caller-driven: 200 responses ok, mean batch size ",
        "caller-driven: batched: yes",
    ],
    "fastapi_production.py": [
        "GET /ready: 200 while serving",
        "a burst of 100: each got 200, or 503 with a Retry-After: True",
        "GET /metrics: batched_batch_duration_seconds (histogram), ",
        "after SIGTERM: GET /ready: 503",
        "every 200 carries its own text's vector: yes",
        "server exit status: 0",
        "batcher closed: completed=",
    ],
    "trio_service.py": [
        "nursery: 1000 calls -> 10 batches",
        "nursery: every caller got its own square: yes",
        "tcp: 20 connections x 10 lines: every reply correct: yes",
        "tcp: lookups shared batches: yes",
    ],
    "sqlite_dataloader.py": [
        "--- asyncio ---",
        "--- trio ---",
        "1000 calls -> ",
        "every result matches a direct SELECT: yes",
        "get_user(5000) -> None",
        "without dedupe: ",
    ],
    "sync_model.py": [
        "800 calls from 16 threads: every result matches the unbatched model: yes",
        "stats: completed=800 ",
        "batched: yes",
        "after `with model.predict:` the method is closed",
        "another instance: completed=1 (the first: 800)",
    ],
    "steering.py": [
        "--- asyncio ---",
        "--- trio ---",
        "batch_size=4: batch sizes [4, 4]",
        "batch_size=16: batch sizes [16]",
        "ready: False",
        "drain: 10 accepted calls served, refused ['too late']",
        "stats: completed=34 failed=1",
    ],
    "fixed_shapes.py": [
        "50 callers: each got its own row back: yes",
        "all allowed: yes",
        "a 100-token text: ValueError: a row of 100 positions is longer than the largest of "
        "'allowed_lengths'",
    ],
    "continuous_ops.py": [
        "--- asyncio ---",
        "--- trio ---",
        "batch_size=2: steps of [2, 2, 2, 2, 2, 2, 2, 2, 2], reasons {'full': 9}",
        "batch_size=8: steps of [6, 6, 6], reasons {'timeout': 3}",
        "waits reported once per request: 6",
        "requests ended per step: [0, 0, 6]",
        "ready: False",
        "a request after stop_accepting(): BatcherClosed",
        "drain: steps of [4, 4, 4], reasons {'closing': 3}",
        "drain: 4 accepted requests decoded to their end",
        "stats: completed=16 failed=1 steps=15",
    ],
    "ray_serve_app.py": [
        "200 requests through Serve's proxy: 200 replies match the unbatched score",
        "replicas that formed batches: 2 of 2",
    ],
    "token_streaming.py": [
        "--- asyncio ---",
        "--- trio ---",
        "12 clients streamed their tokens; each matches decoding alone: yes",
        "a client that hung up after 3 tokens: its request left (cancelled=1)",
    ],
}
# Examples that need an optional dependency: skipped where it is not installed.
NEEDS: dict[str, str] = {
    "torch_embeddings.py": "torch",
    "token_streaming.py": "torch",
    "fastapi_app.py": "fastapi",  # and uvicorn, httpx: all three come with the test extra
    "fastapi_production.py": "fastapi",  # and prometheus_client, also in the test extra
    "trio_service.py": "trio",
    "sync_model.py": "numpy",
    "fixed_shapes.py": "numpy",
    "ray_serve_app.py": "ray",  # the ray extra; the test extra has it too
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python(*args, timeout=TIMEOUT_S)


def _check_ok(proc: subprocess.CompletedProcess[str]) -> None:
    out = check_exit_ok(proc)
    assert out.strip(), f"printed nothing\n--- stderr\n{proc.stderr}"


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
