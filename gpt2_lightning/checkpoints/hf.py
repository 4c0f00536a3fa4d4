"""transformers' GPT-2 format: the config fields and the tensor table, both ways.

transformers stores GPT-2's projections as `Conv1D` modules whose weight is (in, out), the transpose of
`nn.Linear`'s (out, in); keys come with a `transformer.` prefix (from `GPT2LMHeadModel`) or without it (from
`GPT2Model`, as on the Hub), and may carry the attention-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`
and a copy of the tied `lm_head.weight`. Names are otherwise this model's own (it keeps GPT-2's), so the mapping
is one table of which tensors are transposed; `strict.load_state_dict_strict` then insists on an exact match.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from gpt2_lightning.checkpoints.native import write_checkpoint_directory
from gpt2_lightning.checkpoints.strict import TIED_HEAD
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.model import GPT

# Each block's tensors, under transformer.h.{i}.: this model's name -> stored transposed by transformers (Conv1D).
BLOCK_TENSORS = {
    "ln_1.weight": False,
    "ln_1.bias": False,
    "attn.c_attn.weight": True,
    "attn.c_attn.bias": False,
    "attn.c_proj.weight": True,
    "attn.c_proj.bias": False,
    "ln_2.weight": False,
    "ln_2.bias": False,
    "mlp.c_fc.weight": True,
    "mlp.c_fc.bias": False,
    "mlp.c_proj.weight": True,
    "mlp.c_proj.bias": False,
}
# Causal-mask buffers that older transformers versions saved with each block's weights; they hold no parameters.
BLOCK_MASK_BUFFERS = ("attn.bias", "attn.masked_bias")
BLOCK_KEY = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")  # (layer index, name within the block)


def _transposed(key: str) -> bool:
    """Whether transformers stores this (this model's) key transposed."""
    block = BLOCK_KEY.match(key)
    return block is not None and BLOCK_TENSORS.get(block.group(2), False)


def config_from_hf(hf: dict) -> GPTConfig:
    """GPTConfig from transformers' GPT2Config fields; settings this model cannot reproduce are refused."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"config.json describes a {hf['model_type']!r} model, not GPT-2 (model_type 'gpt2')")
    unsupported = []
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function={hf['activation_function']!r} (only tanh-approximated GELU)")
    if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
        unsupported.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (only 1e-5)")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        unsupported.append("attention scaling other than 1/sqrt(head_dim)")
    if not hf.get("tie_word_embeddings", True):
        unsupported.append("tie_word_embeddings=false (this model ties lm_head to wte)")
    dropouts = {hf.get(key, 0.1) for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(dropouts) > 1:
        unsupported.append(f"resid_pdrop, embd_pdrop and attn_pdrop of {sorted(dropouts)} (one dropout rate for all)")
    if unsupported:
        raise CheckpointError("config.json asks for what this GPT-2 does not implement: " + "; ".join(unsupported))
    try:
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            block_size=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=hf.get("n_embd", 768),
            n_inner=hf.get("n_inner"),
            dropout=dropouts.pop(),
        )
    except ValueError as err:
        raise CheckpointError(f"config.json is not a valid GPT-2 configuration: {err}") from err


def config_to_hf(config: GPTConfig) -> dict:
    """transformers' GPT2Config fields for a model; refuses what transformers' GPT-2 cannot represent."""
    unrepresentable = config.departures_from_gpt2()
    if unrepresentable:
        raise CheckpointError(
            "save_hf: transformers' GPT-2 cannot represent " + "; ".join(unrepresentable) + ". Save the model with "
            "gpt2_lightning.checkpoints.save (the package's own format) instead; gpt2_lightning.load reads it."
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def state_dict_from_hf(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map transformers' GPT-2 keys and layouts onto this GPT's state dict (mask buffers dropped)."""
    out = {}
    for key, tensor in tensors.items():
        if key != TIED_HEAD and not key.startswith("transformer."):
            key = "transformer." + key
        block = BLOCK_KEY.match(key)
        if block is not None and block.group(2) in BLOCK_MASK_BUFFERS:
            continue
        out[key] = tensor.t() if _transposed(key) else tensor
    return out


def state_dict_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """This GPT's tensors in transformers' keys and layouts (the tied head stored once, as `wte`)."""
    return {key: tensor.t() if _transposed(key) else tensor for key, tensor in model.state_dict().items()
            if key != TIED_HEAD}


def save_hf(model: GPT, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors in transformers' GPT-2 format (GPT2LMHeadModel loads it)."""
    return write_checkpoint_directory(directory, state_dict_to_hf(model), config_to_hf(model.config))
