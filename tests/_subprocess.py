"""Run Python in a subprocess against this checkout's ``batched``, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` from the repository root, stdin closed, output captured; ``env``
    added to the environment."""
    environ = dict(os.environ, **env)
    # Import this checkout's `batched`, installed or not.
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def check_exit_ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Its stdout, once it exited 0 (else fail, showing both streams)."""
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout
