"""Property: pulled batches keep their invariants whatever the consumers do."""

from __future__ import annotations

import pytest
from hypothesis import given

from batched.testing import PulledScript, check_pulled, pulled_scripts, run_pulled


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(script=pulled_scripts())
def test_pulled_batches_keep_their_invariants(backend: str, script: PulledScript) -> None:
    check_pulled(run_pulled(script, backend))
