"""A token-streaming TCP service over ``batched.Continuous``: greedy decoding of a GRU.

Run it with ``python examples/token_streaming.py`` (needs torch; CPU is enough). A tiny
character-level GRU with seeded random weights stands in for a language model. Each
connection sends a prompt line; the service streams the generated characters back as
they are decoded, then a newline. All open requests share one decoding loop:

- ``step(states)`` decodes one token for every active request at once. A request's
  first state is its prompt: that step runs its prefill (the prompt through the GRU),
  then the batched decode, so new requests join running ones between tokens.
- A request ends with ``batched.Last`` at the end-of-text token or after
  ``MAX_NEW`` tokens; a client that hangs up leaves before the next step.
- ``step`` is a plain function: it runs in a worker thread, off the event loop.

The script serves on a free loopback port on asyncio and then on trio, sends 12
concurrent prompts, checks every stream against decoding that prompt alone, hangs one
client up early, and prints what it saw.
"""

from __future__ import annotations

import string
from typing import Any

import anyio
import anyio.abc
import torch

import batched

VOCAB = string.ascii_lowercase + " ."  # "." ends the text
EOS = VOCAB.index(".")
HIDDEN = 64
MAX_NEW = 40
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far"]
PROMPTS = [f"prompt {word}" for word in WORDS]


class TinyGRU(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(len(VOCAB), HIDDEN)
        self.cell = torch.nn.GRUCell(HIDDEN, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, len(VOCAB))
        self.double().eval()

    def prefill(self, prompt: str) -> torch.Tensor:
        hidden = torch.zeros(1, HIDDEN, dtype=torch.float64)
        for char in prompt:
            hidden = self.cell(self.embed(torch.tensor([VOCAB.index(char)])), hidden)
        return hidden[0]

    def decode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One greedy token per row of ``hidden``; the next hidden states."""
        tokens = self.head(hidden).argmax(dim=1)
        return tokens, self.cell(self.embed(tokens), hidden)


MODEL = TinyGRU()


@torch.no_grad()
def step(states: list[Any]) -> list[Any]:
    """One decoding step for every active request. A state is its prompt (first step),
    then ``(hidden, tokens generated)``."""
    hidden, counts = [], []
    for state in states:
        if isinstance(state, str):  # joined this step: prefill
            hidden.append(MODEL.prefill(state))
            counts.append(0)
        else:
            hidden.append(state[0])
            counts.append(state[1])
    tokens, following = MODEL.decode(torch.stack(hidden))
    outcomes: list[Any] = []
    for token, after, count in zip(tokens.tolist(), following, counts, strict=True):
        char = VOCAB[token]
        if token == EOS or count + 1 >= MAX_NEW:
            outcomes.append(batched.Last(char))
        else:
            outcomes.append(batched.Next(char, (after, count + 1)))
    return outcomes


def decode_alone(prompt: str) -> str:
    """The same greedy decoding for one prompt, unbatched: what each stream must match."""
    text = ""
    with torch.no_grad():
        hidden = MODEL.prefill(prompt)[None]
        for _ in range(MAX_NEW):
            token_tensor, hidden = MODEL.decode(hidden)
            token = int(token_tensor[0])
            text += VOCAB[token]
            if token == EOS:
                break
    return text


async def handle(
    c: batched.Continuous[Any, str], conn: anyio.abc.SocketStream, hung_up: anyio.Event
) -> None:
    async with conn:
        prompt = (await conn.receive()).decode().strip()
        try:
            async with c.stream(prompt) as tokens:
                async for char in tokens:
                    await conn.send(char.encode())
                await conn.send(b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            hung_up.set()  # the client left; leaving `async with` dropped its request


async def ask(port: int, prompt: str, hang_up_after: int | None = None) -> str:
    async with await anyio.connect_tcp("127.0.0.1", port) as conn:
        await conn.send(prompt.encode() + b"\n")
        text = b""
        while not text.endswith(b"\n"):
            text += await conn.receive()
            if hang_up_after is not None and len(text) >= hang_up_after:
                break
        return text.decode().rstrip("\n")


async def main() -> None:
    c: batched.Continuous[Any, str] = batched.Continuous(step, batch_size=8, timeout_ms=2)
    answers: dict[str, str] = {}
    hung_up_seen = anyio.Event()
    async with c, await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as server:
            server.start_soon(listener.serve, lambda conn: handle(c, conn, hung_up_seen))

            async def one(prompt: str) -> None:
                answers[prompt] = await ask(port, prompt)

            async with anyio.create_task_group() as clients:
                for prompt in PROMPTS:
                    clients.start_soon(one, prompt)
            hung_up = await ask(port, "prompt hang up", hang_up_after=3)
            with anyio.fail_after(10):
                await hung_up_seen.wait()
            server.cancel_scope.cancel()
    stats = c.stats
    ok = all(answers[p] == decode_alone(p) for p in PROMPTS)
    print(
        f"{len(PROMPTS)} clients streamed their tokens;"
        f" each matches decoding alone: {'yes' if ok else 'NO'}"
    )
    print(
        f"a client that hung up after {len(hung_up)} tokens:"
        f" its request left (cancelled={stats.cancelled})"
    )
    print(
        f"steps: {stats.total_batches}, mean requests per step: {stats.avg_batch_size:.1f}"
        f" (batch_size=8), completed={stats.completed}"
    )
    print(f"e.g. {PROMPTS[0]!r} -> {answers[PROMPTS[0]]!r}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        print(f"--- {backend} ---")
        anyio.run(main, backend=backend)
