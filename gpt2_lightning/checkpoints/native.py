"""This package's own checkpoint format, for every variant, and the directory layout it shares with transformers.

A checkpoint directory is config.json + model.safetensors. In the own format config.json holds
`"model_type": "gpt2-lightning"` and every `GPTConfig` field, and model.safetensors this model's own keys and
layouts; variants (RoPE, GQA, sliding window, no biases) have no transformers GPT-2 equivalent, so they are
saved this way. Reading either format: `gpt2_lightning.checkpoints.load`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt2_lightning.checkpoints.strict import TIED_HEAD
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.files import write_atomically
from gpt2_lightning.model import GPT

OWN_MODEL_TYPE = "gpt2-lightning"  # config.json's model_type in this package's own format
# What reading a damaged weights file raises: truncated zip or pickle, a bad safetensors header, refused globals.
UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)


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


def read_config_json(directory: Path) -> dict:
    """The fields of a checkpoint directory's config.json."""
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; an HF-format checkpoint needs config.json and weights")
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({type(err).__name__}: {str(err)[:120]}); re-download or "
                              "re-save the checkpoint") from err
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path} holds a JSON {type(fields).__name__}, not an object of config fields; "
                              "re-download or re-save the checkpoint")
    return fields


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
            except UNREADABLE as err:
                raise CheckpointError(
                    f"{path} could not be read ({type(err).__name__}: {err}); the file is truncated or corrupt. "
                    "Download or save it again."
                ) from err
    raise CheckpointError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")


def write_checkpoint_directory(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """config.json + model.safetensors, each written to a temporary file and renamed into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in tensors.items()}
    write_atomically(directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    write_atomically(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def save_native(model: GPT, directory: str | os.PathLike) -> Path:
    """Write any variant as config.json (every GPTConfig field) + model.safetensors."""
    config = {"model_type": OWN_MODEL_TYPE, **dataclasses.asdict(model.config)}
    tensors = {key: tensor for key, tensor in model.state_dict().items() if key != TIED_HEAD}
    return write_checkpoint_directory(directory, tensors, config)
