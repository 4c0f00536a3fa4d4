"""What a local:global hybrid costs and saves at long context, against full attention and a uniform window.

Sections (all by default):
  decode  decode time per token against context (1k, 2k, 4k, 8k), batch 1, 124M shape (RoPE, fp32) for MHA,
          GQA-4, MQA, window 256 on every layer and the 3 local : 1 global hybrid (window 256, every fourth layer
          global) — the analysis's section 2 measurement (`speed.decode_speed`): mean of repeats ± 95% interval,
          the ratio to MHA, the ratio the bytes read allow ((weights + KV) / MHA's) and the cache's size; plus MQA
          through SDPA's `enable_gqa` (what decode used before issue 23, item 5) as the peer in the same run.
  train   a training step (forward + backward, batch 1) at T = 1k / 4k / 8k, 4 layers × 256 wide (4 heads of 64):
          full attention, window 256 and the hybrid.

Ratios are against full attention (MHA) measured in the same run. Usage:
    python benchmarks/bench_long_context.py [--sections decode train] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

import gpt2_lightning.model
from gpt2_lightning.analysis.measure import median_ms
from gpt2_lightning.analysis.report import decode_cells, table
from gpt2_lightning.analysis.sections.speed import decode_speed
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

PATTERNS = {"full attention": None, "window 256": 256, "hybrid 3:1, w 256": [256, 256, 256, None]}
CONTEXTS = [1024, 4096, 8192]


def train_section(repeats: int) -> None:
    print("\n## Training step (forward + backward), 4 layers × 256 (4 heads of 64), batch 1: median ms")
    print("| pattern | " + " | ".join(f"T = {c}" for c in CONTEXTS) + " |")
    print("|---|" + "---:|" * len(CONTEXTS))
    full = {}
    for name, window in PATTERNS.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=512, block_size=max(CONTEXTS), n_layer=4, n_head=4, n_embd=256,
                              pos_encoding="rope", sliding_window=window))
        cells = []
        for T in CONTEXTS:
            ids = torch.randint(0, 512, (1, T))

            def step() -> None:
                model.zero_grad(set_to_none=True)
                model.loss(ids, ids).backward()

            ms = median_ms(step, repeats)
            if window is None:
                full[T] = ms
            cells.append(f"{ms:,.0f} ms ({ms / full[T]:.2f}×)")
        print(f"| {name} | " + " | ".join(cells) + " |")


HEAD_CONTEXTS = (1024, 2048, 4096, 8192)


@contextlib.contextmanager
def expanded_decode():
    """Decode through SDPA's `enable_gqa` (K and V expanded to every query head on CPU): the peer."""
    def attend(q, k, v, window=None, dropout_p=0.0):
        if q.size(2) == 1:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.size(1) != k.size(1))
        return shared(q, k, v, window, dropout_p)
    shared = gpt2_lightning.model.attention
    gpt2_lightning.model.attention = attend
    try:
        yield
    finally:
        gpt2_lightning.model.attention = shared


def decode_section(repeats: int) -> None:
    """Decode time per token against context for every attention pattern, and the expanded-K/V peer."""
    print("\n## Decode per token against context, 124M shape (RoPE, fp32), batch 1: mean ms ± 95% interval "
          "(ratio to MHA; ratio the bytes allow), KV cache")
    found = decode_speed(HEAD_CONTEXTS, repeats)
    with expanded_decode():
        found["MQA via enable_gqa (before)"] = decode_speed(HEAD_CONTEXTS, repeats, {"MQA": {"n_kv_head": 1}})["MQA"]
    print(table(["variant"] + [f"context {c}" for c in HEAD_CONTEXTS], decode_cells(found)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["decode", "train"], choices=["decode", "train"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if "decode" in args.sections:
        decode_section(args.repeats)
    if "train" in args.sections:
        train_section(args.repeats)


if __name__ == "__main__":
    main()
