"""Weight-only int8 quantization of a GPT for decoding: a quarter of float32's weight bytes per token.

Decoding at batch 1 reads every weight once per token, so it is bound by memory bandwidth; int8 weights read 4×
fewer bytes than float32. torchao (PyTorch's quantization library) quantizes each linear layer's weight per
output row, symmetrically (`Int8WeightOnlyConfig`); `Int8Linear` then holds the int8 rows and their scales and
multiplies with PyTorch's int8 weight-only kernel (`_weight_int8pack_mm`) on CPUs, which is faster than
torchao's eager path (that dequantizes the whole weight per call; the figures are in docs/performance.md), and
as `(x @ int8ᵀ) · scale` on other devices and for input widths that are not a multiple of 16. Activations run
in bfloat16: that kernel takes bf16 inputs.

The LM head is untied from the token embedding first, so the embedding keeps unquantized rows (in bf16).
Quantized models are for inference (quantize after training, before decoding).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_lightning.errors import UsageError
from gpt2_lightning.model import GPT

QUANTIZATIONS = ("int8",)


class Int8Linear(nn.Module):
    """y = x · (int8 weight · per-row scale)ᵀ + bias, for (N, K) int8 rows `qdata` and (N,) `scale`."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("qdata", qdata)  # (N, K) int8
        self.register_buffer("scale", scale)  # (N,) in the activations' dtype
        self.register_buffer("bias", bias)  # (N,) or None

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (N, K) weight, what the int8 product multiplies by (for the loss; not for decoding)."""
        return self.qdata.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.scale.dtype)
        if x.device.type == "cpu" and x.size(-1) % 16 == 0:  # (the kernel crashed on other widths, torch 2.13)
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.size(-1)), self.qdata, self.scale)
            y = y.view(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.qdata.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias


def _import_torchao():
    """torchao's quantization API, imported without its import-time noise: it logs a warning for each CUDA
    extension a CPU build of torch cannot load, and torch logs a deprecation for each Enum torchao registers."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return Int8WeightOnlyConfig, quantize_


def quantize_weights(model: GPT, mode: str) -> GPT:
    """Quantize `model`'s linear layers (attention, MLP, LM head) to `mode` in place, for decoding; returns it.

    "int8": per-row symmetric int8 weights (torchao), bfloat16 activations; the embeddings and LayerNorms stay
    as they are (cast to bfloat16). Held-out loss and greedy agreement with float32: docs/performance.md.
    """
    if mode not in QUANTIZATIONS:
        raise UsageError(f"unknown quantization {mode!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    Int8WeightOnlyConfig, quantize_ = _import_torchao()

    model.lm_head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)  # untied: its own weight
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())
    model.to(torch.bfloat16).eval().requires_grad_(False)
    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=lambda m, _: isinstance(m, nn.Linear))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                w = child.weight  # torchao's Int8Tensor: (N, K) int8 rows, (N, 1) float scales
                scale = w.scale.flatten().to(torch.bfloat16)
                setattr(parent, name, Int8Linear(w.qdata.contiguous(), scale, child.bias))
    return model
