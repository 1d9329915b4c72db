"""Plot the benchmarks' JSON: ``python -m benchmarks.plot results.json --out-dir docs/images``.

Three PNGs, with stable names (``python -m benchmarks --out r.json --plot DIR`` draws the
same ones right after a run):

- ``latency_vs_load.png``: the open loop's p50 and p99 latency against the offered load
  (25/50/80/95 % of the bound) per backend, with the p99 target at 80 % and what a
  batcher that costs nothing would get on the same arrivals; below, the
  throughput each load got as a fraction of the bound, with the target at 95 %.
- ``batch_sizes.png``: the open loop's batch-size histogram per load and backend.
- ``overhead.png``: µs per item per scenario and backend: the burst (native spawn, the
  batcher, the decorator), the closed loop (and its bare hand-off), the cache (miss,
  hit), with the targets the scenarios give.

Each figure's caption reads the JSON's ``meta``: the date, Python, the machine and
whether it was a ``--quick`` run. matplotlib (the ``bench`` extra) is imported only
here, only when drawing, with the Agg backend and no pyplot state.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Row = dict[str, Any]

LATENCY_VS_LOAD = "latency_vs_load.png"
BATCH_SIZES = "batch_sizes.png"
OVERHEAD = "overhead.png"
FILES = (LATENCY_VS_LOAD, BATCH_SIZES, OVERHEAD)

# One colour per backend in every figure; backends not listed take the next free ones.
COLORS = {"asyncio": "#1f77b4", "asyncio+uvloop": "#ff7f0e", "trio": "#2ca02c"}
SPARE_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
TARGET_COLOR = "#d62728"
DPI = 110
INSTALL_HINT = "pip install 'batched-anyio[bench]'"
# Value labels stay readable where a target line or another line crosses them.
LABEL_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}


class MissingData(Exception):
    """The results lack what a figure needs (a scenario, or a field an older run lacks)."""


def require_matplotlib() -> None:
    """Exit 2 with the install hint when matplotlib does not import."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            f"the benchmark plots need matplotlib, which is not installed: {INSTALL_HINT}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, whatever pyplot's default is
    return fig


def _rows(results: dict[str, Any], scenario: str) -> list[Row]:
    rows = [row for row in results.get("results", []) if row.get("scenario") == scenario]
    if not rows:
        raise MissingData(f"no {scenario!r} rows in the results")
    return rows


def _need(rows: Iterable[Row], *keys: str) -> None:
    for row in rows:
        for key in keys:
            if key not in row:
                raise MissingData(
                    f"{row['scenario']} rows lack {key!r}: results from an older run?"
                    " Run `python -m benchmarks --out results.json` again"
                )


def _backends(rows: Iterable[Row]) -> list[str]:
    """The backends in the rows, in the order of ``COLORS`` and then as they come."""
    seen = list(dict.fromkeys(row["backend"] for row in rows))
    return sorted(seen, key=lambda b: list(COLORS).index(b) if b in COLORS else len(COLORS))


FIXED = "fixed 5 ms"


def _rule(row: Row) -> str:
    """The open loop's rule of a row: "fixed 5 ms" (results older than the auto rule
    have only that one) or "auto"."""
    return str(row.get("rule", FIXED))


def _series(rows: Iterable[Row], backends: list[str]) -> list[tuple[str, str, list[Row]]]:
    """(backend, rule, its rows by load) for each backend and each rule in the rows."""
    rows = list(rows)
    rules = list(dict.fromkeys(_rule(row) for row in rows))
    out = []
    for backend in backends:
        for rule in rules:
            mine = [row for row in rows if row["backend"] == backend and _rule(row) == rule]
            if mine:
                out.append((backend, rule, sorted(mine, key=lambda r: r["load"])))
    return out


def _colors(backends: list[str]) -> dict[str, str]:
    spare = iter(SPARE_COLORS * 4)
    return {b: COLORS.get(b) or next(spare) for b in backends}


