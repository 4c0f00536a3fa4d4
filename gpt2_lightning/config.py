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
        rope_theta_local: the RoPE base of the windowed layers of a local:global model (Gemma 3 uses 10k local,
            1M global); null = rope_theta everywhere.
        rope_scaling: how rotary positions run past the training length, an inference setting (also usable to
            fine-tune longer): null = plain RoPE (raw extrapolation); "linear" = position interpolation (Chen et al.
            2023: positions divided by the factor); "ntk" = NTK-aware scaling (bloc97 2023: the base multiplied by
            factor^(hs / (hs - 2)), so the high frequencies barely move and the lowest is interpolated).
        rope_scaling_factor: the factor s of rope_scaling (>= 1; at 1 both are exactly RoPE), e.g. the new length
            over the training length.
        n_inner: the MLP's hidden width (transformers' GPT2Config name); null = 4 · n_embd as in GPT-2. Widening
            it restores the parameters GQA removes, as Llama 2 did for its 70B GQA model (section 2.2).
        n_kv_head: key/value heads: null = n_head (multi-head), 1 = multi-query, else grouped-query; divides n_head.
        sliding_window: null = full causal attention; w = each position attends to itself and the w - 1 before it;
            a list gives each layer its own span (w or null = global), repeated over the layers when shorter:
            [512, 512, 512, null] is a 3 local : 1 global hybrid, [64, 128, 256, 512] windows growing with depth.
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
    rope_theta_local: float | None = None
    rope_scaling: str | None = None
    rope_scaling_factor: float = 1.0
    n_inner: int | None = None
    n_kv_head: int | None = None
    sliding_window: int | list[int | None] | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int)
                                         or self.n_inner <= 0):
            raise ValueError(f"GPTConfig.n_inner must be None (= 4·n_embd) or a positive integer, got {self.n_inner!r}")
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
        self._check_windows()
        if self.rope_theta_local is not None and not self.rope_theta_local > 0:
            raise ValueError(f"GPTConfig.rope_theta_local must be None or > 0, got {self.rope_theta_local!r}")
        if self.rope_scaling not in (None, "linear", "ntk"):
            raise ValueError(f"GPTConfig.rope_scaling must be None, 'linear' or 'ntk', got {self.rope_scaling!r}")
        factor = self.rope_scaling_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(f"GPTConfig.rope_scaling_factor must be a number >= 1, got {factor!r}")
        if self.pos_encoding != "rope" and (self.rope_scaling is not None or self.rope_theta_local is not None):
            raise ValueError("GPTConfig.rope_scaling and rope_theta_local apply to rotary positions; set "
                             "pos_encoding='rope' or leave them unset")

    def _check_windows(self) -> None:
        spans = self.sliding_window if isinstance(self.sliding_window, list) else [self.sliding_window]
        if not spans or len(spans) > self.n_layer:
            raise ValueError(f"GPTConfig.sliding_window: a list needs 1 to n_layer={self.n_layer} entries (repeated "
                             f"over the layers), got {len(spans)}")
        for w in spans:
            if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
                raise ValueError(
                    f"GPTConfig.sliding_window must be None (full causal attention), an integer >= 1 or a list of "
                    f"them per layer, got {self.sliding_window!r}"
                )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def window_of(self, layer: int) -> int | None:
        """The sliding window of layer `layer` (None: it attends to every earlier position)."""
        if isinstance(self.sliding_window, list):
            return self.sliding_window[layer % len(self.sliding_window)]
        return self.sliding_window

    @property
    def layer_windows(self) -> list[int | None]:
        """Every layer's window, in order."""
        return [self.window_of(i) for i in range(self.n_layer)]

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width in effect (n_inner, or GPT-2's 4 · n_embd when it is None)."""
        return self.n_inner or 4 * self.n_embd

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads in effect (n_kv_head, or n_head when it is None)."""
        return self.n_kv_head or self.n_head

    def describe(self) -> str:
        """The architecture in one phrase, for messages: "2 layers × 64 wide, 2 heads (1 K/V), learned positions,
        block_size 64"."""
        heads = f"{self.n_head} heads" + (f" ({self.kv_heads} K/V)" if self.kv_heads != self.n_head else "")
        window = f", sliding_window {self.sliding_window}" if self.has_window else ""
        mlp = f", MLP {self.n_inner} wide" if self.n_inner not in (None, 4 * self.n_embd) else ""
        return (f"{self.n_layer} layers × {self.n_embd} wide, {heads}{mlp}, {self.pos_encoding} positions, block_size "
                f"{self.block_size}{window}")

    def kv_cache_bytes(self, context: int, batch_size: int = 1, bytes_per_value: int = 2) -> int:
        """Bytes of the KV cache of `batch_size` sequences of `context` positions (bf16 by default): keys and values
        of kv_heads × head_dim per slot, a slot per position in a global layer, at most w in a layer with window w."""
        slots = sum(context if w is None else min(w, context) for w in self.layer_windows)
        return 2 * batch_size * self.kv_heads * self.head_dim * slots * bytes_per_value

    @property
    def has_window(self) -> bool:
        """Whether any layer attends through a sliding window."""
        return any(w is not None for w in self.layer_windows)

    def departures_from_gpt2(self) -> list[str]:
        """What makes this config more than plain GPT-2 (empty for GPT-2 itself), each said as a field=value."""
        return [
            text
            for present, text in (
                (not self.bias, "bias=False (GPT-2 always has biases)"),
                (self.pos_encoding != "learned", f"pos_encoding={self.pos_encoding!r} (GPT-2 has learned positions)"),
                (self.kv_heads != self.n_head, f"n_kv_head={self.n_kv_head} (GPT-2 has one K/V head per query head)"),
                (self.has_window, f"sliding_window={self.sliding_window} (GPT-2 attends to all)"),
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
