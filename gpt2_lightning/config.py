"""`GPTConfig`: every hyper-parameter of the model, one flat dataclass for every variant.

Kept apart from the model so that checkpoint readers and the command line can describe and validate a model
without building one. Part of the core: it imports nothing from the package, and bad values raise `ValueError`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# OpenAI's published GPT-2 sizes: name -> (n_layer, n_head, n_embd); everything else is shared. The names are
# also the short hub ids (`gpt2-medium` is openai-community/gpt2-medium on the Hugging Face Hub).
PRESETS: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


@dataclass
class GPTConfig:
    """Every hyper-parameter of the model; the defaults are GPT-2 small (124M).

    Args:
        vocab_size: the number of token ids (GPT-2's BPE: 50257).
        block_size: the training sequence length; with learned positions also the longest sequence the model reads.
        n_layer: transformer blocks.
        n_head: query heads per attention layer (divides n_embd).
        n_embd: the width of the residual stream.
        dropout: dropout on attention weights and residual branches (0 for pretraining at scale).
        bias: biases in Linear and LayerNorm layers (GPT-2 has them).
        pos_encoding: "learned" (GPT-2's position table) or "rope" (rotary embeddings, rotate-half layout).
        rope_theta: the RoPE base: frequency i is rope_theta^(-2i/head_dim).
        n_kv_head: key/value heads: null = n_head (multi-head), 1 = multi-query, else grouped-query; divides n_head.
        sliding_window: null = full causal attention; w = each position attends to itself and the w - 1 before it.
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0
    n_kv_head: int | None = None
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd // n_head channels"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pos_encoding not in ("learned", "rope"):
            raise ValueError(f"GPTConfig.pos_encoding must be 'learned' or 'rope', got {self.pos_encoding!r}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(
                f"GPTConfig.pos_encoding='rope' needs an even head size (n_embd // n_head), got {self.head_dim}: "
                "rotary embeddings rotate pairs of channels"
            )
        if not self.rope_theta > 0:
            raise ValueError(f"GPTConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if self.n_kv_head is not None:
            if isinstance(self.n_kv_head, bool) or not isinstance(self.n_kv_head, int) or self.n_kv_head <= 0:
                raise ValueError(
                    f"GPTConfig.n_kv_head must be None (= n_head) or a positive integer, got {self.n_kv_head!r}"
                )
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"GPTConfig.n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): "
                    "each key/value head serves n_head // n_kv_head query heads"
                )
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(
                f"GPTConfig.sliding_window must be None (full causal attention) or an integer >= 1, got {w!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads in effect (n_kv_head, or n_head when it is None)."""
        return self.n_kv_head or self.n_head

    def departures_from_gpt2(self) -> list[str]:
        """What makes this config more than plain GPT-2 (empty for GPT-2 itself), each said as a field=value."""
        return [
            text
            for present, text in (
                (not self.bias, "bias=False (GPT-2 always has biases)"),
                (self.pos_encoding != "learned", f"pos_encoding={self.pos_encoding!r} (GPT-2 has learned positions)"),
                (self.kv_heads != self.n_head, f"n_kv_head={self.n_kv_head} (GPT-2 has one K/V head per query head)"),
                (self.sliding_window is not None, f"sliding_window={self.sliding_window} (GPT-2 attends to all)"),
            )
            if present
        ]

    @classmethod
    def from_name(cls, name: str, **overrides) -> GPTConfig:
        """The configuration of a published GPT-2 size ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")."""
        key = name.removeprefix("openai-community/")
        if key not in PRESETS:
            raise ValueError(f"unknown GPT-2 preset {name!r}; choose one of {', '.join(PRESETS)}")
        n_layer, n_head, n_embd = PRESETS[key]
        return replace(cls(n_layer=n_layer, n_head=n_head, n_embd=n_embd), **overrides)
