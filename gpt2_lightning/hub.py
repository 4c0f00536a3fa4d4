"""The Hugging Face Hub: whether it can be reached, and fetching OpenAI's GPT-2 checkpoints from it.

Light on purpose (no torch): the corpus readers ask `hub_unreachable` before streaming a dataset, and
`gpt2_lightning.checkpoints` resolves hub ids through `resolve_checkpoint`.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from gpt2_lightning.config import PRESETS
from gpt2_lightning.errors import CheckpointError

OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to skip network attempts"
# Short names of OpenAI's four checkpoints (the GPT-2 presets) -> their Hub repositories.
HUB_MODELS = {name: f"openai-community/{name}" for name in PRESETS}
LOCAL_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".json")  # a name ending so is a path, not a hub id


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (no name resolution, no connection within 5 s), or None.

    In offline mode (HF_HUB_OFFLINE=1) the libraries fail at once by themselves, or serve their cache; behind an
    HTTP(S) proxy a direct connection says nothing: both are left to the download itself.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return None
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        return f"{host} is unreachable ({err.strerror or err}); {OFFLINE_HINT}"
    return None


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

    repo_id = hub_repo_id(name)
    target = Path(directory) if directory is not None else checkpoints_dir() / repo_id.split("/")[-1]
    existed = target.exists()
    try:
        if (reason := hub_unreachable()) is not None:
            raise ConnectionError(reason)
        for filename in ("config.json", "model.safetensors"):
            hf_hub_download(repo_id, filename, local_dir=target)
    except Exception as err:  # offline, unreachable, unknown repo, no safetensors file: the chain keeps the cause
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"Get the weights where the Hub is reachable with `gpt2-lightning download {name}` (they land in "
            f"{target}), or pass a local directory holding config.json and model.safetensors."
        ) from err
    return target


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory as it is; a hub id → its directory under checkpoints/, downloaded if absent."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.suffix in LOCAL_SUFFIXES or name.startswith((".", "/", "~")) or (
            path.parent != Path(".") and path.parent.is_dir()):  # out/gqa4 where out/ exists: a mistyped path
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
