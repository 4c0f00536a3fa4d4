"""Turning one architecture's weights into another's: multi-head attention into grouped-query attention."""

from __future__ import annotations

import dataclasses

import torch

from gpt2_lightning.errors import UsageError
from gpt2_lightning.model import GPT


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
