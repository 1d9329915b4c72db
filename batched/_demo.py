"""``python -m batched demo``: a real model served to many concurrent callers, first one
call per item, then batched, on asyncio and on trio; shows what was measured.

Both models are embedded (seeded random weights, no download) and deterministic:

- ``torch`` (the default when torch imports): a small text encoder. Token and position
  embeddings, a 2-layer ``nn.TransformerEncoder`` (d_model 64, 4 heads) and masked mean
  pooling, over random token ids of 8 to 16 tokens. The batch function pads a batch to
  its longest item and masks the padding out of attention and pooling, so an item's
  output does not depend on its batch-mates.
- ``mlp`` (numpy only): a 2-layer perceptron, ``relu(x @ w1 + b1) @ w2 + b2``. For one item
  that is two matrix-vector products, each reading every weight to produce a single row;
  for a batch it is two matrix products that read the weights once for all rows.

Either way the per-item cost of the batched form is much lower, and the batcher makes many
independent callers share it. Each model is a plain (sync) function: the batcher runs it in
a worker thread, and numpy and torch release the GIL while they compute, so the event loop
keeps taking callers meanwhile.

Both run on one thread (one BLAS thread, one torch intra-op thread) unless
``OMP_NUM_THREADS`` (torch, and BLAS) or ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS``
(BLAS) say otherwise: the comparison is about the work per item, and multi-threaded
kernels on a small or shared machine mostly measure threads spinning against each other.

The display: with rich installed (the ``demo`` extra) and stdout a terminal, a live
progress display of the items done per backend and mode, then a table; otherwise plain
lines (``--display`` forces either). ``--plot out.png`` draws the figures with matplotlib.
rich, matplotlib and torch are imported only here, when the demo runs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, final

import anyio
import attrs

from ._front.batcher import Batcher

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import torch
    from numpy.typing import NDArray
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.table import Table

    Vector = NDArray[np.float32]

__all__ = ["add_arguments", "run"]

_BACKENDS = ("asyncio", "trio")
_MODELS = ("torch", "mlp")
_SINGLE = "one call per item"
_BATCHED = "batched"
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# How close a caller's output must be to the model's output for its own item, computed
# directly: float32, and the torch encoder's padding changes the summation order a little.
_RTOL = _ATOL = 1e-4

T = TypeVar("T")
R = TypeVar("R")


class DemoModel(Protocol[T, R]):
    """What the demo needs of a model: its inputs, its batch function, a reference."""

    @property
    def name(self) -> str:
        """A few words, for the table's title."""
        ...

    @property
    def description(self) -> str:
        """The model and its settings, for the first line."""
        ...

    def inputs(self, count: int, /) -> list[T]:
        """``count`` deterministic items, one per caller."""
        ...

    def __call__(self, items: list[T], /) -> list[R]:
        """The batch function: one output per item, in order."""
        ...

    def reference(self, items: list[T], /) -> list[R]:
        """Every item's output, computed directly (not through a batcher)."""
        ...

    def close(self, got: R, want: R, /) -> bool:
        """Whether ``got`` is ``want`` up to float rounding."""
        ...


