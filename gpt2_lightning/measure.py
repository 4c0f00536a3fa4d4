"""Timing and memory measurements shared by `benchmarks/` and `gpt2-lightning analyze`.

`python -m gpt2_lightning.measure T KIND` measures one attention forward in a fresh process and prints JSON,
so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from gpt2_lightning.attention import attention, visible_mask
from gpt2_lightning.generate import KVCache
from gpt2_lightning.model import GPT

ATTENTION_KINDS = ["full causal", "window 256", "window 1024", "window 256, dense mask"]
N_HEAD, HEAD_DIM = 12, 64  # GPT-2 small's heads


def median_ms(fn, repeats: int = 3) -> float:
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


def peak_rss_rise_mb(fn) -> float:
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
        [sys.executable, "-m", "gpt2_lightning.measure", str(T), kind, str(threads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_tokens_per_sec(model: GPT, context: int, new_tokens: int = 16) -> tuple[float, int]:
    """Batch-1 decode speed after `context` cached positions, and the cache's bytes.

    The cache is filled with random keys and values: a decode step costs the same whatever they hold, and it
    spares a long prefill.
    """
    cache = KVCache.for_model(model, 1, context + new_tokens + 1)
    cache.k.normal_(), cache.v.normal_()
    token = torch.zeros(1, 1, dtype=torch.long, device=cache.k.device)
    with torch.inference_mode():
        cache.pos = context
        model(token, cache)  # warm-up
        start = time.perf_counter()
        for _ in range(new_tokens):
            model(token, cache)
        elapsed = time.perf_counter() - start
    return new_tokens / elapsed, cache.nbytes


def builtin_token_split(heldout_fraction: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """The builtin corpus as GPT-2 token ids: (training tokens, the held-out tail)."""
    from gpt2_lightning.corpus import builtin_documents
    from gpt2_lightning.tokenizer import get_tokenizer

    ids = torch.tensor(get_tokenizer().encode_ordinary("\n\n".join(builtin_documents())))
    cut = int(len(ids) * (1 - heldout_fraction))
    return ids[:cut], ids[cut:]


def train_briefly(config, tokens: torch.Tensor, steps: int, batch_size: int = 8, seed: int = 0) -> GPT:
    """A GPT of `config` trained for `steps` AdamW steps on random windows of `tokens`: weights with the structure
    of a trained model (peaked logits), for measuring what quantization changes. Returned in eval mode."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    T = config.block_size
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - T - 1, (batch_size,))
        window = torch.stack([tokens[s : s + T + 1] for s in starts.tolist()])  # (B, T + 1)
        model.loss(window[:, :-1], window[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@torch.inference_mode()
def heldout_quality(model: GPT, tokens: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mean next-token loss, (N,) greedy predictions) over `tokens` cut into block_size windows."""
    T = model.config.block_size
    n = (len(tokens) - 1) // T
    x, y = tokens[: n * T].view(n, T), tokens[1 : n * T + 1].view(n, T)
    logits = model(x).float()  # (n, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item(), logits.argmax(-1).flatten()


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    print(json.dumps(attention_point_here(int(sys.argv[1]), sys.argv[2])))
