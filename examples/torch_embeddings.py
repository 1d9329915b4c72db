"""Batched model inference: a small PyTorch text encoder behind ``batched.inference``.

Run it with ``python examples/torch_embeddings.py`` (needs torch). The encoder is an
``nn.Embedding`` and a two-layer ``nn.TransformerEncoder`` with seeded random weights (no
download); texts are tokenized as their bytes. Each caller sends one text's
``input_ids`` and ``attention_mask`` shaped ``(1, length)``; the decorated ``embed`` pads
the waiting texts to their longest, runs the model once per batch, and hands each caller
its own mean-pooled embedding. The attention mask keeps padding out of both attention
(``src_key_padding_mask``) and pooling, so a text's embedding does not depend on its
batch-mates: the example checks it against the unbatched embedding of every text.

``ByLength()`` batches texts of similar length together, which wastes less compute on
padding; ``max_batch_length`` caps a batch's padded size (longest text x texts).
"""

from __future__ import annotations

import gc
import random
import string
import time
from typing import Any

import anyio
import torch
from torch import nn

import batched
import batched.inference

D_MODEL = 64
# The longest text, in bytes. Any length works (the position table is this long): a batch
# padded to D_MODEL bytes, the size of the pooled output's axis 1, still gives whole
# embeddings, since batched.inference cuts back only the outputs named in
# ``sequence_outputs`` (none here: the model pools inside). 60 keeps the workload of
# ``python -m benchmarks`` as it was; longer texts batch less well on one CPU thread.
MAX_LEN = 60
CALLERS = 256
ROUNDS = 3

torch.manual_seed(0)
torch.set_num_threads(1)  # stable timings: one core for both runs


class Encoder(nn.Module):
    """Token and position embeddings, two transformer layers, masked mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(257, D_MODEL, padding_idx=0)  # bytes + 1; 0 pads
        self.positions = nn.Embedding(MAX_LEN, D_MODEL)
        layer = nn.TransformerEncoderLayer(
            D_MODEL, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        hidden = self.encoder(x, src_key_padding_mask=~attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1)  # (batch, D_MODEL)


model = Encoder().eval()


def tokenize(text: str) -> dict[str, torch.Tensor]:
    """One text as a call's features: ``(1, length)`` ids (its bytes + 1) and mask."""
    ids = torch.tensor([[b + 1 for b in text.encode()]], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " "
    return ["".join(rng.choices(alphabet, k=rng.randint(4, MAX_LEN))) for _ in range(n)]


batch_sizes: list[int] = []


@batched.inference.dynamically(
    batch_size=32,
    timeout_ms=5,
    strategy=batched.ByLength(),
    max_batch_length=32 * 40,  # padded tokens per batch: longest text x texts
    spread_kwargs=True,
)
def embed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The model, called once per padded batch (in a worker thread of the serving loop)."""
    batch_sizes.append(len(input_ids))
    with torch.inference_mode():
        return model(input_ids, attention_mask)


def embed_one(text: str) -> torch.Tensor:
    """The unbatched embedding of one text: one model call for one item."""
    with torch.inference_mode():
        return model(**tokenize(text))[0]


async def embed_all(texts: list[str]) -> list[torch.Tensor]:
    """Every text from its own concurrent caller; each gets its (D_MODEL,) embedding."""
    results: list[Any] = [None] * len(texts)

    async def caller(i: int) -> None:
        results[i] = (await embed.acall(**tokenize(texts[i])))[0]

    async with anyio.create_task_group() as tg:
        for i in range(len(texts)):
            tg.start_soon(caller, i)
    return results


def main() -> None:
    texts = make_texts(CALLERS)
    with embed:
        anyio.run(embed_all, texts[:8])  # warm up both paths before timing
        for text in texts[:8]:
            embed_one(text)
        # torch's many objects make a full garbage collection take tens of ms: keep such
        # a pause out of either timing.
        gc.collect()
        gc.freeze()
        batched_s = single_s = float("inf")
        for _ in range(ROUNDS):  # the best of a few rounds: threads make timings noisy
            batch_sizes.clear()
            start = time.perf_counter()
            batched_out = anyio.run(embed_all, texts)
            batched_s = min(batched_s, time.perf_counter() - start)
            start = time.perf_counter()
            single_out = [embed_one(text) for text in texts]
            single_s = min(single_s, time.perf_counter() - start)

    for text, got, want in zip(texts, batched_out, single_out, strict=True):
        if got.shape != (D_MODEL,) or not torch.allclose(got, want, atol=1e-4):
            raise SystemExit(f"{text!r}: batched {got} != unbatched {want}")
    print(f"{CALLERS} callers: every embedding matches the unbatched one")
    mean = sum(batch_sizes) / len(batch_sizes)
    print(
        f"batched: {CALLERS / batched_s:,.0f} texts/s"
        f" ({len(batch_sizes)} batches, mean batch {mean:.1f})"
    )
    print(f"one call per item: {CALLERS / single_s:,.0f} texts/s")
    print(f"speed-up: {single_s / batched_s:.1f}x")


if __name__ == "__main__":
    main()
