"""Every way a GPT reaches or leaves the disk: one `load` for every source, one `save` for every format.

`load(name_or_path)` reads a hub id ("gpt2", "openai-community/gpt2-xl", fetched into checkpoints/ if absent), a
transformers-format directory, a directory in this package's own format (any variant), or a Lightning training
checkpoint (`.ckpt` file or FSDP2's sharded `.ckpt/` directory); every weight is checked against the config.
`save(model, directory)` writes plain GPT-2 in transformers' format (readable by both) and any variant in the own
format. The modules: `strict` (all-or-nothing loading), `native` (the own format), `hf` (transformers' keys and
config), `lightning` (training checkpoints, vetted), `convert` (MHA → GQA); `gpt2_lightning.hub` fetches.
This package imports the model; the model never imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import torch

from gpt2_lightning.checkpoints.hf import config_from_hf, save_hf, state_dict_from_hf
from gpt2_lightning.checkpoints.lightning import is_lightning_checkpoint, load_trained_model
from gpt2_lightning.checkpoints.native import (
    OWN_MODEL_TYPE,
    config_from_own,
    read_config_json,
    read_tensors,
    save_native,
)
from gpt2_lightning.checkpoints.strict import build_strict
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import UsageError
from gpt2_lightning.hub import resolve_checkpoint
from gpt2_lightning.model import GPT

Format = Literal["auto", "hf", "native"]
FORMATS = get_args(Format)


def read_pretrained(name_or_path: str | os.PathLike) -> tuple[GPTConfig, dict[str, torch.Tensor], str]:
    """(configuration, state dict in this model's keys and layouts, where it came from) of a transformers-format
    or own-format directory, or of a hub id (fetched into checkpoints/ if absent)."""
    directory = resolve_checkpoint(name_or_path)
    fields = read_config_json(directory)
    tensors = read_tensors(directory)
    if fields.get("model_type") == OWN_MODEL_TYPE:
        return config_from_own({k: v for k, v in fields.items() if k != "model_type"}), tensors, str(directory)
    return config_from_hf(fields), state_dict_from_hf(tensors), str(directory)


def load(name_or_path: str | os.PathLike) -> GPT:
    """A GPT in eval mode from any checkpoint this package reads (see the module's docstring)."""
    if is_lightning_checkpoint(Path(name_or_path)):
        return load_trained_model(name_or_path)
    return build_strict(*read_pretrained(name_or_path))


def save(model: GPT, directory: str | os.PathLike, format: Format = "auto") -> Path:
    """Write config.json + model.safetensors. "hf": transformers' GPT-2 format (refused, with the reason, for a
    variant it cannot represent); "native": this package's own, for every variant; "auto": "hf" for plain GPT-2,
    else "native"."""
    if format not in FORMATS:
        raise UsageError(f"unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "hf" or (format == "auto" and not model.config.departures_from_gpt2()):
        return save_hf(model, directory)
    return save_native(model, directory)
