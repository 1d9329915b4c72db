"""``python -m batched demo``: both models, both displays, the plot, and its errors.

Most tests run the demo as a user does, in a subprocess with stdout piped (so the
automatic display is the plain one), with ``--quick`` sizes.
"""

from __future__ import annotations

import importlib.util
import io
import re
import struct
import sys
from typing import TYPE_CHECKING

import pytest
from _helpers import check_exit_ok, demo_display, demo_module, run_python

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

TIMEOUT_S = 120
demo = demo_module()  # the demo's own module (private: see _helpers.demo_module)
HAS_TORCH = importlib.util.find_spec("torch") is not None

# A plain result line, e.g.
#   one call per item (batch_size=1)     4,371 items/s    200 batches of   1.0  latency p50 ...
_FIGURES = (
    r"\s+([\d,]+) items/s  \s*\d+ batches of\s+\d+\.\d"
    r"  latency p50\s+\d+\.\d\d ms  p99\s+\d+\.\d\d ms$"
)
SINGLE = re.compile(r"^  one call per item \(batch_size=1\)" + _FIGURES, re.M)
BATCHED = re.compile(r"^  batched \(batch_size=(\d+)\)" + _FIGURES, re.M)
SPEED_UP = re.compile(r"^  speed-up: \d+\.\dx; every caller got its own row: yes$", re.M)
# What only a rich rendering writes: box drawing, bars, escape sequences.
RICH_MARKS = ("\x1b[", "┃", "│", "━")