def caption(meta: dict[str, Any]) -> str:
    """Two lines: when, which Python and what kind of run; then the machine."""
    cpu = meta.get("cpu_model") or meta.get("processor") or meta.get("machine") or "?"
    count = meta.get("cpu_count")
    arch = meta.get("machine")
    machine = (
        cpu + (f", {count} CPUs" if count else "") + (f" ({arch})" if arch and arch != cpu else "")
    )
    platform = meta.get("platform")
    first = [str(meta.get("date", "date unknown"))]
    first.append(f"{meta.get('implementation', 'Python')} {meta.get('python', '?')}")
    if meta.get("quick") is not None:
        first.append("--quick run (small sizes, noisy)" if meta["quick"] else "full run")
    second = [machine] + ([platform] if platform else [])
    return " · ".join(first) + "\n" + " · ".join(second)


def _finish(fig: Figure, title: str, meta: dict[str, Any], note: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=13, fontweight="bold")
    # Below everything, as wide as the figure; bbox_inches="tight" makes room for it.
    wrapped = textwrap.fill(note, width=round(fig.get_figwidth() * 15))
    fig.text(
        0.5,
        -0.005,
        wrapped + "\n" + caption(meta),
        ha="center",
        va="top",
        fontsize=8,
        color="0.3",
        linespacing=1.4,
    )
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    return path


def _segment(ax: Axes, x: float, half: float, y: float, label: str | None) -> None:
    """A target drawn as a short horizontal line centred on ``x``."""
    ax.hlines(
        y,
        x - half,
        x + half,
        colors=TARGET_COLOR,
        linestyles="--",
        lw=1.8,
        label=label or "_nolegend_",
    )


def _value_label(
    ax: Axes, x: float, value: float, text: str, target: float | None, near: float, **kw: Any
) -> None:
    """``text`` just above a bar of height ``value``; above its target line instead when
    that line is within ``near`` above the bar, so the label never sits on the line."""
    y = target if target is not None and value <= target <= value + near else value
    ax.annotate(
        text,
        (x, y),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=7,
        bbox=LABEL_BOX,
        zorder=5,
        **kw,
    )


# -- latency vs load ---------------------------------------------------------------------