@final
class MLP:
    """``relu(x @ w1 + b1) @ w2 + b2`` with fixed random float32 weights (numpy)."""

    def __init__(self, dim: int, hidden: int, seed: int = 0) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.dim = dim
        self.hidden = hidden
        self.w1 = (rng.standard_normal((dim, hidden)) / np.sqrt(dim)).astype(np.float32)
        self.b1 = rng.standard_normal(hidden).astype(np.float32)
        self.w2 = (rng.standard_normal((hidden, dim)) / np.sqrt(hidden)).astype(np.float32)
        self.b2 = rng.standard_normal(dim).astype(np.float32)

    @property
    def name(self) -> str:
        return "numpy MLP"

    @property
    def description(self) -> str:
        import numpy as np

        return (
            f"a 2-layer MLP ({self.dim} -> {self.hidden} -> {self.dim}, float32; "
            f"numpy {np.__version__}, OPENBLAS_NUM_THREADS="
            f"{os.environ.get('OPENBLAS_NUM_THREADS')})"
        )

    def inputs(self, count: int) -> list[Vector]:
        import numpy as np

        rng = np.random.default_rng(1)
        return list(rng.standard_normal((count, self.dim)).astype(np.float32))

    def forward(self, x: Vector) -> Vector:
        """The model on one vector or on a stack of them (one row each)."""
        import numpy as np

        hidden = np.maximum(x @ self.w1 + self.b1, np.float32(0))
        out: Vector = hidden @ self.w2 + self.b2
        return out

    def __call__(self, xs: list[Vector]) -> list[Vector]:
        import numpy as np

        return list(self.forward(np.stack(xs)))

    def reference(self, items: list[Vector]) -> list[Vector]:
        return self(items)

    def close(self, got: Vector, want: Vector) -> bool:
        import numpy as np

        return bool(np.allclose(got, want, rtol=_RTOL, atol=_ATOL))


