"""Reading a run's TensorBoard scalars back, for tests that check what a run logged."""

from __future__ import annotations

import glob
import os


def scalars(root: str | os.PathLike, tag: str) -> dict[int, float]:
    """{step: value} of a TensorBoard scalar over every logged version under root (later versions win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(glob.glob(f"{root}/lightning_logs/version_*")):
        events = EventAccumulator(path)
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update({e.step: e.value for e in events.Scalars(tag)})
    return values
