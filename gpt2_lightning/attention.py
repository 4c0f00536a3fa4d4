"""The attention computation every variant shares, and its written-out reference.

Conventions (see docs/variants.md):
- Queries are the last T of the S key positions (the first S - T come from a KV cache), so query i sits at
  key position S - T + i and, causally, sees keys up to and including that position.
- Sliding window w (Mistral / transformers convention): the query at position t sees keys t-w+1 … t, its own
  position included, i.e. w keys. w >= S is full causal attention.
- Grouped-query attention: with n_kv key/value heads and n_head query heads, query head i reads key/value
  head i // (n_head // n_kv) — `F.scaled_dot_product_attention(..., enable_gqa=True)`; a decode step (one query)
  instead folds each group's query heads into the query dimension of one attention per key/value head, because
  CPU SDPA's `enable_gqa` expands K and V to every query head (MQA decode read 12× its cache; issue 23, item 5).
- Kernels: full causal attention is SDPA's (flash / memory-efficient on a GPU). A sliding window is
  FlexAttention with a block mask on a CUDA GPU (compiled kernels that skip the blocks outside the band; an
  explicit mask would keep SDPA off its flash kernels), and the eager banded kernel on CPUs, where
  FlexAttention needs a compile and measured no faster (docs/performance.md).

Shapes: q (B, nh, T, hs); k, v (B, nkv, S, hs); output (B, nh, T, hs).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

# Sequences at least this many windows long use the banded kernel; shorter ones a dense (T, S) mask, which
# costs O(T·S) but has no blocking overhead. Chosen from benchmarks/bench_attention.py (docs/performance.md).
BANDED_MIN_WINDOWS = 2


@functools.lru_cache(maxsize=32)
def visible_mask(T: int, S: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(T, S) bool: may query i (at key position S - T + i) attend to key j?"""
    mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
    if window is not None:
        mask = mask.triu(diagonal=S - T - window + 1)
    return mask


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal (optionally sliding-window, optionally grouped-query) attention; picks the cheapest exact kernel."""
    T, S = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window is not None and window < S:  # some key lies outside some query's window
        if q.device.type == "cuda" and T > 1 and dropout_p == 0.0:  # (FlexAttention has no dropout)
            return flex_window_attention(q, k, v, window)
        if T >= BANDED_MIN_WINDOWS * window:
            return banded_attention(q, k, v, window, dropout_p)
        mask = visible_mask(T, S, window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    if T == 1:  # one new token sees every cached position: no mask needed
        if gqa:  # each group's query heads as the rows of one attention: K and V are read once, never expanded
            B, H, _, hs = q.shape
            rows = q.view(B, k.size(1), H // k.size(1), hs)  # (B, nkv, heads per group, hs)
            return F.scaled_dot_product_attention(rows, k, v, dropout_p=dropout_p).view(B, H, 1, hs)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    mask = visible_mask(T, S, None, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


@functools.lru_cache(maxsize=32)
def _band_block_mask(
    n_blocks: int, block: int, window: int, first_key: int, left_pad: int, device: torch.device
) -> torch.Tensor:
    """(n_blocks, 1, block, block + window - 1) bool mask of `banded_attention`'s key blocks."""
    i = torch.arange(block, device=device)[:, None]  # query within its block
    j = torch.arange(block + window - 1, device=device)[None, :]  # key within the block's key span
    band = (j >= i) & (j <= i + window - 1)  # (block, Kw): the query's own key sits at j = i + window - 1
    key_index = first_key + block * torch.arange(n_blocks, device=device)[:, None] + j  # (n_blocks, Kw)
    real = key_index >= left_pad  # left padding is never attended to
    return (band[None] & real[:, None, :])[:, None]  # (n_blocks, 1, block, Kw)


def banded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dropout_p: float = 0.0, block: int | None = None
) -> torch.Tensor:
    """Sliding-window attention in O(T·w): queries in blocks of `block`, each against only its key span.

    Block b of queries needs the `block + window - 1` keys ending at its last query; the spans overlap and are
    cut from K and V with `unfold`. Work and memory are T·(block + window - 1) instead of T·S. The default
    block, window // 4 (at least 16), measured fastest on CPU (benchmarks/bench_attention.py --blocks).
    """
    B, H, T, hs = q.shape
    Hk, S = k.size(1), k.size(2)
    block = block or max(16, window // 4)
    n_blocks = math.ceil(T / block)
    right_pad = n_blocks * block - T  # fill the last block
    left_pad = max(0, window - 1 - (S - T))  # give the first query window - 1 predecessors (masked when padding)
    first_key = S - T + left_pad - (window - 1)  # padded index of block 0's first key
    span = block + window - 1

    def key_blocks(x: torch.Tensor) -> torch.Tensor:  # (B, Hk, S, hs) → (B·n_blocks, Hk, span, hs)
        x = F.pad(x, (0, 0, left_pad, right_pad))[:, :, first_key:]
        x = x.unfold(2, span, block)  # (B, Hk, n_blocks, hs, span), a view
        return x.permute(0, 2, 1, 4, 3).reshape(B * n_blocks, Hk, span, hs)

    qb = F.pad(q, (0, 0, 0, right_pad)).view(B, H, n_blocks, block, hs).transpose(1, 2)
    qb = qb.reshape(B * n_blocks, H, block, hs)
    mask = _band_block_mask(n_blocks, block, window, first_key, left_pad, q.device).repeat(B, 1, 1, 1)
    y = F.scaled_dot_product_attention(
        qb, key_blocks(k), key_blocks(v), attn_mask=mask, dropout_p=dropout_p, enable_gqa=H != Hk
    )  # (B·n_blocks, H, block, hs)
    return y.view(B, n_blocks, H, block, hs).transpose(1, 2).reshape(B, H, n_blocks * block, hs)[:, :, :T]


@functools.lru_cache(maxsize=32)
def _window_block_mask(T: int, S: int, window: int, device: torch.device) -> BlockMask:
    """FlexAttention's block mask for queries at key positions S - T … S - 1 under a causal window of `window`."""
    offset = S - T

    def visible(b, h, q_idx, kv_idx):
        position = q_idx + offset
        return (kv_idx <= position) & (kv_idx > position - window)

    return create_block_mask(visible, B=None, H=None, Q_LEN=T, KV_LEN=S, device=device)


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def flex_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Sliding-window attention through compiled FlexAttention: work O(T·w) in blocks, the masked ones skipped.

    The kernel for CUDA GPUs; it also runs (compiled) on CPUs, which is how the tests check it everywhere.
    """
    block_mask = _window_block_mask(q.size(2), k.size(2), window, q.device)
    return _compiled_flex_attention()(q, k, v, block_mask=block_mask, enable_gqa=q.size(1) != k.size(1))


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """The same computation as `attention` (no dropout), written out: softmax(q kᵀ / √hs + mask) v."""
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    scores = scores.masked_fill(~visible_mask(q.size(2), k.size(2), window, q.device), float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, nh, T, hs)
