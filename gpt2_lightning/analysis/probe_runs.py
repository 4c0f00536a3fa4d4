"""What every probe section shares: the probe model, the window the windowed probes use, the level that counts as
"learned", and the spec a probe run is cached under."""

from __future__ import annotations

import dataclasses

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.probes import ProbeModel

PROBE = ProbeModel()
PROBE_WINDOW = 16  # the windowed probes' w: reach L·(w−1) = 30 positions through the probe model's 2 layers
LEARNED = 0.9  # "learned the task": accuracy at or above this


def probe_spec(budget: Budget, task, fields: dict, steps: int) -> dict:
    """What a probe run's measurements depend on, beyond the code: task, model, fields, steps and evaluation size."""
    return {"task": dataclasses.asdict(task), "probe": dataclasses.asdict(PROBE), "fields": fields, "steps": steps,
            "eval": budget.probe_eval}
