"""Section 2, speed and memory on this machine: attention forward time and peak memory against T (each point in a
fresh process), and batch-1 decode time per token and KV-cache size against context at the 124M shape (also what
benchmarks/bench_long_context.py prints: one measurement, one source)."""

from __future__ import annotations

import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.measure import attention_point, decode_tokens_per_sec
from gpt2_lightning.analysis.statistics import mean_interval
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

ATTENTION_KINDS = ("full causal", "window 256", "window 256, dense mask")
DECODE_VARIANTS = {"MHA": {}, "GQA-4": {"n_kv_head": 4}, "GQA-2": {"n_kv_head": 2}, "MQA": {"n_kv_head": 1},
                   "window 256": {"sliding_window": 256},
                   "hybrid 3:1, w 256": {"sliding_window": [256, 256, 256, None]}}


def attention_scaling(budget: Budget) -> dict:
    """{str(T): {kind: {"ms", "peak_mb"}}} over the budget's lengths and ATTENTION_KINDS."""
    return {str(T): {kind: attention_point(T, kind) for kind in ATTENTION_KINDS} for T in budget.attention_lengths}


def decode_speed(contexts: tuple[int, ...], repeats: int, variants: dict[str, dict] = DECODE_VARIANTS) -> dict:
    """{variant: {str(context): {"ms", "ms_half", "cache_bytes", "weights_bytes"}}}: the mean time per decoded token
    over `repeats` (16 tokens each) and its 95% t-interval half-width (None with one repeat), 124M shape, RoPE (so
    contexts past 1024 exist), fp32, batch 1. A decoded token reads the weights and the cache: by those bytes a
    variant could take (weights + cache) / MHA's (weights + cache) of MHA's time."""
    found = {}
    for name, fields in variants.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(pos_encoding="rope", **fields)).eval()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        found[name] = {}
        for context in contexts:
            times, nbytes = [], 0
            for _ in range(repeats):
                speed, nbytes = decode_tokens_per_sec(model, context)
                times.append(1000 / speed)
            ms, half = mean_interval(times)
            found[name][str(context)] = {"ms": ms, "ms_half": half, "cache_bytes": nbytes, "weights_bytes": weights}
    return found


def window_speedup(points: dict) -> tuple[int, float]:
    """(the longest T, full causal attention's time over the window-256 kernel's there)."""
    longest = max(points, key=int)
    return int(longest), points[longest]["full causal"]["ms"] / points[longest]["window 256"]["ms"]
