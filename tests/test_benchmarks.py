"""``python -m benchmarks --quick`` runs every scenario, writes sane JSON and plots it.

The guard that the benchmarks never rot. It checks the shape of the results, never a
speed: speed targets belong to the benchmarks' own report, not to a shared test machine.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import ROOT

SCENARIOS = {
    "burst",
    "threads",
    "cache",
    "inference",
    "closed_loop",
    "latency",
    "open_loop",
    "peers",
    "pulled",
    "scale",
    "continuous",
}
# Settings that may rightly be zero; every other number must be positive.
MAY_BE_ZERO = {"timeout_ms"}
# Differences that may rightly be negative: a waiting call in the batcher holds less than
# the native reference's parked coroutine (the call is the future its caller awaits).
MAY_BE_NEGATIVE = {"bytes_per_waiting_item"}
PLOTS = ("latency_vs_load.png", "batch_sizes.png", "overhead.png")
OPEN_LOOP_BATCH_SIZE = 32  # benchmarks/open_loop.py
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """The width and height of a PNG, from its signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, (path, head[:8])
    assert head[12:16] == b"IHDR", (path, head[12:16])
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.timeout(300)
def test_quick_benchmarks_write_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    images = tmp_path / "images"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--plot", str(images)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    meta = results["meta"]
    assert {"date", "python", "platform", "cpu_model", "cpu_count"} <= meta.keys(), meta
    assert meta["quick"] is True, meta
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
    assert {(row["load"], row["scheme"]) for row in rows if row["scenario"] == "continuous"} == {
        (load, scheme)
        for load in ("saturation", 0.8)
        for scheme in ("continuous", "fixed", "fixed, rows skipped")
    }
    peer_rows = [row for row in rows if row["scenario"] == "peers"]
    assert {(row["system"], row["backend"]) for row in peer_rows} == {
        ("batched", "asyncio"),
        ("batched", "trio"),
        ("aiodataloader", "asyncio"),
    }
    assert {row["case"] for row in peer_rows} == {
        "burst",
        "closed loop 64",
        "closed loop 1024",
        "full batch",
    }
    assert all("to_aiodataloader" in row for row in peer_rows if row["backend"] == "asyncio"
               and row["system"] == "batched")
    for scenario in ("closed_loop", "latency", "open_loop", "scale"):
        backends = {row["backend"] for row in rows if row["scenario"] == scenario}
        assert {"asyncio", "trio"} <= backends, scenario
    for row in rows:
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            assert math.isfinite(value), (key, row)
            if key in MAY_BE_NEGATIVE:
                continue
            if key in MAY_BE_ZERO:
                assert value >= 0, (key, row)
            else:
                assert value > 0, (key, row)
    # The batch sizes fn saw: every batch the batcher's stats report, every item sent.
    for row in rows:
        if row["scenario"] != "open_loop":
            continue
        histogram = {int(size): count for size, count in row["batch_size_histogram"].items()}
        assert histogram, row
        assert all(1 <= size <= OPEN_LOOP_BATCH_SIZE for size in histogram), row
        assert all(isinstance(count, int) and count > 0 for count in histogram.values()), row
        assert sum(histogram.values()) == row["batches"], row
        assert sum(size * count for size, count in histogram.items()) == row["items"], row
    # One printed line per row, after nothing but the results.
    assert len(proc.stdout.splitlines()) == len(rows), proc.stdout
    # The plots, under their stable names; their paths reported on stderr.
    assert sorted(p.name for p in images.iterdir()) == sorted(PLOTS)
    for name in PLOTS:
        width, height = _png_size(images / name)
        assert width > 600, (name, width)
        assert height > 400, (name, height)
        assert str(images / name) in proc.stderr, proc.stderr


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    # matplotlib blocked from importing: the message names the extra, the exit is 2.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from benchmarks.plot import main;"
        f" sys.exit(main([{str(tmp_path / 'r.json')!r}, '--out-dir', {str(tmp_path)!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'batched-anyio[bench]'" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


