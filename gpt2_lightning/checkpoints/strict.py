"""Loading a state dict into a GPT all or nothing, with every problem listed in one error, and a model built from a
file's config only once its sizes are plausible and its tensors fit (a config.json is not trusted to size memory)."""

from __future__ import annotations

import torch

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.model import GPT

TIED_HEAD = "lm_head.weight"  # the LM head's key: the token embedding's weight, never stored twice
# Far beyond every GPT-2-family model (gpt2-xl: 48 layers, 25 heads, 1600 wide, 50257 tokens, 1024 positions):
# a checkpoint's config asking for more is refused before anything is built.
SIZE_LIMITS = {"n_layer": 512, "n_head": 1024, "n_embd": 65536, "vocab_size": 2**21, "block_size": 2**21}


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … ({len(names) - limit} more)" if len(names) > limit else "")


def _problems(model: GPT, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `state_dict` from loading into `model` exactly: missing, unexpected and mis-shaped keys, an
    untied head. Reads shapes only, so `model` may live on the meta device."""
    expected = {k: v for k, v in model.state_dict().items() if k != TIED_HEAD}
    head = state_dict.get(TIED_HEAD)
    wte = state_dict.get("transformer.wte.weight")
    problems = []
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys() - {TIED_HEAD})
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
    return problems


def _refuse(problems: list[str], config: GPTConfig, source: str) -> None:
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model its config describes "
            f"(n_layer={config.n_layer}, n_embd={config.n_embd}, vocab_size={config.vocab_size}, "
            f"block_size={config.block_size}): " + "; ".join(problems)
        )


def _load_checked(model: GPT, state_dict: dict[str, torch.Tensor]) -> None:
    weights = {k: v for k, v in state_dict.items() if k != TIED_HEAD}
    model.load_state_dict(weights, strict=False)  # strict=False only for the tied lm_head, checked by _problems


def load_state_dict_strict(model: GPT, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter or nothing: list missing / unexpected keys and shape mismatches in one error."""
    _refuse(_problems(model, state_dict), model.config, source)
    _load_checked(model, state_dict)


def build_strict(config: GPTConfig, state_dict: dict[str, torch.Tensor], source: str) -> GPT:
    """A GPT of `config` holding `state_dict`, in eval mode. Sizes beyond `SIZE_LIMITS` are refused by name, and
    the tensors are checked against a model on the meta device (no memory) before the real one is allocated, so
    a config that disagrees with its weights costs nothing."""
    too_large = [f"{name}={getattr(config, name):,} (at most {limit:,})" for name, limit in SIZE_LIMITS.items()
                 if getattr(config, name) > limit]
    if too_large:
        raise CheckpointError(f"{source}: the config asks for {', '.join(too_large)}, beyond any GPT-2-family model; "
                              "the file is damaged or not a GPT-2 checkpoint")
    with torch.device("meta"):
        shell = GPT(config)
    _refuse(_problems(shell, state_dict), config, source)
    model = GPT(config)
    _load_checked(model, state_dict)  # the shell had the real model's keys and shapes: checked once, above
    return model.eval()