def plot_latency_vs_load(results: dict[str, Any], path: Path) -> Path:
    rows = _rows(results, "open_loop")
    _need(rows, "load", "p50_ms", "p99_ms", "throughput_to_bound", "offered_items_per_s")
    backends = _backends(rows)
    colors = _colors(backends)
    loads = sorted({row["load"] for row in rows})
    xs = [100 * load for load in loads]
    fig = _figure(9.5, 8.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2.1, 1.0))

    series = _series(rows, backends)
    several = len({rule for _, rule, _ in series}) > 1
    for backend, rule, mine in series:
        x = [100 * row["load"] for row in mine]
        color = colors[backend]
        auto = rule == "auto"
        name = f"{backend} {rule}" if several else backend
        p50, p99 = ("-^", "--v") if auto else ("-o", "--s")
        top.plot(x, [r["p50_ms"] for r in mine], p50, color=color, label=f"{name} p50")
        top.plot(x, [r["p99_ms"] for r in mine], p99, color=color, mfc="white", label=f"{name} p99")
    fixed_rows = [row for row in rows if _rule(row) == FIXED]
    if fixed_rows and all("ideal_p99_ms" in row for row in fixed_rows):
        # The fixed rule played with no cost on the same schedules: its floor.
        first = sorted(
            (row for row in fixed_rows if row["backend"] == backends[0]), key=lambda r: r["load"]
        )
        x = [100 * row["load"] for row in first]
        floors = [
            ("ideal_p50_ms", "-", "no-cost p50 (fixed 5 ms)"),
            ("ideal_p99_ms", "--", "no-cost p99 (fixed 5 ms)"),
        ]
        for key, style, label in floors:
            top.plot(
                x, [r[key] for r in first], style, color="black", lw=1, alpha=0.45, label=label
            )
        auto_rows = sorted(
            (row for row in rows if _rule(row) == "auto" and row["backend"] == backends[0]),
            key=lambda r: r["load"],
        )
        if auto_rows and all("ideal_p99_ms" in row for row in auto_rows):
            # The auto rule played with no cost (ideal_auto): the rule's own figures.
            x = [100 * row["load"] for row in auto_rows]
            for key, style, label in (
                ("ideal_p50_ms", "-^", "no-cost p50 (auto)"),
                ("ideal_p99_ms", "--v", "no-cost p99 (auto)"),
            ):
                top.plot(
                    x,
                    [r[key] for r in auto_rows],
                    style,
                    color="black",
                    lw=1,
                    ms=4,
                    alpha=0.45,
                    label=label,
                )
    p99_targets = {row["load"]: row["target_p99_ms"] for row in rows if row.get("target_p99_ms")}
    for load, target in sorted(p99_targets.items()):
        _segment(top, 100 * load, 6, target, f"p99 target at {load:.0%}: ≤ {target:g} ms")
    high = max(max(r["p99_ms"] for r in rows), *p99_targets.values(), 1.0)
    low = min(r["p50_ms"] for r in rows)
    if high / max(low, 1e-3) > 30:  # a tail far above the median: keep both readable
        top.set_yscale("log")
    else:
        top.set_ylim(0, high * 1.18)
    top.set_ylabel("latency from scheduled arrival (ms)")
    top.set_title("p50 (solid) and p99 (dashed) latency per backend", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, ncols=2, loc="upper left")

    # Throughput as a fraction of the bound: grouped bars, each labelled with its value.
    tp_targets = {
        row["load"]: row["target_min_throughput_to_bound"]
        for row in rows
        if row.get("target_min_throughput_to_bound")
    }
    width = 12 / max(len(series), 1)  # in % of load; 80 and 95 are 15 apart
    for k, (backend, rule, mine) in enumerate(series):
        by_load = {row["load"]: row for row in mine}
        present = [load for load in loads if load in by_load]
        x = [100 * load + (k - (len(series) - 1) / 2) * width for load in present]
        y = [by_load[load]["throughput_to_bound"] for load in present]
        hatch = "///" if rule == "auto" else None
        name = f"{backend} {rule}" if several else backend
        bottom.bar(
            x, y, width * 0.92, color=colors[backend], hatch=hatch, edgecolor="white", label=name
        )
        for load, at, value in zip(present, x, y, strict=True):
            _value_label(bottom, at, value, f"{value:.3f}", tp_targets.get(load), 0.12, rotation=90)
    bottom.plot(xs, loads, ":", color="0.4", lw=1, label="offered load")
    for load, target in sorted(tp_targets.items()):
        label = f"target at {load:.0%}: ≥ {target:g} in every repeat"
        _segment(bottom, 100 * load, 7, target, label)
    bottom.set_ylim(0, 1.25)
    bottom.set_ylabel("throughput / bound")
    bottom.set_title("throughput as a fraction of the bound (median of repeats)", fontsize=10)
    bottom.grid(axis="y", alpha=0.3)
    bottom.legend(fontsize=8, ncols=3, loc="upper left")
    rate = {row["load"]: row["offered_items_per_s"] for row in rows}
    bottom.set_xticks(xs, [f"{100 * load:.0f} %\n{rate[load]:,.0f} items/s" for load in loads])
    bottom.set_xlabel("offered load (Poisson arrivals), % of the bound")
    bottom.set_xlim(xs[0] - 12, xs[-1] + 10)

    first = rows[0]
    rules = (
        ' and timeout_ms="auto" (triangles, hatched bars) on the same arrivals' if several else ""
    )
    note = (
        f"Open loop: one simulated device costing 2 ms + 0.1 ms/item per batch, batch_size=32,"
        f" timeout_ms=5{rules}, bound {first.get('bound_items_per_s', 0):,.0f} items/s;"
        f" medians of {first.get('repeats', '?')} repeats of {first.get('seconds', '?')} s"
        " of arrivals per point."
    )
    title = "Open loop: latency vs offered load"
    return _finish(fig, title, results.get("meta", {}), note, path)


