"""``python -m batched demo [options]``: see ``python -m batched demo --help``."""

from __future__ import annotations

import argparse

from . import _demo


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m batched")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="measure a model served to many callers one call per item, then batched",
        description="Serve an embedded model (a torch transformer encoder when torch is "
        "installed, else a numpy MLP) to many concurrent callers, first one call per item, "
        "then batched, on each event loop; show the throughput, the latency per caller "
        "(p50, p99) and the speed-up.",
    )
    _demo.add_arguments(demo)
    args = parser.parse_args(argv)
    return _demo.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
