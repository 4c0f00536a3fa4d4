"""Checkpoint directories: this package's own format for every variant, and reading any directory.

Variants (RoPE, GQA, sliding window, no biases) have no transformers GPT-2 equivalent; `save_pretrained` writes
them in this package's own format: config.json with `"model_type": "gpt2-lightning"` and every `GPTConfig`
field, and model.safetensors with this model's own keys and layouts. `read_pretrained` reads either format
(or a hub id, fetched through `hf.py`) as a configuration and a state dict, which `GPT.from_pretrained` loads
with `load_state_dict_strict`. Lightning training checkpoints are read on the training side
(`module.load_trained_model`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.hf import (
    TIED_HEAD,
    config_from_hf,
    resolve_checkpoint,
    state_dict_from_hf,
    write_checkpoint_directory,
)

if TYPE_CHECKING:
    from gpt2_lightning.model import GPT

OWN_MODEL_TYPE = "gpt2-lightning"  # config.json's model_type in this package's own format


def config_from_own(fields: dict) -> GPTConfig:
    """GPTConfig from this package's config.json; unknown fields are refused, not dropped."""
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(fields.keys() - known)
    if unknown:
        raise CheckpointError(
            f"config.json has fields GPTConfig does not know: {', '.join(unknown)}; "
            "was it written by a newer gpt2-lightning?"
        )
    try:
        return GPTConfig(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"config.json is not a valid configuration: {err}") from err


def read_config(directory: Path) -> tuple[GPTConfig, bool]:
    """The model configuration of a checkpoint directory, and whether it is in transformers' format."""
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; an HF-format checkpoint needs config.json and weights")
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download or re-save the checkpoint") from err
    if fields.get("model_type") == OWN_MODEL_TYPE:
        return config_from_own({k: v for k, v in fields.items() if k != "model_type"}), False
    return config_from_hf(fields), True


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, else of pytorch_model.bin (loaded with weights_only=True)."""
    for filename, load in (
        ("model.safetensors", load_file),
        ("pytorch_model.bin", lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    ):
        path = directory / filename
        if path.is_file():
            try:
                return load(str(path))
            except Exception as err:
                raise CheckpointError(
                    f"{path} could not be read ({type(err).__name__}: {err}); the file is truncated or corrupt. "
                    "Download or save it again."
                ) from err
    raise CheckpointError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")


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


def is_lightning_checkpoint(path: Path) -> bool:
    """A checkpoint `fit` wrote: a `.ckpt` file, or FSDP2's sharded `.ckpt` directory (it holds `meta.pt`)."""
    return path.suffix == ".ckpt" and (path.is_file() or (path / "meta.pt").is_file())


def read_pretrained(name_or_path: str | os.PathLike) -> tuple[GPTConfig, dict[str, torch.Tensor], str]:
    """(configuration, state dict in this model's keys and layouts, where it came from) of an HF-format or
    own-format directory, or of a hub id (fetched into checkpoints/ if absent)."""
    path = Path(name_or_path)
    if is_lightning_checkpoint(path):
        raise CheckpointError(
            f"{path} is a Lightning training checkpoint: read it with gpt2_lightning.module.load_trained_model, or "
            f"turn it into a checkpoint directory with `gpt2-lightning convert --checkpoint {path} --out DIR`"
        )
    directory = resolve_checkpoint(name_or_path)
    config, is_hf = read_config(directory)
    tensors = read_tensors(directory)
    return config, state_dict_from_hf(tensors) if is_hf else tensors, str(directory)


def save_pretrained(model: GPT, directory: str | os.PathLike) -> Path:
    """Write any variant as config.json (every GPTConfig field) + model.safetensors; GPT.from_pretrained reads it."""
    config = {"model_type": OWN_MODEL_TYPE, **dataclasses.asdict(model.config)}
    tensors = {key: tensor for key, tensor in model.state_dict().items() if key != TIED_HEAD}
    return write_checkpoint_directory(directory, tensors, config)
