"""Section 1, size and compute at GPT-2 small's shape: parameters, FLOPs by formula and as counted, KV-cache bytes,
for every combination of position encoding, key/value heads and window."""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch.utils.flop_counter import FlopCounterMode

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.generate import KVCache
from gpt2_lightning.model import GPT

LENGTHS = (1024, 8192)


def counted_flops_per_token(config: GPTConfig, T: int) -> float:
    """Forward FLOPs per token that FlopCounterMode counts, on the meta device (no compute)."""
    config = dataclasses.replace(config, block_size=max(config.block_size, T))  # position table only: no FLOPs
    with torch.device("meta"):
        model = GPT(config)
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, T, dtype=torch.long))
    return counter.get_total_flops() / T


def measure() -> list[dict]:
    """One row per variant: its fields, parameters (all and attention's), FLOPs per token by formula and counted at
    each of LENGTHS, and KV-cache bytes per token in fp16."""
    rows = []
    for pos, kv, window in itertools.product(["learned", "rope"], [None, 4, 2, 1], [None, 256, 1024]):
        config = GPTConfig(pos_encoding=pos, n_kv_head=kv, sliding_window=window)
        with torch.device("meta"):
            model = GPT(config)
        rows.append({
            "pos": pos, "kv": kv, "window": window, "params": model.num_params(),
            "attention_params": sum(p.numel() for n, p in model.named_parameters() if ".attn." in n),
            "formula_flops": {str(T): model.flops_per_token(T) for T in LENGTHS},
            "counted_flops": {str(T): counted_flops_per_token(config, T) for T in LENGTHS},
            "kv_bytes_per_token": 2 * config.n_layer * config.kv_heads * config.head_dim * 2,  # K and V, fp16
        })
    return rows


KV_CONTEXTS = (8192, 32768, 131072)
KV_BATCHES = (1, 32)
KV_VARIANTS = {  # the 124M shape's KV cache: heads and windows, hybrids included
    "MHA": {}, "GQA-4": {"n_kv_head": 4}, "GQA-2": {"n_kv_head": 2}, "MQA": {"n_kv_head": 1},
    "window 1024": {"sliding_window": 1024},
    "hybrid 3:1, w 1024": {"sliding_window": [1024, 1024, 1024, None]},
    "hybrid 5:1, w 1024": {"sliding_window": [1024] * 5 + [None]},
    "GQA-4 + hybrid 3:1": {"n_kv_head": 4, "sliding_window": [1024, 1024, 1024, None]},
}


def kv_memory(checked_context: int = 1500) -> list[dict]:
    """KV-cache GiB of each variant at KV_CONTEXTS × KV_BATCHES in bf16, by `GPTConfig.kv_cache_bytes`, and whether
    that formula equals the bytes a real `KVCache` allocates (checked at `checked_context`, batch 1, float32)."""
    rows = []
    for name, fields in KV_VARIANTS.items():
        config = GPTConfig(pos_encoding="rope", **fields)
        allocated = KVCache(config.n_layer, 1, config.kv_heads, config.head_dim, checked_context,
                            config.layer_windows, "cpu", torch.float32).nbytes
        gib = {f"{t}x{b}": config.kv_cache_bytes(t, b) / 2**30 for t in KV_CONTEXTS for b in KV_BATCHES}
        rows.append({"name": name, "gib": gib,
                     "formula_equals_allocated": allocated == config.kv_cache_bytes(checked_context, 1, 4)})
    return rows


def judge(rows: list[dict]) -> bool:
    """Whether every count matches what each mechanism should remove, derived independently: GQA drops
    2·L·(C+1)·(C − n_kv·head_dim) key/value weights and biases, RoPE the T_max·C position table, and a window's
    counted attention FLOPs at T = 8k fall below full attention's. Exact arithmetic: no statistics."""
    params = {(r["pos"], r["kv"], r["window"]): r["params"] for r in rows}
    flops8k = {(r["pos"], r["kv"], r["window"]): r["counted_flops"]["8192"] for r in rows}
    base = GPTConfig()
    L_, C, hd = base.n_layer, base.n_embd, base.head_dim
    return (all(params["learned", None, None] - params["learned", kv, None] == 2 * L_ * (C + 1) * (C - kv * hd)
                for kv in (4, 2, 1))
            and params["learned", None, None] - params["rope", None, None] == base.block_size * C
            and all(flops8k[pos, kv, w] < flops8k[pos, kv, None] for pos, kv, w in flops8k if w is not None))
