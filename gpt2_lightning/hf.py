"""transformers' GPT-2 format, and OpenAI's checkpoints on the Hugging Face Hub.

transformers stores GPT-2's projections as `Conv1D` modules whose weight is (in, out), the transpose of
`nn.Linear`'s (out, in); keys come with a `transformer.` prefix (from `GPT2LMHeadModel`) or without it (from
`GPT2Model`, as on the Hub), and may carry the attention-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`
and a copy of the tied `lm_head.weight`. Reading normalises all of that; `checkpoints.load_state_dict_strict`
then insists on an exact match. A checkpoint directory is config.json + model.safetensors, a layout this
package's own format shares (`checkpoints.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.files import write_atomically

if TYPE_CHECKING:
    from gpt2_lightning.model import GPT

# Short names of OpenAI's four checkpoints -> their Hub repositories.
HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# Weights transformers keeps as Conv1D, i.e. transposed relative to nn.Linear.
CONV1D_WEIGHT = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# Causal-mask buffers that older transformers versions saved with the weights; they hold no parameters.
MASK_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
TIED_HEAD = "lm_head.weight"
LOCAL_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json")  # a name ending so is a path, not a hub id


def checkpoints_dir() -> Path:
    """Where hub downloads go: $GPT2_LIGHTNING_CHECKPOINTS, else ./checkpoints."""
    return Path(os.environ.get("GPT2_LIGHTNING_CHECKPOINTS", "checkpoints"))


def hub_repo_id(name: str) -> str:
    """`gpt2` → `openai-community/gpt2`; a full `owner/name` is returned as it is."""
    return HUB_MODELS.get(name, name)


def download(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Fetch config.json + model.safetensors of a hub model into `directory` (default checkpoints/<name>); a failed
    fetch leaves no directory behind."""
    from huggingface_hub import hf_hub_download

    from gpt2_lightning.hub import hub_unreachable

    repo_id = hub_repo_id(name)
    target = Path(directory) if directory is not None else checkpoints_dir() / repo_id.split("/")[-1]
    existed = target.exists()
    try:
        if (reason := hub_unreachable()) is not None:
            raise ConnectionError(reason)
        for filename in ("config.json", "model.safetensors"):
            hf_hub_download(repo_id, filename, local_dir=target)
    except Exception as err:  # offline, unreachable, unknown repo, no safetensors file: all end here
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"Get the weights where the Hub is reachable with `gpt2-lightning download {name}` (they land in "
            f"{target}), or pass a local directory holding config.json and model.safetensors."
        ) from err
    return target


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local HF-format directory as it is; a hub id → its directory under checkpoints/, downloaded if absent."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.suffix in LOCAL_SUFFIXES or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{name}: no such file or directory (a local path, not a hub id); check the path")
    if name not in HUB_MODELS and name not in HUB_MODELS.values() and name.count("/") != 1:
        raise CheckpointError(
            f"{name!r} is neither a directory nor a hub id; pass a directory with config.json and "
            f"model.safetensors, or one of {', '.join(HUB_MODELS)}"
        )
    local = checkpoints_dir() / hub_repo_id(name).split("/")[-1]
    if (local / "config.json").is_file() and (local / "model.safetensors").is_file():
        return local
    return download(name, local)


def config_from_hf(hf: dict) -> GPTConfig:
    """GPTConfig from transformers' GPT2Config fields; settings this model cannot reproduce are refused."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"config.json describes a {hf['model_type']!r} model, not GPT-2 (model_type 'gpt2')")
    unsupported = []
    if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 768)):
        unsupported.append(f"n_inner={hf['n_inner']} (this model's MLP is 4·n_embd wide)")
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
            "gpt2_lightning.checkpoints.save_pretrained instead; GPT.from_pretrained reads that format."
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
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
        if MASK_BUFFER.match(key):
            continue
        out[key] = tensor.t() if CONV1D_WEIGHT.match(key) else tensor
    return out


def write_checkpoint_directory(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """config.json + model.safetensors, each written to a temporary file and renamed into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in tensors.items()}
    write_atomically(directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    write_atomically(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def save_hf(model: GPT, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors in transformers' GPT-2 format (GPT2LMHeadModel loads it)."""
    config = config_to_hf(model.config)
    tensors = {
        key: tensor.t() if CONV1D_WEIGHT.match(key) else tensor
        for key, tensor in model.state_dict().items()
        if key != TIED_HEAD
    }
    return write_checkpoint_directory(directory, tensors, config)
