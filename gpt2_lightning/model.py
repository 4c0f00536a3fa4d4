"""GPT-2, written out by hand.

Single-device model code: no Lightning, no torch.distributed. Parameter names follow OpenAI's / transformers'
GPT-2 (`transformer.wte`, `transformer.h.N.attn.c_attn`, ...) so that loading the released checkpoints is a
transpose and nothing more (`gpt2_lightning.checkpoints` reads them; this module reads no file).

One config and one attention module serve every variant: learned or rotary positions (`pos_encoding`),
multi-head / grouped-query / multi-query attention (`n_kv_head`), full or sliding-window attention
(`sliding_window`), in any combination. With the defaults the model is exactly GPT-2.

References: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners";
nanoGPT (https://github.com/karpathy/nanoGPT) for the layout; the variants in docs/variants.md.
Decoding (KV cache, sampling) is `gpt2_lightning.generate`; bad input raises `ValueError`.

Shape legend used in comments: B batch, T new positions, S cached + new positions, C n_embd,
nh n_head, nkv key/value heads, hs head size (C // nh), V vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.attention import attention
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.lm_loss import chunked_cross_entropy
from gpt2_lightning.rope import apply_rope, rope_frequencies, rope_tables


class Cache(Protocol):
    """What attention needs of a key/value cache (`gpt2_lightning.generate.KVCache` is the one in use)."""

    pos: int  # positions [0, pos) are cached; new ids continue the sequence from here

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s (B, nkv, T, hs) new keys/values; return the (B, nkv, S, hs) keys/values to
        attend to."""


class CausalSelfAttention(nn.Module):
    """Causal self-attention for every variant: MHA/GQA/MQA, learned or rotary positions, full or windowed.

    `c_attn` projects to n_head query heads and n_kv key and value heads, [q | k | v] of widths
    (nh·hs, nkv·hs, nkv·hs): exactly GPT-2's fused 3C projection when nkv = nh.
    """

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.window = config.window_of(layer_idx)
        self.layer_idx = layer_idx  # which slice of a key/value cache belongs to this layer
        self.dropout = config.dropout
        qkv_width = (config.n_head + 2 * config.kv_heads) * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_width, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: Cache | None = None,
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
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


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
        kv_cache: Cache | None = None,
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
        else:  # rope: no position table; q and k are rotated in every attention layer, at its layer's base
            self._set_rope_frequencies()
        layers.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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

    def scale_rope(self, scaling: str | None, factor: float = 1.0) -> None:
        """Run rotary positions past the training length from now on: position interpolation ("linear") or
        NTK-aware scaling ("ntk") by `factor`, or plain RoPE (None); see `GPTConfig.rope_scaling`. The weights are
        untouched: an inference setting, recorded in the config so a save keeps it."""
        self.config = replace(self.config, rope_scaling=scaling, rope_scaling_factor=factor)  # checks the values
        self._set_rope_frequencies(self.rope_inv_freq.device)

    def _set_rope_frequencies(self, device=None) -> None:
        """(Re)build the frequency buffer of each RoPE base in use, scaled as the config says."""
        c = self.config
        for name, theta in self._rope_bases().items():
            inv_freq = rope_frequencies(c.head_dim, theta, device, scaling=c.rope_scaling, factor=c.rope_scaling_factor)
            self.register_buffer(name, inv_freq, persistent=False)

    def _rope_bases(self) -> dict[str, float]:
        """The frequency buffer of each RoPE base in use: `rope_inv_freq`, and `rope_inv_freq_local` for the
        windowed layers when they have a base of their own."""
        c = self.config
        bases = {"rope_inv_freq": c.rope_theta}
        if c.rope_theta_local is not None and c.has_window:
            bases["rope_inv_freq_local"] = c.rope_theta_local
        return bases

    def num_params(self) -> int:
        """Number of parameters, the tied embedding / LM head counted once (as OpenAI counts them)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token for sequences of `seq_len` (2 per multiply-add; training is 3× this).

        2·(weights of every matmul, LM head included) + 4·n_embd·Σ_layers S_l, where S_l is the mean number of keys
        a query of layer l reads: (T+1)/2 with full causal attention, min(t+1, w) averaged over positions with a
        window w.
        """
        c, T = self.config, seq_len
        per_layer = c.n_embd * (c.n_head + 2 * c.kv_heads) * c.head_dim + c.n_embd**2 + 2 * c.n_embd * c.mlp_width
        matmul_weights = c.n_layer * per_layer + c.vocab_size * c.n_embd

        def mean_keys(w: int) -> float:  # mean of min(t + 1, w) over t < T
            return (sum(range(1, min(w, T) + 1)) + max(T - w, 0) * w) / T

        keys = sum(mean_keys(w or T) for w in c.layer_windows)
        return 2 * matmul_weights + 4 * c.n_embd * keys

    def check_length(self, length: int) -> None:
        """Learned positions stop at block_size; rotary positions run on (block_size is then the training length)."""
        if self.config.pos_encoding == "learned" and length > self.config.block_size:
            raise ValueError(
                f"a sequence of {length} tokens is longer than block_size={self.config.block_size}, the number "
                f"of learned positions this model has; use at most block_size tokens (prompt + new tokens), "
                f"or a pos_encoding='rope' model, which runs past block_size"
            )

    def check_token_ids(self, input_ids: torch.Tensor) -> None:
        """(B, T) ids within the vocabulary. On an accelerator this would sync, and compiled decoding makes its own
        ids: checked on CPU tensors outside compilation only (the prompt is checked before decoding starts)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, time), got {tuple(input_ids.shape)}")
        if input_ids.device.type == "cpu" and input_ids.numel() and not torch.compiler.is_compiling():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"token id {high if high >= self.config.vocab_size else low} is outside the model's vocabulary "
                    f"(0 … {self.config.vocab_size - 1}): the ids come from another tokenizer, or vocab_size is too "
                    "small for them"
                )

    def hidden_states(self, input_ids: torch.Tensor, kv_cache: Cache | None = None) -> torch.Tensor:
        """(B, T) token ids → (B, T, C) final-LayerNorm states. With a cache, the ids continue its sequence."""
        self.check_token_ids(input_ids)
        start = kv_cache.pos if kv_cache is not None else 0
        T = input_ids.size(1)
        self.check_length(start + T)
        pos = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        x = self.transformer.wte(input_ids)  # (B, T, C)
        rope = {}
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(pos)
        else:  # 2 × (T, hs) per base, shared by the layers of that base
            rope = {name: rope_tables(getattr(self, name), pos) for name in self._rope_bases()}
        x = self.transformer.drop(x)
        local = "rope_inv_freq_local" if "rope_inv_freq_local" in rope else "rope_inv_freq"
        for block in self.transformer.h:
            tables = rope.get(local if block.attn.window is not None else "rope_inv_freq")
            x = block(x, tables, kv_cache)  # the cache advances past these T positions at its last layer
        return self.transformer.ln_f(x)

    def forward(
        self, input_ids: torch.Tensor, kv_cache: Cache | None = None, last_only: bool = False
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
            raise ValueError(
                f"targets must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(targets.shape)}"
            )
        hidden = self.hidden_states(input_ids).flatten(0, 1)  # (B·T, C)
        return chunked_cross_entropy(hidden, self.lm_head.weight, targets.flatten())