def test_seed_comparison_child_measures_this_library() -> None:
    # The head-to-head needs mixedbread's batched in another interpreter; here the child
    # runs on this one, so the scenarios keep working against the shared API.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "seed.py"), "--child", "--quick"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert Path(row["library"]).resolve().parent == ROOT / "batched", row
    for key in ("burst_us", "burst_spawn_us", "closed_loop_us", "full_batch_p50_ms"):
        assert 0 < row[key] < 10_000, (key, row)
    # A lone request waits out timeout_ms=5: never less.
    assert 5.0 <= row["lone_p50_ms"] < 1_000, row


def test_open_loop_ideal_plays_the_rule() -> None:
    from benchmarks import open_loop as ol

    # One lone item waits out timeout_ms, then its batch of one runs: 5 + 2 + 0.1 ms.
    lone = ol.ideal([0.0])
    assert lone["p50"] == pytest.approx(ol.TIMEOUT_MS + (ol.A + ol.B) * 1e3)
    # Two full batches at once: the second starts when the device frees; the device never
    # idles, so the throughput is the bound.
    burst = ol.ideal([0.0] * (2 * ol.BATCH_SIZE))
    one = (ol.A + ol.B * ol.BATCH_SIZE) * 1e3
    assert burst["p50"] == pytest.approx(1.5 * one)  # the median of 32 x one, 32 x two
    assert burst["p99"] == pytest.approx(2 * one)
    assert burst["throughput"] == pytest.approx(1.0)


def test_open_loop_ideal_auto_plays_the_library_rule() -> None:
    from benchmarks import open_loop as ol

    # A lone item leaves at once: only its batch's cost.
    assert ol.ideal_auto([0.0])["p50"] == pytest.approx((ol.A + ol.B) * 1e3)
    # On the benchmark's arrivals, played with no cost: the targets where the
    # rule can meet them (80 %: p99 under the fixed rule's and under 10 ms; 95 %: the
    # fixed rule's throughput, within noise), and at 25 % well under the fixed rule's p50 (0.5x is
    # out of reach of any rule with one device: see the module's docstring).
    for load, seed in ((0.25, 1), (0.8, 1), (0.95, 1)):
        arrivals = ol.schedule(load * ol.BOUND, 1.0, seed)
        fixed, auto = ol.ideal(arrivals), ol.ideal_auto(arrivals)
        if load == 0.25:
            assert auto["p50"] < 0.7 * fixed["p50"], (auto, fixed)
        if load == 0.8:
            assert auto["p99"] <= min(fixed["p99"], ol.P99_TARGET_MS[0.8]), (auto, fixed)
        if load == 0.95:
            # Both keep up with the arrivals: they differ by the last batches' timing only
            # (within +-0.1 % on these schedules).
            assert auto["throughput"] >= fixed["throughput"] - 0.002, (auto, fixed)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_slots_auto_beats_sending_at_once_with_a_large_per_batch_cost(backend: str) -> None:
    """Virtual time, so exact: on 4 slots of 20 ms + 0.5 ms/item, "auto" has a lower p50
    than a batch whenever a slot is free, and than a fixed 5 ms, at the same throughput."""
    from benchmarks import open_loop, slots

    model = slots.Model(4, 0.020, 0.0005)
    for load in (0.5, 0.8):
        arrivals = open_loop.schedule(load * model.bound, 2.0, 1)
        rows = {rule: slots.play(model, rule, arrivals, backend) for rule in slots.RULES}
        assert rows["auto"]["p50_ms"] < rows[0]["p50_ms"], (load, rows)
        assert rows["auto"]["p50_ms"] < rows[5]["p50_ms"], (load, rows)
        assert rows["auto"]["throughput"] > rows[0]["throughput"] - 0.01, (load, rows)
