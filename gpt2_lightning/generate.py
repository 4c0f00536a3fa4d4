"""Decoding: the KV cache, sampling settings, `generate` / `generate_stream`, and the CPU decode swaps.

The model (`gpt2_lightning.model`) is the reference computation; everything that exists only to produce text
fast lives here, as nanochat's engine.py sits beside its gpt.py:

- `KVCache`: every layer's keys and values, preallocated; a rolling buffer of w slots for a layer with a
  sliding window w, a slot per position for a global one.
- `Sampling`: temperature, top-k, top-p, the end-of-text id and the random generator, checked once.
- `generate` / `generate_stream`: a prefill of the prompt, then one token per step through the same
  `GPT.forward` training uses, optionally compiled (`compile=True`).
- `decoding_swaps`: for the length of one decode, each `nn.Linear` of the model runs as a matrix-vector
  product that is fast on CPUs (below); the model is plain `nn.Linear` again afterwards, with no second copy
  of its head. The speed-ups are measured in docs/performance.md.

Bad settings and prompts raise `UsageError` (the model's own checks, `ValueError`, are turned into it before
decoding starts).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.errors import UsageError
from gpt2_lightning.model import GPT


class KVCache:
    """Keys and values of every layer, preallocated so decoding never reallocates.

    Layer l keeps `k[l]` and `v[l]` of shape (B, nkv, slots[l], hs): only the key/value heads are stored, so a GQA
    cache is n_kv_head / n_head the size of MHA's. A layer without a window has a slot per position (`max_len`).
    A layer with a sliding window w < max_len keeps a rolling buffer of w slots — position p lives in slot p % w —
    so its memory stays bounded however long the text gets; a local:global hybrid pays full length only for its
    global layers. A cache that would not fit in the free memory of its device is refused before any allocation.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        window: int | list[int | None] | None = None,
        device=None,
        dtype=None,
    ) -> None:
        windows = window if isinstance(window, list) else [window] * n_layer  # one per layer
        self.slots = [min(w, max_len) if w is not None else max_len for w in windows]
        device, dtype = torch.device(device or "cpu"), dtype or torch.get_default_dtype()
        need = 2 * batch_size * n_kv_head * head_dim * sum(self.slots) * dtype.itemsize  # checked before allocating
        if need > (free := _free_memory(device)):
            raise UsageError(f"the KV cache for {batch_size} × {max_len:,} positions needs {need / 2**30:,.1f} GiB, "
                             f"more than the {free / 2**30:,.1f} GiB free on {device}; ask for fewer tokens")
        self.k = [torch.zeros(batch_size, n_kv_head, n, head_dim, device=device, dtype=dtype) for n in self.slots]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.max_len = max_len
        self.pos = 0  # positions [0, pos) have been written; `update` advances it at the last layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nkv, T, hs) new keys/values at positions [pos, pos+T) and return what attention needs.

        Returned (B, nkv, S, hs): the new positions last, preceded by the cached ones a query may still see.
        The one exception, a single new token in a rolling buffer, returns the buffer in slot order: it
        sees every slot, and attention does not depend on the order of the keys.
        """
        start, T = self.pos, k.size(2)
        end = start + T
        if end > self.max_len:
            raise ValueError(f"KVCache holds {self.max_len} positions; writing up to position {end} overflows it")
        keys, values = self._write(layer, k, v, start, end)
        if layer == len(self.k) - 1:  # every layer has the new positions: the sequence moves on
            self.pos = end
        return keys, values

    def _write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T, slots = end - start, self.slots[layer]
        k_layer, v_layer = self.k[layer], self.v[layer]  # (B, nkv, slots, hs)
        if slots == self.max_len:  # a slot per position: positions are slots
            k_layer[:, :, start:end], v_layer[:, :, start:end] = k, v
            return k_layer[:, :, :end], v_layer[:, :, :end]
        # Tensor indices, not Python ints, so that a compiled decoding step serves every position (an int slot
        # would specialize the graph to it: a recompile per step until torch.compile gives up).
        kept = min(T, slots)  # only the last `slots` new positions can still be seen later
        written = torch.arange(end - kept, end, device=k.device) % slots
        if T == 1:  # the new token sees every filled slot, in slot order: attention does not depend on key order
            k_layer[:, :, written], v_layer[:, :, written] = k, v
            filled = min(end, slots)
            return k_layer[:, :, :filled], v_layer[:, :, :filled]
        previous = torch.arange(start - min(start, slots), start, device=k.device) % slots
        keys = torch.cat([k_layer[:, :, previous], k], dim=2)  # (B, nkv, S, hs) in position order
        values = torch.cat([v_layer[:, :, previous], v], dim=2)
        k_layer[:, :, written], v_layer[:, :, written] = k[:, :, -kept:], v[:, :, -kept:]
        return keys, values

    def repeat_batch(self, n: int) -> None:
        """Repeat every cached sequence n times along the batch: a prefix run once, continued in n rows."""
        self.k = [k.repeat(n, 1, 1, 1) for k in self.k]
        self.v = [v.repeat(n, 1, 1, 1) for v in self.v]

    @classmethod
    def for_model(cls, model: GPT, batch_size: int, max_len: int) -> KVCache:
        """An empty cache for `max_len` positions of `model`, on its device and in its dtype."""
        c, weight = model.config, model.transformer.wte.weight
        return cls(c.n_layer, batch_size, c.kv_heads, c.head_dim, max_len, c.layer_windows, weight.device,
                   weight.dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k, *self.v))


def _free_memory(device: torch.device) -> int:
    """Bytes a new allocation can take on `device`: free accelerator memory, or this host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux: the total, as the operating system reports it
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def scale_rope_for_inference(model: GPT, scaling: str | None, factor: float = 1.0) -> GPT:
    """`generate`'s and `evaluate`'s --rope_scaling: `GPT.scale_rope` when asked for, its refusal (learned positions,
    a factor below 1) said as a setting to change."""
    if scaling is not None:
        try:
            model.scale_rope(scaling, factor)
        except ValueError as err:
            raise UsageError(f"--rope_scaling {scaling}: {err}") from err
    return model


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from a row of logits.

    Args:
        temperature: 0 is greedy decoding (argmax); otherwise logits are divided by it before sampling.
        top_k: sample among the k most likely tokens only.
        top_p: sample among the smallest set of most likely tokens whose probability reaches p (nucleus).
        eos_token_id: a row that emits it is padded with it from then on; decoding stops once every row has.
        generator: the random generator sampling draws from (None: torch's global one).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: int | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature must be a number >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next_token(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Pick one token per row of (B, V) logits → (B,): greedy at temperature 0, else sampled after top-k / top-p."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if not torch.isfinite(logits).all():
        raise UsageError(
            f"temperature {sampling.temperature:g} is so small that logits / temperature overflow float32; use 0 "
            "for greedy decoding, or a temperature >= 1e-3"
        )
    if sampling.top_k is not None:
        kth = torch.topk(logits, min(sampling.top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=sampling.generator).squeeze(1)


DEFAULT_SAMPLING = Sampling()  # temperature 1, no top-k / top-p, no end-of-text, torch's global generator


@torch.inference_mode()
def generate(model: GPT, input_ids: torch.Tensor, max_new_tokens: int, sampling: Sampling = DEFAULT_SAMPLING,
             compile: bool = False) -> torch.Tensor:
    """Continue (B, T) prompts by up to `max_new_tokens` tokens → (B, T + new).

    Once a row emits `sampling.eos_token_id` it is padded with it, and decoding stops early when every row has.
    Dropout follows the model's mode: call `.eval()` to sample. compile=True runs each one-token step through
    `torch.compile` (the same forward) after a first compile of tens of seconds, so it pays on long outputs
    (speed: docs/performance.md).
    """
    new_tokens = list(generate_stream(model, input_ids, max_new_tokens, sampling, compile))
    return torch.cat([input_ids, *(t[:, None] for t in new_tokens)], dim=1)


@torch.inference_mode()
def generate_stream(model: GPT, input_ids: torch.Tensor, max_new_tokens: int, sampling: Sampling = DEFAULT_SAMPLING,
                    compile: bool = False) -> Iterator[torch.Tensor]:
    """`generate`, one (B,) tensor of new tokens at a time, for printing text as it is produced.

    The prompt is run once (prefill) into a preallocated KV cache; each later step feeds one token, through
    the compiled forward when `compile` (the prefill stays eager: one graph serves every prompt length).
    """
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise UsageError(f"input_ids must have shape (batch, time) with time >= 1, got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise UsageError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, T = input_ids.shape
    try:  # the model's own checks, before any work: the ids fit its vocabulary, the text its positions
        model.check_token_ids(input_ids)
        model.check_length(T + max_new_tokens)
    except ValueError as err:
        raise UsageError(str(err)) from err
    cache = KVCache.for_model(model, B, T + max_new_tokens)
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    eos = sampling.eos_token_id
    x = input_ids
    with decoding_swaps(model):
        for i in range(max_new_tokens):
            if compile and i:
                logits = _compiled_forward()(model, x, cache, last_only=True)[:, -1]  # (B, V)
            else:
                logits = model(x, cache, last_only=True)[:, -1]
            token = sample_next_token(logits, sampling)  # (B,)
            if eos is not None:
                token = token.masked_fill(finished, eos)
                finished |= token == eos
            yield token
            if eos is not None and bool(finished.all()):
                return
            x = token[:, None]


@functools.cache
def _compiled_forward():
    """`GPT.forward` through `torch.compile`, made once: its graphs serve every model of the same shapes."""
    return torch.compile(GPT.forward)


FEW_ROWS = 8  # at most this many rows per call count as decoding (batch × new positions)


class _DecodeLinear(nn.Linear):
    """nn.Linear that, compiled on a CPU for a few rows, multiplies as a reduction.

    At batch 1 a decode step reads every weight once, and inductor compiles `(x · W).sum(-1)` over the (N, K)
    weight into one vectorized loop that reads it faster than `F.linear`'s matrix-vector call. Eagerly, and for
    more rows, it is `F.linear`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() <= FEW_ROWS * x.size(-1):
            y = (x.unsqueeze(-2) * self.weight).sum(-1)  # (..., 1, K) · (N, K) → (..., N)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class _DecodeHead(_DecodeLinear):
    """The LM head while decoding: eagerly on a CPU, a few rows read a contiguous (C, V) copy of the tied (V, C)
    weight, which the CPU kernel reads faster than the tied layout; compiled, it is `_DecodeLinear`."""

    transposed: torch.Tensor  # (C, V), made when the swap begins, dropped when it ends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and x.numel() <= FEW_ROWS * x.size(-1):
            return x @ self.transposed
        return super().forward(x)


@contextmanager
def decoding_swaps(model: GPT) -> Iterator[GPT]:
    """For the duration of the block, decode through `_DecodeLinear` / `_DecodeHead` on a CPU model.

    Only the classes change (same parameters, same state-dict keys), and they change back on exit, so the model
    stays the reference model everywhere else. Other devices and quantized layers (not `nn.Linear`) are left as
    they are.
    """
    if model.transformer.wte.weight.device.type != "cpu":
        yield model
        return
    swapped = [m for m in model.modules() if type(m) is nn.Linear]
    try:
        for module in swapped:
            module.__class__ = _DecodeHead if module is model.lm_head else _DecodeLinear
            if module is model.lm_head:
                module.transposed = module.weight.detach().t().contiguous()
        yield model
    finally:
        for module in swapped:
            module.__class__ = nn.Linear
            module.__dict__.pop("transposed", None)
