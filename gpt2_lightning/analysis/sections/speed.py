"""Section 2, speed and memory on this machine: attention forward time and peak memory against T (each point in a
fresh process), and batch-1 decode speed and KV-cache size against context at the 124M shape."""

from __future__ import annotations

import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.measure import attention_point, decode_tokens_per_sec
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

ATTENTION_KINDS = ("full causal", "window 256", "window 256, dense mask")
DECODE_VARIANTS = {"MHA": {}, "GQA-4": {"n_kv_head": 4}, "GQA-2": {"n_kv_head": 2}, "MQA": {"n_kv_head": 1},
                   "MHA + window 1024": {"sliding_window": 1024}}


def attention_scaling(budget: Budget) -> dict:
    """{str(T): {kind: {"ms", "peak_mb"}}} over the budget's lengths and ATTENTION_KINDS."""
    return {str(T): {kind: attention_point(T, kind) for kind in ATTENTION_KINDS} for T in budget.attention_lengths}


def decode_speed(budget: Budget) -> dict:
    """{variant: {str(context): {"tokens_per_sec", "cache_mib"}}}, 124M shape, RoPE (contexts past 1024 exist)."""
    found = {}
    for name, fields in DECODE_VARIANTS.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(pos_encoding="rope", **fields)).eval()
        found[name] = {}
        for context in budget.decode_contexts:
            speed, nbytes = decode_tokens_per_sec(model, context)
            found[name][str(context)] = {"tokens_per_sec": speed, "cache_mib": nbytes / 2**20}
    return found


def window_speedup(points: dict) -> tuple[int, float]:
    """(the longest T, full causal attention's time over the window-256 kernel's there)."""
    longest = max(points, key=int)
    return int(longest), points[longest]["full causal"]["ms"] / points[longest]["window 256"]["ms"]