@final
class TorchEncoder:
    """A small text encoder with seeded random weights, over token ids (torch).

    Token and position embeddings, a 2-layer ``nn.TransformerEncoder`` (d_model 64, 4
    heads, feed-forward 128, no dropout) and mean pooling over the item's own tokens. An
    item is a 1-D ``int64`` tensor of 8 to 16 token ids (1 to 999; 0 pads); its output is
    a ``(64,)`` float32 embedding.
    """

    D_MODEL = 64
    HEADS = 4
    LAYERS = 2
    VOCAB = 1000
    MIN_LEN = 8
    MAX_LEN = 16

    def __init__(self, seed: int = 0, threads: int = 1) -> None:
        import torch
        from torch import nn

        torch.set_num_threads(threads)  # process-wide, worker threads included
        self.threads = threads
        with torch.random.fork_rng(devices=[]):  # seeded without touching the global RNG
            torch.manual_seed(seed)
            self.tokens = nn.Embedding(self.VOCAB, self.D_MODEL, padding_idx=0)
            self.positions = nn.Embedding(self.MAX_LEN, self.D_MODEL)
            layer = nn.TransformerEncoderLayer(
                self.D_MODEL,
                nhead=self.HEADS,
                dim_feedforward=2 * self.D_MODEL,
                dropout=0.0,
                batch_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, num_layers=self.LAYERS, enable_nested_tensor=False
            )
        for module in (self.tokens, self.positions, self.encoder):
            module.eval()

    @property
    def name(self) -> str:
        return "torch transformer encoder"

    @property
    def description(self) -> str:
        import torch

        return (
            f"a {self.LAYERS}-layer transformer encoder (d_model {self.D_MODEL}, "
            f"{self.HEADS} heads, {self.MIN_LEN}-{self.MAX_LEN} token ids, masked mean "
            f"pooling; torch {torch.__version__}, {self.threads} "
            f"thread{'s' if self.threads != 1 else ''})"
        )

    def inputs(self, count: int) -> list[torch.Tensor]:
        import torch

        generator = torch.Generator().manual_seed(1)
        lengths = torch.randint(self.MIN_LEN, self.MAX_LEN + 1, (count,), generator=generator)
        return [
            torch.randint(1, self.VOCAB, (int(length),), generator=generator)
            for length in lengths
        ]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(batch, length)`` ids and mask (True on an item's tokens) -> ``(batch, 64)``."""
        import torch

        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        hidden = self.encoder(x, src_key_padding_mask=~mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return pooled

    def __call__(self, items: list[torch.Tensor]) -> list[torch.Tensor]:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        # inference_mode is per thread: entered here, in the worker thread that runs it.
        with torch.inference_mode():
            ids = pad_sequence(items, batch_first=True, padding_value=0)
            lengths = torch.tensor([len(item) for item in items])
            mask = torch.arange(ids.shape[1]) < lengths.unsqueeze(1)
            return list(self.forward(ids, mask))

    def reference(self, items: list[torch.Tensor]) -> list[torch.Tensor]:
        step = 64
        return [out for i in range(0, len(items), step) for out in self(items[i : i + step])]

    def close(self, got: torch.Tensor, want: torch.Tensor) -> bool:
        import torch

        return got.shape == want.shape and torch.allclose(got, want, rtol=_RTOL, atol=_ATOL)


@final
@attrs.frozen
class Measurement:
    """What one run of all callers through one batcher measured."""

    backend: str
    mode: str
    batch_size: int
    items: int
    seconds: float
    batches: int
    avg_batch_size: float
    # Per caller, from its call to its result.
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def label(self) -> str:
        return f"{self.mode} (batch_size={self.batch_size})"


@final
@attrs.define
class Run:
    """One measured run as the display sees it: the callers move ``done`` up."""

    backend: str
    mode: str
    batch_size: int
    total: int
    done: int = 0
    started: float | None = None  # time.perf_counter() when the callers started
    result: Measurement | None = None


async def _serve(
    model: DemoModel[T, R],
    inputs: list[T],
    batch_size: int,
    timeout_ms: float,
    run: Run | None = None,
) -> tuple[Measurement, list[R]]:
    """All callers at once, each awaiting its own item's output through one batcher."""
    import numpy as np

    count = len(inputs)
    outputs: list[R | None] = [None] * count
    latencies = [0.0] * count
    got = [False] * count
    if run is None:
        run = Run("", "", batch_size, count)  # a warm-up: counted, not shown
    async with Batcher(model, batch_size=batch_size, timeout_ms=timeout_ms) as batcher:

        async def caller(index: int) -> None:
            start = time.perf_counter()
            outputs[index] = await batcher(inputs[index])
            latencies[index] = time.perf_counter() - start
            got[index] = True
            run.done += 1

        run.started = start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(caller, index)
        seconds = time.perf_counter() - start
        stats = batcher.stats
    if not all(got) or stats.completed != count:
        msg = f"only {stats.completed} of {count} callers got a result"
        raise RuntimeError(msg)
    p50, p99 = (float(q) * 1000 for q in np.percentile(latencies, [50, 99]))
    run.result = Measurement(
        backend=run.backend,
        mode=run.mode,
        batch_size=batch_size,
        items=count,
        seconds=seconds,
        batches=stats.total_batches,
        avg_batch_size=stats.avg_batch_size,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )
    return run.result, cast("list[R]", outputs)  # every slot was filled: got is all True


async def _backend(
    model: DemoModel[T, R],
    inputs: list[T],
    reference: list[R],
    timeout_ms: float,
    runs: Sequence[Run],
    display: _Display,
) -> bool:
    """Both runs on the running event loop; whether every caller got its own output."""
    # Warm up the model and the worker thread, so neither run pays for the other's start-up.
    model(inputs[: min(len(inputs), max(run.batch_size for run in runs))])
    await _serve(model, inputs[:8], 1, timeout_ms)
    same = True
    for run in runs:
        gc.collect()  # keep a full collection's pause out of the timings
        _, outputs = await _serve(model, inputs, run.batch_size, timeout_ms, run)
        display.run_finished(run)
        same &= all(model.close(*pair) for pair in zip(outputs, reference, strict=True))
    return same


def speed_up(results: Sequence[Measurement], backend: str) -> float:
    """Batched items/s over one-call-per-item items/s on ``backend``."""
    rate = {m.mode: m.items_per_second for m in results if m.backend == backend}
    return rate[_BATCHED] / rate[_SINGLE]


class _Display(Protocol):
    def begin(self, header: str, runs: Sequence[Run]) -> None: ...
    def backend_started(self, backend: str) -> None: ...
    def run_finished(self, run: Run) -> None: ...
    def backend_finished(
        self, backend: str, results: Sequence[Measurement], same: bool
    ) -> None: ...
    def end(self, title: str, results: Sequence[Measurement], same: bool) -> None: ...
    def close(self) -> None: ...


def _verdict(same: bool) -> str:
    return f"every caller got its own row: {'yes' if same else 'NO'}"


@final
class PlainDisplay:
    """Plain lines, one per run as it ends, and the speed-up per backend."""

    def begin(self, header: str, runs: Sequence[Run]) -> None:
        print(header, flush=True)

    def backend_started(self, backend: str) -> None:
        print(f"{backend}:", flush=True)

    def run_finished(self, run: Run) -> None:
        m = run.result
        assert m is not None
        print(
            f"  {m.label:<34} {m.items_per_second:>11,.0f} items/s"
            f"  {m.batches:>5} batches of {m.avg_batch_size:5.1f}"
            f"  latency p50 {m.latency_p50_ms:8.2f} ms  p99 {m.latency_p99_ms:8.2f} ms",
            flush=True,
        )

    def backend_finished(self, backend: str, results: Sequence[Measurement], same: bool) -> None:
        print(f"  speed-up: {speed_up(results, backend):.1f}x; {_verdict(same)}", flush=True)

    def end(self, title: str, results: Sequence[Measurement], same: bool) -> None:
        pass

    def close(self) -> None:
        pass


def summary_table(title: str, results: Sequence[Measurement]) -> Table:
    """The final table: backend, mode, items/s, p50 ms, p99 ms, speed-up."""
    from rich.table import Table

    table = Table(title=title, caption="latency: per caller, from its call to its result")
    table.add_column("backend")
    table.add_column("mode")
    for column in ("items/s", "p50 ms", "p99 ms", "speed-up"):
        table.add_column(column, justify="right")
    for m in results:
        up = speed_up(results, m.backend) if m.mode == _BATCHED else 1.0
        table.add_row(
            m.backend,
            f"{m.mode} ({m.batch_size})" if m.mode == _BATCHED else m.mode,
            f"{m.items_per_second:,.0f}",
            f"{m.latency_p50_ms:.2f}",
            f"{m.latency_p99_ms:.2f}",
            f"{up:.1f}x",
            style="bold" if m.mode == _BATCHED else None,
        )
    return table


@final
class RichDisplay:
    """A live progress display of the items done per backend and mode, then a table."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.runs: Sequence[Run] = ()
        self.live: Live | None = None

    def begin(self, header: str, runs: Sequence[Run]) -> None:
        from rich.live import Live

        self.console.print(header, markup=False, highlight=False)
        self.runs = runs
        self.live = Live(
            console=self.console, get_renderable=self._progress, refresh_per_second=8
        )
        self.live.start()

    def _progress(self) -> RenderableType:
        """Called by rich's refresh thread: it only reads what the callers count."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        for column in range(5):
            grid.add_column(justify="right" if column >= 3 else "left")
        now = time.perf_counter()
        for run in self.runs:
            if run.result is not None:
                rate = f"{run.result.items_per_second:,.0f} items/s"
            elif run.started is not None and now > run.started:
                rate = f"{run.done / (now - run.started):,.0f} items/s"
            else:
                rate = "waiting"
            grid.add_row(
                run.backend,
                run.mode,
                ProgressBar(total=run.total, completed=run.done, width=20),
                f"{run.done:,}/{run.total:,}",
                rate,
            )
        return grid

    def backend_started(self, backend: str) -> None:
        pass

    def run_finished(self, run: Run) -> None:
        if self.live is not None:
            self.live.refresh()

    def backend_finished(self, backend: str, results: Sequence[Measurement], same: bool) -> None:
        pass

    def end(self, title: str, results: Sequence[Measurement], same: bool) -> None:
        self.close()
        self.console.print(summary_table(title, results))
        self.console.print(_verdict(same), markup=False, highlight=False)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            if not self.console.is_terminal:  # rich ends the last line only on a terminal
                self.console.line()


def plot(path: Path, title: str, results: Sequence[Measurement]) -> None:
    """Items/s per backend and mode (bars) and latency p50/p99, as an image at ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    backends = list(dict.fromkeys(m.backend for m in results))
    modes = list(dict.fromkeys(m.mode for m in results))
    by = {(m.backend, m.mode): m for m in results}
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    fig.suptitle(title)
    rates, latency = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        xs = [i + (k - (len(modes) - 1) / 2) * width for i in range(len(backends))]
        ms = [by[backend, mode] for backend in backends]
        bars = rates.bar(xs, [m.items_per_second for m in ms], width, label=mode)
        labels = [
            f"{m.items_per_second:,.0f}"
            + (f" ({speed_up(results, m.backend):.1f}x)" if mode == _BATCHED else "")
            for m in ms
        ]
        rates.bar_label(bars, labels=labels, fontsize=8)
    rates.set_xticks(range(len(backends)), backends)
    rates.set_ylabel("items/s")
    rates.set_title("throughput")
    rates.set_ylim(0, 1.3 * max(m.items_per_second for m in results))  # room for the legend
    rates.legend(loc="upper center", ncols=len(modes))
    groups = [(backend, mode) for backend in backends for mode in modes]
    for k, (quantile, attr) in enumerate((("p50", "latency_p50_ms"), ("p99", "latency_p99_ms"))):
        xs = [i + (k - 0.5) * 0.4 for i in range(len(groups))]
        bars = latency.bar(xs, [getattr(by[group], attr) for group in groups], 0.4, label=quantile)
        latency.bar_label(bars, fmt="%.1f", fontsize=8)
    latency.set_xticks(range(len(groups)), [f"{b}\n{m}" for b, m in groups], fontsize=8)
    latency.set_ylabel("ms")
    latency.set_title("latency per caller, call to result")
    latency.set_ylim(0, 1.3 * max(m.latency_p99_ms for m in results))
    latency.legend(loc="upper center", ncols=2)
    fig.savefig(path, dpi=100)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be an int >= 1: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also rejects NaN
        msg = f"must be a finite number of milliseconds >= 0: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    parser.add_argument(
        "--callers",
        type=_positive_int,
        default=None,
        help="concurrent callers (default 2000; 200 with --quick)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, help="batch size (default 64)"
    )
    parser.add_argument(
        "--timeout-ms", type=_milliseconds, default=5.0, help="batching timeout (default 5 ms)"
    )
    parser.add_argument(
        "--backend",
        choices=("all", *_BACKENDS),
        default="all",
        help="event loop to run on (default all: asyncio, and trio when it is installed)",
    )
    parser.add_argument(
        "--model",
        choices=("auto", *_MODELS),
        default="auto",
        help="torch: a 2-layer transformer encoder; mlp: a 2-layer numpy MLP "
        "(default auto: torch when it is installed)",
    )
    parser.add_argument(
        "--display",
        choices=("auto", "rich", "plain"),
        default="auto",
        help="rich: a live progress display and a table (needs rich); plain: lines "
        "(default auto: rich when it is installed and stdout is a terminal)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH",
        help="also draw the results into an image, e.g. out.png (needs matplotlib)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")


def choose_model(name: str) -> str:
    """``auto`` -> ``torch`` when torch is installed, else ``mlp``; others unchanged."""
    if name != "auto":
        return name
    return "torch" if importlib.util.find_spec("torch") is not None else "mlp"


def _make_display(choice: str) -> _Display | str:
    """The display ``choice`` asks for, or why it cannot be had."""
    if choice == "plain" or (choice == "auto" and not sys.stdout.isatty()):
        return PlainDisplay()
    try:
        import rich  # noqa: F401
    except ImportError:
        if choice == "auto":
            return PlainDisplay()
        return "--display rich needs rich: pip install 'batched-anyio[demo]' (or pip install rich)"
    return RichDisplay()


def _make_model(choice: str, *, quick: bool) -> DemoModel[Any, Any] | str:
    """The model ``choice`` asks for, or why it cannot be had."""
    if choose_model(choice) == "torch":
        try:
            return TorchEncoder(threads=_omp_threads())
        except ImportError:  # installed, yet it does not import
            if choice == "torch":
                return "--model torch needs torch: pip install torch"
    dim, hidden = (128, 256) if quick else (256, 1024)
    return MLP(dim, hidden)


def _omp_threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _fail(message: str, status: int = 1) -> int:
    print(message, file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    """Run the demo as ``args`` say; return the exit status."""
    # First: numpy reads the BLAS thread count when it loads BLAS (matplotlib imports
    # numpy too), torch reads OMP_NUM_THREADS when it loads.
    if "numpy" not in sys.modules:
        for name in _BLAS_THREAD_VARS:
            os.environ.setdefault(name, "1")
    plot_path: Path | None = args.plot
    if plot_path is not None:
        # Before the measurements, so a missing piece does not cost a whole run.
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail(
                "--plot needs matplotlib: pip install 'batched-anyio[bench]' (or pip install "
                "matplotlib)",
                2,
            )
        if not plot_path.parent.is_dir():
            return _fail(f"--plot {plot_path}: no directory {str(plot_path.parent)!r}", 2)

    display = _make_display(args.display)
    if isinstance(display, str):
        return _fail(display)

    try:
        import numpy  # noqa: F401
    except ImportError:
        return _fail(
            "the demo needs numpy: pip install numpy (or pip install 'batched-anyio[demo]' "
            "for the live display too)"
        )

    if args.backend == "all":
        backends = [b for b in _BACKENDS if importlib.util.find_spec(b) is not None]
    elif importlib.util.find_spec(args.backend) is None:
        return _fail(f"--backend {args.backend} needs {args.backend}: pip install {args.backend}")
    else:
        backends = [args.backend]

    model = _make_model(args.model, quick=args.quick)
    if isinstance(model, str):
        return _fail(model)
    callers: int = args.callers if args.callers is not None else (200 if args.quick else 2000)
    title = f"batched demo: {model.name}, {callers:,} concurrent callers"
    try:
        results, same = _measure(
            model, backends, callers, args.batch_size, args.timeout_ms, display, title
        )
    except KeyboardInterrupt:
        display.close()  # first, so the message lands below the live display
        return _fail("interrupted", 130)
    finally:
        display.close()
    if plot_path is not None:
        try:
            plot(plot_path, title, results)
        except (OSError, ValueError) as exc:
            return _fail(f"--plot {plot_path}: {exc}")
        print(f"plot: {plot_path}")
    return 0 if same else 1


def _measure(
    model: DemoModel[T, R],
    backends: Sequence[str],
    callers: int,
    batch_size: int,
    timeout_ms: float,
    display: _Display,
    title: str,
) -> tuple[list[Measurement], bool]:
    """Every backend's two runs, shown on ``display``; the results, and whether every
    caller got its own output."""
    inputs = model.inputs(callers)
    reference = model.reference(inputs)
    plan = {
        backend: (Run(backend, _SINGLE, 1, callers), Run(backend, _BATCHED, batch_size, callers))
        for backend in backends
    }
    display.begin(
        f"batched demo: {callers} concurrent callers, each awaiting one output of "
        f"{model.description}; {os.cpu_count()} CPUs",
        [run for runs in plan.values() for run in runs],
    )
    results: list[Measurement] = []
    same = True
    for backend, runs in plan.items():
        display.backend_started(backend)
        ok = anyio.run(
            _backend, model, inputs, reference, timeout_ms, runs, display, backend=backend
        )
        measured = [run.result for run in runs if run.result is not None]
        results += measured
        display.backend_finished(backend, measured, ok)
        same &= ok
    display.end(title, results, same)
    return results, same
