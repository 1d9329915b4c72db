"""``python -m benchmarks --quick`` runs every scenario and writes sane JSON.

The guard that the benchmarks never rot. It checks the shape of the results, never a
speed: speed targets belong to the benchmarks' own report, not to a shared test machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "burst",
    "threads",
    "cache",
    "inference",
    "closed_loop",
    "latency",
    "open_loop",
    "scale",
}
# Settings that may rightly be zero; every other number must be positive.
MAY_BE_ZERO = {"timeout_ms"}


@pytest.mark.timeout(300)
def test_quick_benchmarks_write_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    rows = results["results"]
    assert {row["scenario"] for row in rows} == SCENARIOS
    assert {row["case"] for row in rows if row["scenario"] == "latency"} == {
        "full batch",
        "lone request",
    }
    assert {row["load"] for row in rows if row["scenario"] == "open_loop"} == {
        0.25,
        0.5,
        0.8,
        0.95,
    }
    assert {row["case"] for row in rows if row["scenario"] == "scale"} == {"cost", "memory"}
    for scenario in ("closed_loop", "latency", "open_loop", "scale"):
        backends = {row["backend"] for row in rows if row["scenario"] == scenario}
        assert {"asyncio", "trio"} <= backends, scenario
    for row in rows:
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            assert math.isfinite(value), (key, row)
            if key in MAY_BE_ZERO:
                assert value >= 0, (key, row)
            else:
                assert value > 0, (key, row)
    # One printed line per row, after nothing but the results.
    assert len(proc.stdout.splitlines()) == len(rows), proc.stdout
