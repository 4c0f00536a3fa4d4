"""Trainer plumbing the CLI installs: checkpoint files written atomically."""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place.

    A run killed mid-save leaves the previous `last.ckpt` intact (plus a stray `.tmp`), never a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
