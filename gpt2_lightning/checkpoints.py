"""GPT-2 weights in and out: OpenAI's checkpoints as transformers and the Hugging Face Hub hold them.

transformers stores GPT-2's projections as `Conv1D` modules whose weight is (in, out), the transpose of
`nn.Linear`'s (out, in); keys come with a `transformer.` prefix (from `GPT2LMHeadModel`) or without it (from
`GPT2Model`, as on the Hub), and may carry the attention-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`
and a copy of the tied `lm_head.weight`. Loading normalises all of that and then insists on an exact match.

Variants (RoPE, GQA, sliding window, no biases) have no transformers GPT-2 equivalent; they are saved by
`save_pretrained` in this package's own format: config.json with `"model_type": "gpt2-lightning"` and every
`GPTConfig` field, and model.safetensors with this model's own keys and layouts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gpt2_lightning.model import GPT, GPTConfig

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
OWN_MODEL_TYPE = "gpt2-lightning"  # config.json's model_type in this package's own format
LOCAL_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json")  # a name ending so is a path, not a hub id


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message says what to do."""


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
    if unsupported:
        raise CheckpointError("config.json asks for what this GPT-2 does not implement: " + "; ".join(unsupported))
    try:
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            block_size=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=hf.get("n_embd", 768),
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


# What the `.metadata` index of a torch.distributed.checkpoint directory may name; anything else is refused.
DCP_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
DCP_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                        ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
                        ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}


class _DistributedMetadataUnpickler(pickle.Unpickler):
    """Unpickles a distributed-checkpoint index, admitting only the classes such an index is made of."""

    def find_class(self, module: str, name: str):
        allowed = (module in DCP_METADATA_MODULES or (module, name) in DCP_METADATA_GLOBALS
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise CheckpointError(
                f"refusing to load: the sharded checkpoint's .metadata names {module}.{name}, which a "
                "torch.distributed.checkpoint index never holds (loading it could run code). Use only checkpoints "
                "you wrote or trust; this one may have been tampered with"
            )
        return super().find_class(module, name)


def check_distributed_checkpoint(path: Path) -> None:
    """Read a sharded checkpoint's `.metadata` with the restricted unpickler before torch.distributed.checkpoint,
    which unpickles it without restriction, is allowed to (a crafted index otherwise runs code on load)."""
    index = path / ".metadata"
    if not index.is_file():
        raise CheckpointError(f"{path} is a directory without a .metadata index: not a complete sharded checkpoint")
    with open(index, "rb") as f:
        try:
            _DistributedMetadataUnpickler(f).load()
        except CheckpointError as err:
            raise CheckpointError(f"{index}: {err}") from None
        except Exception as err:
            raise CheckpointError(f"{index} is unreadable ({type(err).__name__}: {err}): the checkpoint is damaged") from None


def read_lightning_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint as one dict: a `.ckpt` file, or the sharded `.ckpt` directory FSDP2 writes."""
    with torch.serialization.safe_globals([GPTConfig]):
        if not path.is_dir():
            return torch.load(path, map_location="cpu", weights_only=True)
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        check_distributed_checkpoint(path)

        with tempfile.TemporaryDirectory() as tmp:  # gather the shards into one file, without a process group
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            checkpoint = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)
        checkpoint.update(torch.load(path / "meta.pt", map_location="cpu", weights_only=True))
        return checkpoint


def is_lightning_checkpoint(path: Path) -> bool:
    return path.suffix == ".ckpt" and (path.is_file() or (path / "meta.pt").is_file())


def load_lightning_checkpoint(path: Path) -> GPT:
    """The GPT inside a Lightning checkpoint written by `gpt2-lightning fit` (single file or sharded)."""
    try:
        checkpoint = read_lightning_checkpoint(path)
        config = checkpoint["hyper_parameters"]["config"]
        state = checkpoint["state_dict"]
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable gpt2-lightning training checkpoint ({type(err).__name__}: {err})"
        ) from err
    config = config if isinstance(config, GPTConfig) else config_from_own(dict(config))
    prefix = "model."
    weights = {k.removeprefix(prefix).replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)}
    model = GPT(config)
    load_state_dict_strict(model, weights, source=str(path))
    return model.eval()


def load_pretrained(name_or_path: str | os.PathLike) -> GPT:
    """`GPT.from_pretrained`: an HF-format or own-format directory, a hub id, or a Lightning checkpoint → a GPT in
    eval mode, every weight checked."""
    if is_lightning_checkpoint(Path(name_or_path)):
        return load_lightning_checkpoint(Path(name_or_path))
    directory = resolve_checkpoint(name_or_path)
    config, is_hf = read_config(directory)
    tensors = read_tensors(directory)
    model = GPT(config)
    load_state_dict_strict(model, state_dict_from_hf(tensors) if is_hf else tensors, source=str(directory))
    return model.eval()


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file and rename, so an interrupted save never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in tensors.items()}
    _write_atomically(directory / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _write_atomically(directory / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def save_hf(model: GPT, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors in transformers' GPT-2 format (GPT2LMHeadModel loads it)."""
    config = config_to_hf(model.config)
    tensors = {
        key: tensor.t() if CONV1D_WEIGHT.match(key) else tensor
        for key, tensor in model.state_dict().items()
        if key != TIED_HEAD
    }
    return _save(directory, tensors, config)


def save_pretrained(model: GPT, directory: str | os.PathLike) -> Path:
    """Write any variant as config.json (every GPTConfig field) + model.safetensors; GPT.from_pretrained reads it."""
    config = {"model_type": OWN_MODEL_TYPE, **dataclasses.asdict(model.config)}
    tensors = {key: tensor for key, tensor in model.state_dict().items() if key != TIED_HEAD}
    return _save(directory, tensors, config)


def mha_to_gqa(model: GPT, n_kv_head: int) -> GPT:
    """A copy of `model` with `n_kv_head` key/value heads, each the mean of the heads in its group.

    This is the GQA paper's conversion (Ainslie et al. 2023, §2.1) before uptraining: key/value head j of the
    result averages the original heads j·g … j·g + g - 1 (g = n_head // n_kv_head), weights and biases alike,
    which matches query head i reading K/V head i // g. Exact when the heads within each group are equal.
    """
    config = model.config
    if config.kv_heads != config.n_head:
        raise ValueError(f"mha_to_gqa needs a multi-head model; this one already has n_kv_head={config.n_kv_head}")
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
