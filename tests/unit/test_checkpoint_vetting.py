"""Sharded checkpoints from someone else: nothing in one runs code when this package reads it (issue 19, items 1-2).

Each payload writes a marker file; a control shows the payload is live (a plain reader runs it), so the refusal is
what keeps the marker from appearing.
"""

import dataclasses
import io
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from gpt2_lightning.checkpoints.lightning import check_distributed_checkpoint
from gpt2_lightning.cli import main
from gpt2_lightning.errors import CheckpointError


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def sharded(directory: Path) -> Path:
    """A small, genuine sharded checkpoint: tensors and an optimizer's non-tensor param_groups, as FSDP2 saves."""
    state = {"model": {"w": torch.zeros(3, 4)},
             "optim": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.95), "params": [0]}]}}
    dcp.save(state, checkpoint_id=directory)
    torch.save({"global_step": 1}, directory / "meta.pt")
    return directory


def _string(text: str) -> bytes:  # pickle's SHORT_BINUNICODE
    return b"\x8c" + bytes([len(text.encode())]) + text.encode()


def dotted_name_index(directory: Path, marker: Path) -> Path:
    """An index naming `os.system` through the metadata module, which imports os: pickle protocol 4 resolves the
    dotted name attribute by attribute (STACK_GLOBAL), so a module admitted whole admits it."""
    sharded(directory)
    payload = (b"\x80\x04" + _string("torch.distributed.checkpoint.metadata") + _string("os.system") + b"\x93"
               + _string(f"echo ran > {marker}") + b"\x85R.")
    (directory / ".metadata").write_bytes(payload)
    return directory


def byte_item_pointing_at_a_payload(directory: Path, marker: Path) -> Path:
    """An index of allowed classes only, whose non-tensor item points at a pickle appended to a shard."""
    sharded(directory)
    metadata = pickle.loads((directory / ".metadata").read_bytes())
    key = next(k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    index = MetadataIndex(key)
    info = metadata.storage_data[index]
    shard = directory / info.relative_path
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(buffer.getvalue())
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(buffer.getvalue()))
    (directory / ".metadata").write_bytes(pickle.dumps(metadata))
    return directory


def test_a_genuine_sharded_checkpoint_passes(tmp_path):
    check_distributed_checkpoint(sharded(tmp_path / "ok.ckpt"))


def test_the_payloads_are_live_for_a_plain_reader(tmp_path):
    marker = tmp_path / "dotted"
    pickle.loads((dotted_name_index(tmp_path / "a.ckpt", marker) / ".metadata").read_bytes())
    assert marker.exists()
    marker = tmp_path / "item"
    dcp_to_torch_save(byte_item_pointing_at_a_payload(tmp_path / "b.ckpt", marker), tmp_path / "full.pt")
    assert marker.read_text() == "ran"  # torch.distributed.checkpoint reads non-tensor items unrestricted


def test_a_dotted_name_through_an_admitted_module_is_refused(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(CheckpointError, match=r"\.metadata names torch\.distributed\.checkpoint\.metadata\.os\.system"):
        check_distributed_checkpoint(dotted_name_index(tmp_path / "a.ckpt", marker))
    assert not marker.exists()


def test_a_non_tensor_item_that_is_not_plain_data_is_refused_everywhere_it_could_be_read(tmp_path):
    marker = tmp_path / "marker"
    crafted = byte_item_pointing_at_a_payload(tmp_path / "last.ckpt", marker)
    refused = r"refusing to load: item 'optim\.param_groups\.0\.\w+' of .*__0_0\.distcp is not plain data"
    with pytest.raises(CheckpointError, match=refused):
        check_distributed_checkpoint(crafted)
    with pytest.raises(SystemExit, match="refusing to load: item"):
        main(["convert", "--checkpoint", str(crafted), "--out", str(tmp_path / "out")])
    assert not marker.exists()


def test_an_item_placed_outside_the_checkpoint_is_refused(tmp_path):
    crafted = sharded(tmp_path / "x.ckpt")
    metadata = pickle.loads((crafted / ".metadata").read_bytes())
    key = next(k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    info = metadata.storage_data[MetadataIndex(key)]
    metadata.storage_data[MetadataIndex(key)] = dataclasses.replace(info, relative_path="../elsewhere.distcp")
    (crafted / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"places item .* outside the checkpoint's own files \('\.\./elsewhere"):
        check_distributed_checkpoint(crafted)
