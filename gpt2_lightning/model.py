"""GPT-2, written out by hand.

Single-device model code: no Lightning, no torch.distributed. Parameter names follow OpenAI's / transformers'
GPT-2 (`transformer.wte`, `transformer.h.N.attn.c_attn`, ...) so that loading the released checkpoints is a
transpose and nothing more (see `gpt2_lightning.checkpoints`).

One config and one attention module serve every variant: learned or rotary positions (`pos_encoding`),
multi-head / grouped-query / multi-query attention (`n_kv_head`), full or sliding-window attention
(`sliding_window`), in any combination. With the defaults the model is exactly GPT-2.

References: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners";
nanoGPT (https://github.com/karpathy/nanoGPT) for the layout; the variants in docs/variants.md.

Shape legend used in comments: B batch, T new positions, S cached + new positions, C n_embd,
nh n_head, nkv key/value heads, hs head size (C // nh), V vocab_size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.attention import KVCache, attention
from gpt2_lightning.checkpoints import load_state_dict_strict, read_pretrained
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import UsageError
from gpt2_lightning.lm_loss import chunked_cross_entropy
from gpt2_lightning.rope import apply_rope, rope_frequencies, rope_tables


class Linear(nn.Linear):
    """nn.Linear, except in compiled CPU decoding, where a few rows are multiplied as a reduction.

    At batch 1 a decode step reads every weight once, and inductor compiles `(x · W).sum(-1)` over the (N, K)
    weight into one vectorized loop that reads it at ~21 GB/s, where `F.linear` calls MKL's matrix-vector
    product at ~14 GB/s (docs/performance.md). Eagerly, and for more rows, it is `F.linear`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() <= 8 * x.size(-1):
            y = (x.unsqueeze(-2) * self.weight).sum(-1)  # (..., 1, K) · (N, K) → (..., N)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class CausalSelfAttention(nn.Module):
    """Causal self-attention for every variant: MHA/GQA/MQA, learned or rotary positions, full or windowed.

    `c_attn` projects to n_head query heads and n_kv key and value heads, [q | k | v] of widths
    (nh·hs, nkv·hs, nkv·hs): exactly GPT-2's fused 3C projection when nkv = nh.
    """

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.window = config.sliding_window
        self.layer_idx = layer_idx  # which slice of a KVCache belongs to this layer
        self.dropout = config.dropout
        qkv_width = (config.n_head + 2 * config.kv_heads) * config.head_dim
        self.c_attn = Linear(config.n_embd, qkv_width, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:  # rotate at absolute positions, before caching
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs)
        y = attention(q, k, v, self.window, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C → 4C → tanh-approximated GELU (as in GPT-2) → C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class LMHead(Linear):
    """The output projection (no bias), its (V, C) weight tied to the token embedding.

    Decoding a few rows on a CPU is bound by reading this weight, and the eager CPU kernel reads the tied (V, C)
    layout ~1.7× slower than a contiguous (C, V) copy (docs/performance.md). Under inference mode such eager
    calls read a copy made once per weight version — any training step, load or in-place edit makes a fresh
    one — at the cost of a second copy of the head in memory while the model decodes on a CPU. Compiled, the
    head reads the tied weight itself (`Linear`).
    """

    def __init__(self, n_embd: int, vocab_size: int) -> None:
        super().__init__(n_embd, vocab_size, bias=False)
        self._transposed: torch.Tensor | None = None  # (C, V), contiguous
        self._transposed_from: tuple[int, int] | None = None  # (data pointer, version) of the weight copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows = x.numel() // x.size(-1)
        if (not torch.compiler.is_compiling() and torch.is_inference_mode_enabled() and w.device.type == "cpu"
                and rows <= 8 and not hasattr(w, "to_local")):
            source = (w.data_ptr(), w._version)
            if self._transposed_from != source:
                self._transposed, self._transposed_from = w.detach().t().contiguous(), source
            return x @ self._transposed
        return super().forward(x)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token (+ learned position) embeddings, `n_layer` blocks, final LayerNorm, LM head tied to `wte`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        layers = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.pos_encoding == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:  # rope: no position table; q and k are rotated in every attention layer
            inv_freq = rope_frequencies(config.head_dim, config.rope_theta)
            self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
        layers.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = LMHead(config.n_embd, config.vocab_size)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream by 1/sqrt(2·n_layer),
        # so the residual's variance does not grow with depth (two such writes per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Number of parameters, the tied embedding / LM head counted once (as OpenAI counts them)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token for sequences of `seq_len` (2 per multiply-add; training is 3× this).

        2·(weights of every matmul, LM head included) + 4·n_layer·n_embd·S, where S is the mean number of keys a
        query reads: (T+1)/2 with full causal attention, min(t+1, w) averaged over positions with a window w.
        """
        c, T = self.config, seq_len
        per_layer = c.n_embd * (c.n_head + 2 * c.kv_heads) * c.head_dim + c.n_embd**2 + 8 * c.n_embd**2
        matmul_weights = c.n_layer * per_layer + c.vocab_size * c.n_embd
        w = c.sliding_window or T
        keys = (sum(range(1, min(w, T) + 1)) + max(T - w, 0) * w) / T  # mean of min(t + 1, w) over t < T
        return 2 * matmul_weights + 4 * c.n_layer * c.n_embd * keys

    def _check_length(self, length: int) -> None:
        """Learned positions stop at block_size; rotary positions run on (block_size is then the training length)."""
        if self.config.pos_encoding == "learned" and length > self.config.block_size:
            raise UsageError(
                f"a sequence of {length} tokens is longer than block_size={self.config.block_size}, the number "
                f"of learned positions this model has; use at most block_size tokens (prompt + new tokens), "
                f"or a pos_encoding='rope' model, which runs past block_size"
            )

    def make_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache for `max_len` positions, on the model's device and dtype (a rolling buffer if windowed)."""
        c, weight = self.config, self.transformer.wte.weight
        return KVCache(
            c.n_layer, batch_size, c.kv_heads, c.head_dim, max_len, c.sliding_window, weight.device, weight.dtype
        )

    def hidden_states(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids → (B, T, C) final-LayerNorm states. With a cache, the ids continue its sequence."""
        if input_ids.dim() != 2:
            raise UsageError(f"input_ids must have shape (batch, time), got {tuple(input_ids.shape)}")
        # (on an accelerator this check would sync; compiled decoding checked the prompt and makes its own ids)
        if input_ids.device.type == "cpu" and input_ids.numel() and not torch.compiler.is_compiling():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise UsageError(
                    f"token id {high if high >= self.config.vocab_size else low} is outside the model's vocabulary "
                    f"(0 … {self.config.vocab_size - 1}): the ids come from another tokenizer, or vocab_size is too "
                    "small for them"
                )
        start = kv_cache.pos if kv_cache is not None else 0
        T = input_ids.size(1)
        self._check_length(start + T)
        pos = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        x = self.transformer.wte(input_ids)  # (B, T, C)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = rope_tables(self.rope_inv_freq, pos)  # 2 × (T, hs), shared by every layer
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope, kv_cache)  # the cache advances past these T positions at its last layer
        return self.transformer.ln_f(x)

    def forward(
        self, input_ids: torch.Tensor, kv_cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """(B, T) token ids → (B, T, V) next-token logits; `last_only`: (B, 1, V), the last position's (decoding)."""
        x = self.hidden_states(input_ids, kv_cache)
        return self.lm_head(x[:, -1:] if last_only else x)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of (B, T) ids against (B, T) targets (-100: not scored) — the training loss.

        Equal to `F.cross_entropy(self(input_ids).flatten(0, 1), targets.flatten())` within float32 rounding, but
        the LM head and the loss run in row chunks (`gpt2_lightning.lm_loss`): the (B·T, V) logits are never held
        whole, which saves most of a training step's peak memory at GPT-2's vocabulary and some of its time.
        """
        if targets.shape != input_ids.shape:
            raise UsageError(
                f"targets must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(targets.shape)}"
            )
        hidden = self.hidden_states(input_ids).flatten(0, 1)  # (B·T, C)
        return chunked_cross_entropy(hidden, self.lm_head.weight, targets.flatten())

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> GPT:
        """A GPT in eval mode from a hub id ("gpt2", "openai-community/gpt2-xl", ...), an HF-format directory, or a
        directory written by `gpt2_lightning.checkpoints.save_pretrained` (any variant); every weight checked.
        (A Lightning training checkpoint: `gpt2_lightning.module.load_trained_model`.)"""
        config, state_dict, source = read_pretrained(name_or_path)
        model = cls(config)
        load_state_dict_strict(model, state_dict, source)
        return model.eval()

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """Continue (B, T) prompts by up to `max_new_tokens` tokens → (B, T + new).

        temperature=0 is greedy decoding. Once a row emits `eos_token_id` it is padded with it, and decoding
        stops early when every row has. Dropout follows the module's mode: call `.eval()` to sample.
        compile=True runs each one-token step through `torch.compile` (the same forward): at the 124M shape on a
        CPU ~1.45× faster per token than eager (1.72× transformers), after a first compile of ~45 s, so it pays on
        long outputs.
        """
        new_tokens = list(
            self.generate_stream(
                input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator, compile
            )
        )
        return torch.cat([input_ids, *(t[:, None] for t in new_tokens)], dim=1)

    @torch.inference_mode()
    def generate_stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ) -> Iterator[torch.Tensor]:
        """`generate`, one (B,) tensor of new tokens at a time, for printing text as it is produced.

        The prompt is run once (prefill) into a preallocated KV cache; each later step feeds one token, through
        the compiled forward when `compile` (the prefill stays eager: one graph serves every prompt length).
        """
        if input_ids.dim() != 2 or input_ids.size(1) == 0:
            raise UsageError(f"input_ids must have shape (batch, time) with time >= 1, got {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise UsageError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        B, T = input_ids.shape
        self._check_length(T + max_new_tokens)
        cache = self.make_kv_cache(B, T + max_new_tokens)
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        x = input_ids
        for i in range(max_new_tokens):
            if compile and i:
                logits = _compiled_forward()(self, x, cache, last_only=True)[:, -1]  # (B, V)
            else:
                logits = self(x, cache, last_only=True)[:, -1]
            token = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            yield token
            if eos_token_id is not None and bool(finished.all()):
                return
            x = token[:, None]


@functools.cache
def _compiled_forward():
    """`GPT.forward` through `torch.compile`, made once: its graphs serve every model of the same shapes."""
    return torch.compile(GPT.forward)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of (B, V) logits: greedy at temperature 0, else sampled after top-k / top-p."""
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"temperature must be a number >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if not torch.isfinite(logits).all():
        raise UsageError(
            f"temperature {temperature:g} is so small that logits / temperature overflow float32; use 0 for greedy "
            "decoding, or a temperature >= 1e-3"
        )
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def mha_to_gqa(model: GPT, n_kv_head: int) -> GPT:
    """A copy of `model` with `n_kv_head` key/value heads, each the mean of the heads in its group.

    This is the GQA paper's conversion (Ainslie et al. 2023, §2.1) before uptraining: key/value head j of the
    result averages the original heads j·g … j·g + g - 1 (g = n_head // n_kv_head), weights and biases alike,
    which matches query head i reading K/V head i // g. Exact when the heads within each group are equal.
    """
    config = model.config
    if config.kv_heads != config.n_head:
        raise UsageError(f"mha_to_gqa needs a multi-head model; this one already has n_kv_head={config.n_kv_head}")
    new_config = dataclasses.replace(config, n_kv_head=n_kv_head)  # validates that n_kv_head divides n_head
    group, hs, C = config.n_head // n_kv_head, config.head_dim, config.n_embd

    def pool(x: torch.Tensor) -> torch.Tensor:  # (n_head·hs, ...) → (n_kv_head·hs, ...)
        return x.reshape(n_kv_head, group, hs, *x.shape[1:]).mean(dim=1).flatten(0, 1)

    state = model.state_dict()
    for i in range(config.n_layer):
        for suffix in ("weight", "bias"):
            key = f"transformer.h.{i}.attn.c_attn.{suffix}"
            if key in state:
                q, k, v = state[key].split(C, dim=0)  # rows: q heads | k heads | v heads, hs rows per head
                state[key] = torch.cat([q, pool(k), pool(v)], dim=0)  # (C + 2·n_kv·hs, ...)
    converted = GPT(new_config).to(device=model.lm_head.weight.device, dtype=model.lm_head.weight.dtype)
    converted.load_state_dict(state)
    return converted.train(model.training)