def _run(*args: str, block: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m batched *args`` (or ``python *args`` when ``args[0]`` is ``-c``).

    ``block`` names a module made unimportable first, as if it were not installed.
    """
    if block is not None:
        code = (
            f"import sys; sys.modules[{block!r}] = None\n"  # makes the import fail
            "from batched.__main__ import main\n"
            f"raise SystemExit(main({list(args)!r}))\n"
        )
        command: tuple[str, ...] = ("-c", code)
    elif args[:1] == ("-c",):
        command = args
    else:
        command = ("-m", "batched", *args)
    return run_python(*command, timeout=TIMEOUT_S, **env)


def _check_ok(proc: subprocess.CompletedProcess[str]) -> str:
    out = check_exit_ok(proc)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    return out


def _check_plain(out: str, backends: tuple[str, ...], batch_size: int = 64) -> None:
    """The plain lines, for each backend in order: its name, both runs, the speed-up."""
    for mark in RICH_MARKS:
        assert mark not in out, f"{mark!r} in plain output:\n{out}"
    assert re.findall(r"^(\w+):$", out, re.M) == list(backends), out
    singles, batched = SINGLE.findall(out), BATCHED.findall(out)
    assert len(singles) == len(batched) == len(backends), out
    assert all(size == str(batch_size) for size, _ in batched), out
    rates = singles + [rate for _, rate in batched]
    assert all(int(rate.replace(",", "")) > 0 for rate in rates), out
    assert len(SPEED_UP.findall(out)) == len(backends), out


def test_plain_output_with_the_mlp_on_both_backends() -> None:
    out = _check_ok(_run("demo", "--quick", "--model", "mlp", "--callers", "200"))
    first = out.splitlines()[0]
    assert first.startswith("batched demo: 200 concurrent callers, each awaiting one output"), out
    assert "a 2-layer MLP (128 -> 256 -> 128, float32; numpy " in first, out
    _check_plain(out, ("asyncio", "trio"))  # trio is a test dependency: both must run


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_the_torch_encoder() -> None:
    out = _check_ok(_run("demo", "--quick", "--model", "torch", "--batch-size", "32"))
    first = out.splitlines()[0]
    assert "200 concurrent callers" in first, out
    assert "a 2-layer transformer encoder (d_model 64, 4 heads, 8-16 token ids" in first, out
    assert re.search(r"torch [\w.+]+, 1 thread\)", first), out
    _check_plain(out, ("asyncio", "trio"), batch_size=32)


def test_auto_picks_torch_when_it_is_installed() -> None:
    assert demo.choose_model("auto") == ("torch" if HAS_TORCH else "mlp")
    assert demo.choose_model("mlp") == "mlp"
    assert demo.choose_model("torch") == "torch"


def test_auto_falls_back_to_the_mlp_without_torch() -> None:
    proc = _run("demo", "--quick", "--callers", "50", "--backend", "asyncio", block="torch")
    out = _check_ok(proc)
    assert "a 2-layer MLP" in out.splitlines()[0], out
    _check_plain(out, ("asyncio",))


def test_model_torch_without_torch_says_how_to_get_it() -> None:
    proc = _run("demo", "--quick", "--model", "torch", block="torch")
    assert proc.returncode == 1, proc.stderr
    assert "--model torch needs torch: pip install torch" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_one_backend() -> None:
    proc = _run("demo", "--quick", "--model", "mlp", "--callers", "50", "--backend", "asyncio")
    out = _check_ok(proc)
    assert "50 concurrent callers" in out
    _check_plain(out, ("asyncio",))


def test_without_numpy_says_how_to_get_it() -> None:
    proc = _run("demo", "--quick", block="numpy")
    assert proc.returncode == 1, proc.stderr
    assert "pip install numpy" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    proc = _run("demo", "--quick", "--model", "mlp", "--backend", "asyncio", "--plot", str(path))
    out = _check_ok(proc)
    _check_plain(out.replace(f"plot: {path}\n", ""), ("asyncio",))
    assert out.endswith(f"plot: {path}\n"), out
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR", data[:32]
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 450)
    assert len(data) > 10_000  # two panels of bars and labels, not an empty image


def test_plot_without_matplotlib_fails_before_measuring(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    proc = _run("demo", "--quick", "--plot", str(path), block="matplotlib")
    assert proc.returncode == 2, proc.stderr
    assert "--plot needs matplotlib: pip install 'batched-anyio[bench]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not path.exists()


def test_plot_into_a_missing_directory_fails_before_measuring(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "out.png"
    proc = _run("demo", "--quick", "--plot", str(path))
    assert proc.returncode == 2, proc.stderr
    assert f"--plot {path}: no directory" in proc.stderr
    assert proc.stdout == ""


# A rich table row: | backend | mode | items/s | p50 ms | p99 ms | speed-up |
_ROW = r"│ {backend} +│ {mode} +│ +[\d,]+ │ +\d+\.\d\d │ +\d+\.\d\d │ +{up} │"


def _check_table(out: str, title: str, backends: tuple[str, ...], batch_size: int = 64) -> None:
    assert title in out, out
    assert re.search(r"┃ backend ┃ mode +┃ items/s ┃ +p50 ms ┃ +p99 ms ┃ speed-up ┃", out), out
    for backend in backends:
        single = _ROW.format(backend=backend, mode="one call per item", up=r"1\.0x")
        batched = _ROW.format(backend=backend, mode=rf"batched \({batch_size}\)", up=r"\d+\.\dx")
        assert re.search(single, out), out
        assert re.search(batched, out), out
    assert "every caller got its own row: yes" in out, out


def test_display_rich_renders_the_progress_and_a_table() -> None:
    pytest.importorskip("rich")
    proc = _run("demo", "--quick", "--model", "mlp", "--display", "rich", COLUMNS="120")
    out = _check_ok(proc)
    assert "batched demo: 200 concurrent callers" in out.splitlines()[0], out
    for backend in ("asyncio", "trio"):
        for mode in ("one call per item", "batched"):
            assert re.search(rf"^{backend} +{mode} +━+ +200/200 +[\d,]+ items/s$", out, re.M), out
    _check_table(out, "batched demo: numpy MLP, 200 concurrent callers", ("asyncio", "trio"))
    assert "\x1b[" not in out  # piped: rich writes no escape sequences
    assert SINGLE.search(out) is None  # and none of the plain lines


def test_rich_display_on_a_terminal() -> None:
    """The rich display as a terminal gets it: a live display, then the table."""
    pytest.importorskip("rich")
    from rich.console import Console

    file = io.StringIO()
    display = demo.RichDisplay(Console(file=file, force_terminal=True, width=100))
    runs = [
        demo.Run(backend, mode, size, 1000)
        for backend in ("asyncio", "trio")
        for mode, size in (("one call per item", 1), ("batched", 64))
    ]
    display.begin("header line", runs)
    try:
        _finish(display, runs)
    finally:
        display.close()
    out = file.getvalue()
    assert "\x1b[" in out  # colour and cursor control: a terminal's rendering
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert plain.startswith("header line\n"), plain
    # The live display's last frame: every run done.
    assert re.search(r"^trio +batched +━+ +1,000/1,000 +4,000 items/s$", plain, re.M), plain
    _check_table(plain, "the title", ("asyncio", "trio"))
    rows = [
        r"│ asyncio +│ batched \(64\) +│ +4,000 │ +101\.00 │ +201\.00 │ +4\.0x │",
        r"│ trio +│ one call per item +│ +1,000 │ +102\.00 │ +202\.00 │ +1\.0x │",
    ]
    for row in rows:
        assert re.search(row, plain), plain


def _finish(display: demo.RichDisplay, runs: list[demo.Run]) -> None:
    """Each run done in turn, with made-up figures, then the end of the display."""
    results = []
    for k, run in enumerate(runs):
        run.done = run.total
        run.result = demo.Measurement(
            backend=run.backend,
            mode=run.mode,
            batch_size=run.batch_size,
            items=run.total,
            seconds=1.0 if run.batch_size == 1 else 0.25,
            batches=run.total // run.batch_size,
            avg_batch_size=run.batch_size,
            latency_p50_ms=100.0 + k,
            latency_p99_ms=200.0 + k,
        )
        results.append(run.result)
        display.run_finished(run)
    display.end("the title", results, same=True)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_display_is_rich_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    has_rich = importlib.util.find_spec("rich") is not None
    monkeypatch.setattr(sys, "stdout", _Terminal())
    expected = demo.RichDisplay if has_rich else demo.PlainDisplay
    assert isinstance(demo_display("auto"), expected)
    assert isinstance(demo_display("plain"), demo.PlainDisplay)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert isinstance(demo_display("auto"), demo.PlainDisplay)


def test_display_rich_without_rich_says_how_to_get_it() -> None:
    proc = _run("demo", "--quick", "--display", "rich", block="rich")
    assert proc.returncode == 1, proc.stderr
    assert "--display rich needs rich: pip install 'batched-anyio[demo]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_importing_batched_loads_no_optional_dependency() -> None:
    # Nor does setting up the demo's command line (its --help).
    code = (
        "import contextlib, io, sys, batched, batched.__main__\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    batched.__main__.main(['demo', '--help'])\n"
        "print(sorted(m for m in ('numpy', 'rich', 'matplotlib', 'torch') if m in sys.modules))\n"
    )
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
        (["demo", "--callers", "0"], "argument --callers: must be an int >= 1: '0'"),
        (["demo", "--batch-size", "x"], "argument --batch-size: must be an int >= 1: 'x'"),
        (["demo", "--timeout-ms", "nan"], "argument --timeout-ms: must be a finite number"),
        (["demo", "--timeout-ms", "-1"], "argument --timeout-ms: must be a finite number"),
        (["demo", "--backend", "curio"], "argument --backend: invalid choice: 'curio'"),
        (["demo", "--model", "bert"], "argument --model: invalid choice: 'bert'"),
        (["demo", "--display", "fancy"], "argument --display: invalid choice: 'fancy'"),
        (["demo", "--plot"], "argument --plot: expected one argument"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_rejects_bad_arguments(args: list[str], message: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "usage: python -m batched" in proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stdout == ""
