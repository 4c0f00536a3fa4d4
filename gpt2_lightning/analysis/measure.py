"""Timing and memory: how long a call takes, how far it raises resident memory, one attention forward measured in a
fresh process, and batch-1 decode speed. The analysis's speed section measures with these, and so do
`benchmarks/bench_attention.py` and `benchmarks/bench_model.py` (one implementation of each measurement).

`python -m gpt2_lightning.analysis.measure T KIND [THREADS]` measures one attention forward in a fresh process
and prints JSON, so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gpt2_lightning.attention import attention, visible_mask
from gpt2_lightning.generate import KVCache
from gpt2_lightning.model import GPT

ATTENTION_KINDS = ["full causal", "window 256", "window 1024", "window 256, dense mask"]
N_HEAD, HEAD_DIM = 12, 64  # GPT-2 small's heads


def median_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of `fn` in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak_rss() -> None:
    """Start a new high-water mark, so that the peak measured is this call's, not the imports' (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak_rss_rise_mb(fn: Callable[[], object]) -> float:
    """How far this process's resident memory peaked above its level at the call while `fn()` ran, in MB."""
    _reset_peak_rss()
    before = _rss_mb()
    fn()
    return max(_peak_rss_mb() - before, 0.0)


def _attention_call(kind: str, q, k, v):
    if kind == "full causal":
        return lambda: attention(q, k, v)
    if kind.endswith("dense mask"):
        mask = visible_mask(q.size(2), k.size(2), int(kind.split()[1].rstrip(",")), q.device)
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return lambda: attention(q, k, v, window=int(kind.split()[1]))


def attention_point_here(T: int, kind: str) -> dict:
    """Median ms and peak MB (RSS rise above the inputs) of one (1, 12, T, 64) attention forward, this process."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, N_HEAD, T, HEAD_DIM) for _ in range(3))
    with torch.inference_mode():
        fn = _attention_call(kind, q, k, v)
        peak = peak_rss_rise_mb(fn)
        ms = median_ms(fn, repeats=3 if T <= 8192 else 1)
    return {"ms": ms, "peak_mb": peak}


def attention_point(T: int, kind: str, threads: int = 2) -> dict:
    """`attention_point_here` in a fresh subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "gpt2_lightning.analysis.measure", str(T), kind, str(threads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_tokens_per_sec(model: GPT, context: int, new_tokens: int = 16) -> tuple[float, int]:
    """Batch-1 decode speed after `context` cached positions, and the cache's bytes.

    The cache is filled with random keys and values: a decode step costs the same whatever they hold, and it
    spares a long prefill.
    """
    cache = KVCache.for_model(model, 1, context + new_tokens + 1)
    for layer in (*cache.k, *cache.v):  # (B, nkv, slots, hs) per layer
        layer.normal_()
    token = torch.zeros(1, 1, dtype=torch.long, device=cache.k[0].device)
    with torch.inference_mode():
        cache.pos = context
        model(token, cache)  # warm-up
        start = time.perf_counter()
        for _ in range(new_tokens):
            model(token, cache)
        elapsed = time.perf_counter() - start
    return new_tokens / elapsed, cache.nbytes


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    print(json.dumps(attention_point_here(int(sys.argv[1]), sys.argv[2])))
