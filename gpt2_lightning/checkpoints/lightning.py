"""Lightning training checkpoints (`fit`'s `.ckpt` file, or FSDP2's sharded `.ckpt/` directory): the one reader.

Every command that opens such a checkpoint comes here: `generate` / `convert` / `init_from` read the GPT inside
it (`load_trained_model`), `fit --ckpt_path` vets it before Lightning loads it (`check_lightning_checkpoint`),
and a resume reads its hyper-parameters (`read_hyperparameters`). Single files load with `weights_only=True`; a
sharded directory's `.metadata` index is a pickle that torch.distributed.checkpoint reads without restriction,
so it is read first with an unpickler that admits only the classes such an index is made of.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex

from gpt2_lightning.checkpoints.native import UNREADABLE, config_from_own
from gpt2_lightning.checkpoints.strict import build_strict
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.model import GPT

MODULE_PREFIX = "model."  # GPT2LightningModule holds the GPT as `self.model`
# The exact classes (module, name) the `.metadata` index of a torch.distributed.checkpoint directory is made of,
# besides torch's dtypes; anything else, and any dotted name (pickle resolves those attribute by attribute, so a
# module admitted whole would admit everything it imports), is refused.
DCP_METADATA_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"),
}


def is_lightning_checkpoint(path: Path) -> bool:
    """A checkpoint `fit` wrote: a `.ckpt` file, or FSDP2's sharded `.ckpt` directory (it holds `meta.pt`)."""
    return path.suffix == ".ckpt" and (path.is_file() or (path / "meta.pt").is_file())


class _DistributedMetadataUnpickler(pickle.Unpickler):
    """Unpickles a distributed-checkpoint index, admitting only the classes such an index is made of."""

    def find_class(self, module: str, name: str):
        allowed = "." not in name and ((module, name) in DCP_METADATA_GLOBALS
                                       or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise CheckpointError(
                f"refusing to load: the sharded checkpoint's .metadata names {module}.{name}, which a "
                "torch.distributed.checkpoint index never holds (loading it could run code). Use only checkpoints "
                "you wrote or trust; this one may have been tampered with"
            )
        return super().find_class(module, name)


def check_distributed_checkpoint(path: Path) -> None:
    """Vet a sharded checkpoint before torch.distributed.checkpoint reads it: its `.metadata` index through the
    restricted unpickler (DCP unpickles it freely), and every non-tensor item of its shards (DCP reads those with
    `torch.load(weights_only=False)`) with `weights_only=True`, each from a plain file inside the directory. A
    crafted index or item otherwise runs code on load. Costs one read of the non-tensor items (the optimizer's
    param_groups: kilobytes, at any model size); tensors are not read."""
    index = path / ".metadata"
    if not index.is_file():
        raise CheckpointError(f"{path} is a directory without a .metadata index: not a complete sharded checkpoint")
    with open(index, "rb") as f:
        try:
            metadata = _DistributedMetadataUnpickler(f).load()
        except CheckpointError as err:
            raise CheckpointError(f"{index}: {err}") from None
        except (*UNREADABLE, AttributeError, ImportError, IndexError, KeyError, TypeError, ValueError) as err:
            # what unpickling damaged bytes raises
            raise CheckpointError(f"{index} is unreadable ({type(err).__name__}: {err}): "
                                  "the checkpoint is damaged") from err
    _check_byte_items(path, metadata)


def _check_byte_items(path: Path, metadata: Metadata) -> None:
    """Unpickle each non-tensor item of the shards with `weights_only=True`: what passes is plain data."""
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path / '.metadata'} holds a {type(metadata).__name__}, not a checkpoint index")
    for key, item in metadata.state_dict_metadata.items():
        if not isinstance(item, BytesStorageMetadata):
            continue
        where = metadata.storage_data.get(MetadataIndex(key)) if metadata.storage_data else None
        shard = path / str(getattr(where, "relative_path", ""))
        if where is None or shard.parent != path or shard.is_symlink() or not shard.is_file():
            raise CheckpointError(f"{path}: the index places item {key!r} outside the checkpoint's own files "
                                  f"({getattr(where, 'relative_path', None)!r}); the checkpoint is damaged or "
                                  "tampered with")
        if getattr(where, "transform_descriptors", None):
            raise CheckpointError(f"{shard}: item {key!r} is stored transformed {where.transform_descriptors}, "
                                  "which this reader does not vet; gather the checkpoint where it was written")
        with open(shard, "rb") as f:
            f.seek(where.offset)
            data = f.read(where.length)
        try:
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"refusing to load: item {key!r} of {shard} is not plain data ({str(err).splitlines()[0][:160]}): "
                "loading it could run code. Use only checkpoints you wrote or trust"
            ) from None
        except UNREADABLE as err:
            raise CheckpointError(f"{shard}: item {key!r} is unreadable ({type(err).__name__}); the checkpoint is "
                                  "damaged") from err


