"""What sliding windows and grouped-query attention cost and save, measured on this machine.

Sections (all by default; decode time against context is benchmarks/bench_long_context.py's `heads`):
  forward  attention forward time and peak memory vs sequence length (GPT-2 small heads: 12 × 64, batch 1) for
           full causal SDPA, the banded sliding-window kernel (w = 256, 1024) and, as the naive way, SDPA with a
           dense (T, T) window mask. Each point runs in a fresh subprocess so its peak RSS is its own.
  blocks   the banded kernel's query-block size sweep behind its default.
  flex     FlexAttention with a sliding-window block mask under torch.compile, for comparison (compile cost too).

Usage: python benchmarks/bench_attention.py [--sections forward blocks flex] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from gpt2_lightning.analysis.measure import ATTENTION_KINDS as KINDS
from gpt2_lightning.analysis.measure import HEAD_DIM, N_HEAD, attention_point, median_ms
from gpt2_lightning.attention import attention, banded_attention

LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]


def forward_section(threads: int) -> None:
    results = {(T, kind): attention_point(T, kind, threads) for T in LENGTHS for kind in KINDS}
    print("\n## Attention forward (1 × 12 heads × 64), median ms | peak MB above inputs")
    print("| T | " + " | ".join(KINDS) + " | window 256 speed-up |")
    print("|---:|" + "---:|" * (len(KINDS) + 1))
    for T in LENGTHS:
        cells = [f"{results[T, kind]['ms']:.1f} ms, {results[T, kind]['peak_mb']:.0f} MB" for kind in KINDS]
        speedup = results[T, "full causal"]["ms"] / results[T, "window 256"]["ms"]
        print(f"| {T} | " + " | ".join(cells) + f" | {speedup:.1f}× |")
    print("\nGrowth from T to 2T (time ratio): 2.0 is linear, 4.0 quadratic")
    for kind in KINDS:
        ratios = [results[b, kind]["ms"] / results[a, kind]["ms"] for a, b in itertools.pairwise(LENGTHS)]
        print(f"- {kind}: " + ", ".join(f"{r:.1f}" for r in ratios))


def blocks_section() -> None:
    print("\n## Banded kernel: query block size (ms, 1 × 12 × T × 64)")
    print("| T, window | block 32 | block 64 | block 128 | block 256 | block = window |")
    print("|---|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for T, w in [(8192, 256), (8192, 1024), (4096, 64)]:
            q, k, v = (torch.randn(1, N_HEAD, T, HEAD_DIM) for _ in range(3))
            cells = [
                median_ms(lambda b=b, q=q, k=k, v=v, w=w: banded_attention(q, k, v, w, block=b))
                for b in (32, 64, 128, 256, w)
            ]
            print(f"| {T}, {w} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


def flex_section(T: int = 8192, window: int = 256) -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    q, k, v = (torch.randn(1, N_HEAD, T, HEAD_DIM) for _ in range(3))
    block_mask = create_block_mask(sliding_causal, None, None, T, T, device="cpu")
    compiled = torch.compile(flex_attention)
    with torch.inference_mode():
        start = time.perf_counter()
        out = compiled(q, k, v, block_mask=block_mask)
        first = time.perf_counter() - start
        flex_ms = median_ms(lambda: compiled(q, k, v, block_mask=block_mask))
        banded_ms = median_ms(lambda: attention(q, k, v, window=window))
        causal_ms = median_ms(lambda: attention(q, k, v))
        err = (out - attention(q, k, v, window=window)).abs().max().item()
    print(f"\n## FlexAttention (torch.compile) vs the eager banded kernel, T={T}, window {window}")
    print("| kernel | ms | first call |\n|---|---:|---:|")
    print(f"| FlexAttention + block mask, compiled | {flex_ms:.1f} | {first:.1f} s (compile) |")
    print(f"| banded SDPA, eager | {banded_ms:.1f} | no compile |")
    print(f"| full causal SDPA, eager | {causal_ms:.1f} | no compile |")
    print(f"max |flex - banded| = {err:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["forward", "blocks", "flex"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    sections = {"forward": lambda: forward_section(args.threads), "blocks": blocks_section, "flex": flex_section}
    for name in args.sections:
        sections[name]()


if __name__ == "__main__":
    main()