# -- batch sizes -------------------------------------------------------------------------


def histogram(row: Row) -> dict[int, int]:
    """A row's ``batch_size_histogram`` with int keys, by size."""
    return {int(size): count for size, count in sorted(row["batch_size_histogram"].items())}


def plot_batch_sizes(results: dict[str, Any], path: Path) -> Path:
    rows = _rows(results, "open_loop")
    _need(rows, "load", "batch_size_histogram")
    backends = _backends(rows)
    colors = _colors(backends)
    loads = sorted({row["load"] for row in rows})
    largest = max(max(histogram(row), default=1) for row in rows)
    cap = max(32, largest)
    columns = 2 if len(loads) > 1 else 1
    lines = -(-len(loads) // columns)
    fig = _figure(10.0, 3.4 * lines + 0.6)
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    rate = {row["load"]: row.get("offered_items_per_s") for row in rows}
    for ax, load in zip(axes, loads, strict=False):
        peak = 0.0
        series = _series((row for row in rows if row["load"] == load), backends)
        several = len({rule for _, rule, _ in series}) > 1
        for backend, rule, mine in series:
            counts = histogram(mine[0])
            batches = sum(counts.values())
            if not batches:
                continue
            shares = [100 * counts.get(size, 0) / batches for size in range(1, cap + 1)]
            mean = sum(size * count for size, count in counts.items()) / batches
            peak = max(peak, *shares)
            name = f"{backend} {rule}" if several else backend
            ax.stairs(
                shares,
                [size + 0.5 for size in range(cap + 1)],
                color=colors[backend],
                lw=1.8,
                linestyle="--" if rule == "auto" else "-",
                label=f"{name}: mean {mean:.1f}, {batches:,} batches",
            )
        offered = f" ({rate[load]:,.0f} items/s)" if rate.get(load) else ""
        ax.set_title(f"{100 * load:.0f} % of the bound{offered}", fontsize=10)
        ax.set_xlim(0.5, cap + 1.0)  # the full-batch step stays off the frame
        ax.set_xticks([1, *range(4, cap + 1, 4)])
        ax.set_ylim(0, max(peak, 1.0) * 1.5)  # room for the legend above the bars
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left")
    for ax in axes[len(loads) :]:
        ax.set_visible(False)
    for ax in axes[: len(loads)]:
        ax.set_xlabel("items in the batch")
        ax.set_ylabel("share of batches (%)")
    note = (
        'Open loop (batch_size=32, timeout_ms=5, and "auto" dashed where run): every batch'
        " the batch function saw, all repeats together; a full batch has 32 items."
    )
    title = "Open loop: batch sizes per offered load"
    return _finish(fig, title, results.get("meta", {}), note, path)


# -- overhead ----------------------------------------------------------------------------

# (scenario, label, field, target from the row or None)
BARS: tuple[tuple[str, str, str, Callable[[Row], float | None] | None], ...] = (
    ("burst", "burst\nnative spawn", "spawn_us_per_item", None),
    (
        "burst",
        "burst\nBatcher",
        "batched_us_per_item",
        lambda row: row["target_ratio"] * row["spawn_us_per_item"],
    ),
    ("burst", "burst\n@dynamically", "decorator_us_per_item", None),
    ("closed_loop", "closed loop\nBatcher", "us_per_item", lambda row: row["target_us_per_item"]),
    ("closed_loop", "closed loop\nbare hand-off", "floor_us_per_item", None),
    ("cache", "cache\nmiss", "miss_us_per_item", None),
    ("cache", "cache\nhit", "hit_us_per_item", None),
)


def plot_overhead(results: dict[str, Any], path: Path) -> Path:
    by_scenario = {
        scenario: _rows(results, scenario)
        for scenario in dict.fromkeys(scenario for scenario, *_ in BARS)
    }
    for scenario, _, field, _ in BARS:
        _need(by_scenario[scenario], field)
    backends = _backends(row for rows in by_scenario.values() for row in rows)
    colors = _colors(backends)
    fig = _figure(11.0, 5.6)
    ax = fig.subplots()
    width = 0.8 / len(backends)
    labelled: set[str] = set()
    target_drawn = False
    top = 0.0
    labels: list[tuple[float, float, float | None, bool]] = []  # x, value, target, missed
    for i, (scenario, _, field, target_of) in enumerate(BARS):
        present = [
            (backend, row)
            for backend in backends
            for row in by_scenario[scenario]
            if row["backend"] == backend
        ]
        for k, (backend, row) in enumerate(present):
            x = i + (k - (len(present) - 1) / 2) * width
            value = row[field]
            target = target_of(row) if target_of else None
            label = backend if backend not in labelled else None
            labelled.add(backend)
            ax.bar(x, value, width * 0.92, color=colors[backend], label=label)
            labels.append((x, value, target, target is not None and value > target))
            top = max(top, value)
            if target is not None:
                _segment(ax, x, width * 0.5, target, None if target_drawn else "target")
                target_drawn = True
                top = max(top, target)
    for x, value, target, missed in labels:
        _value_label(
            ax,
            x,
            value,
            f"{value:.2f}",
            target,
            0.07 * top,
            color=TARGET_COLOR if missed else "black",
            fontweight="bold" if missed else "normal",
        )
    ax.set_xticks(range(len(BARS)), [label for _, label, _, _ in BARS], fontsize=9)
    ax.set_ylabel("µs per item (median of repeats)")
    ax.set_ylim(0, top * 1.18)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=len(backends) + 1)
    burst, closed, cache = (by_scenario[s][0] for s in ("burst", "closed_loop", "cache"))
    on: dict[float, list[str]] = {}
    for row in by_scenario["closed_loop"]:
        on.setdefault(row["target_us_per_item"], []).append(row["backend"])
    closed_targets = ", ".join(f"≤ {t:g} µs on {' and '.join(b)}" for t, b in sorted(on.items()))
    ax.set_title(
        f"target lines: the burst Batcher ≤ {burst['target_ratio']:g}x native spawn on its"
        f" backend; the closed loop {closed_targets}",
        fontsize=9,
    )
    note = (
        f"burst: {burst['callers']:,} concurrent callers, one item each, batch_size=64;"
        f" closed loop: {closed['callers']} callers calling again at once, batch_size="
        f"{closed['batch_size']}; cache: {cache['callers']:,} callers, MemoryCache. Trivial"
        " batch functions: what is measured is the batching. Values over their target in red."
    )
    title = "Overhead per item, per scenario and backend"
    return _finish(fig, title, results.get("meta", {}), note, path)


