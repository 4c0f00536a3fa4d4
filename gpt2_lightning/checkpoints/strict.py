"""Loading a state dict into a GPT all or nothing, with every problem listed in one error."""

from __future__ import annotations

import torch

from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.model import GPT

TIED_HEAD = "lm_head.weight"  # the LM head's key: the token embedding's weight, never stored twice


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … ({len(names) - limit} more)" if len(names) > limit else "")


def load_state_dict_strict(model: GPT, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter or nothing: list missing / unexpected keys and shape mismatches in one error."""
    expected = {k: v for k, v in model.state_dict().items() if k != TIED_HEAD}
    state_dict = dict(state_dict)
    head = state_dict.pop(TIED_HEAD, None)
    wte = state_dict.get("transformer.wte.weight")
    problems = []
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if head is not None and wte is not None and not (head.shape == wte.shape and torch.equal(head, wte)):
        problems.append("lm_head.weight differs from transformer.wte.weight, but this model ties them")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model its config describes "
            f"(n_layer={model.config.n_layer}, n_embd={model.config.n_embd}, vocab_size={model.config.vocab_size}, "
            f"block_size={model.config.block_size}): " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=False)  # strict=False only for the tied lm_head, checked above