def _load(path: Path, mmap: bool = False) -> dict:
    """torch.load with weights_only=True (GPTConfig allowed), a damaged file named as such."""
    try:
        with torch.serialization.safe_globals([GPTConfig]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UNREADABLE as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(err).__name__}: {str(err).splitlines()[0][:120]}); resume from "
            "another checkpoint, or start a new run"
        ) from err


def check_lightning_checkpoint(path: Path) -> None:
    """Vet a checkpoint before Lightning loads it: a sharded index with the restricted unpickler, a single file's
    integrity (memory-mapped: nothing is read into memory)."""
    if path.is_dir():
        check_distributed_checkpoint(path)
    else:
        _load(path, mmap=True)


def read_metadata(path: Path) -> dict:
    """A checkpoint's entries besides the weights and optimizer state (hyper-parameters, loops, the data module's
    state): a sharded checkpoint keeps them in `meta.pt`; a single file is mapped, its tensors never read."""
    return _load(path / "meta.pt") if path.is_dir() else _load(path, mmap=True)


def read_hyperparameters(path: Path) -> dict:
    """The module's hyper-parameters saved in a checkpoint."""
    return read_metadata(path).get("hyper_parameters", {})


def read_lightning_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint as one dict: a `.ckpt` file, or the sharded `.ckpt` directory FSDP2 writes."""
    if not path.is_dir():
        return _load(path)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    check_distributed_checkpoint(path)
    with tempfile.TemporaryDirectory() as tmp:  # gather the shards into one file, without a process group
        dcp_to_torch_save(path, Path(tmp) / "full.pt")
        checkpoint = _load(Path(tmp) / "full.pt")
    checkpoint.update(_load(path / "meta.pt"))
    return checkpoint


def strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without torch.compile's `_orig_mod.`: a whole-model compile (this package before it compiled block by
    block, or another script) saved them so; the eager model has none."""
    return {key.replace("_orig_mod.", ""): value for key, value in state.items()}


def load_trained_model(path: str | os.PathLike) -> GPT:
    """The GPT inside a Lightning checkpoint `gpt2-lightning fit` wrote (single file or sharded), in eval mode: the
    architecture from the module's hyperparameters, the weights from its `model.` submodule, every one checked."""
    path = Path(path)
    checkpoint = read_lightning_checkpoint(path)
    try:
        config, state = checkpoint["hyper_parameters"]["config"], checkpoint["state_dict"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path} is not a gpt2-lightning training checkpoint (it has no {err}); pass a checkpoint `fit` wrote"
        ) from err
    config = config if isinstance(config, GPTConfig) else config_from_own(dict(config))
    weights = {k.removeprefix(MODULE_PREFIX): v for k, v in strip_compile_prefix(state).items()
               if k.startswith(MODULE_PREFIX)}
    return build_strict(config, weights, source=str(path))