# -- the three together ------------------------------------------------------------------

FIGURES: dict[str, Callable[[dict[str, Any], Path], Path]] = {
    LATENCY_VS_LOAD: plot_latency_vs_load,
    BATCH_SIZES: plot_batch_sizes,
    OVERHEAD: plot_overhead,
}


def render(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Draw every figure into ``out_dir`` (made if missing); the paths written.

    A figure whose data is missing is skipped, the others still drawn; then
    ``MissingData`` names what was missing.
    """
    require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, missing = [], []
    for name, draw in FIGURES.items():
        try:
            written.append(draw(results, out / name))
        except MissingData as e:
            missing.append(f"{name}: {e}")
    if missing:
        raise MissingData("; ".join(missing))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plot",
        description=f"Draw {', '.join(FILES)} from `python -m benchmarks --out` JSON.",
    )
    parser.add_argument("results", help="the JSON written by `python -m benchmarks --out`")
    parser.add_argument(
        "--out-dir", default="docs/images", help="where the PNGs go (default: docs/images)"
    )
    args = parser.parse_args(argv)
    require_matplotlib()
    try:
        results = json.loads(Path(args.results).read_text())
    except (OSError, ValueError) as e:
        print(f"cannot read {args.results}: {e}", file=sys.stderr)
        return 1
    try:
        written = render(results, args.out_dir)
    except MissingData as e:
        print(f"some figures were not drawn: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
