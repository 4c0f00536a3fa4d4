"""Section 4.3, context use on held-out text: the per-position loss L(t) on the same held-out windows out to 8× the
training length, with RoPE raw and scaled (position interpolation, NTK-aware), and a shuffled-prefix control that
measures how far back each model's predictions use the text (issue 23, item 3).

The windows are identical for every model and factor: a causal model's loss at position t depends only on the first
t + 1 tokens, so one pass over windows of 8T gives L(t) at every length up to 8T. Confidence intervals are bootstrap
intervals over windows (the held-out text is a fixed sample).
"""

from __future__ import annotations

import numpy as np

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.held_out_text import held_out, per_position_loss, shuffled_prefix_gain
from gpt2_lightning.analysis.statistics import bootstrap_ci
from gpt2_lightning.checkpoints import load

FACTOR = 8  # the longest window, in training lengths
SCALINGS = {"raw": None, "interpolated ×8": "linear", "NTK-aware ×8": "ntk"}
ROPE_VARIANTS = ("rope", "rope+gqa2+window")


def _bands(T: int) -> list[tuple[int, int]]:
    """Position bands [0, T), [T, 2T), [2T, 4T), … [FACTOR/2 · T, FACTOR · T)."""
    bands, start = [(0, T)], T
    while start < FACTOR * T:
        bands.append((start, 2 * start))
        start *= 2
    return bands


def measure(budget: Budget, results: dict[str, list[dict]]) -> dict:
    """{"bands": [[start, end], ...], "curves": {model: {band: [mean loss per window]}}, "control": {variant:
    {distance: [gain per window]}}} for seed 1 of each variant: RoPE variants raw and scaled out to FACTOR ×
    block_size; learned-position variants within their block_size."""
    T = budget.block_size
    inputs, targets = held_out(budget, FACTOR * T)
    bands = _bands(T)
    curves, control = {}, {}
    for name, per_seed in results.items():
        model = load(per_seed[0]["weights"]).eval()
        rope = name in ROPE_VARIANTS
        length = FACTOR * T if rope else T  # learned positions stop at block_size: the first band only
        for label, scaling in (SCALINGS if rope else {"raw": None}).items():
            if rope:
                model.scale_rope(scaling, FACTOR if scaling else 1.0)
            losses = per_position_loss(model, inputs[:, :length], targets[:, :length])
            curves[f"{name}, {label}"] = {f"{a}-{b}": losses[:, a:b].mean(axis=1).tolist()
                                          for a, b in bands if b <= length}
        if rope:
            model.scale_rope(None)  # the control measures the model as trained
        control[name] = shuffled_prefix_gain(model, inputs, targets, T)
    return {"bands": [list(b) for b in bands], "curves": curves, "control": control, "windows": len(inputs)}


def judge(found: dict) -> dict:
    """Bootstrap intervals over windows: each curve's mean loss per band, and each control gain per distance; a model
    "uses text d back" when the gain's interval lies above zero."""
    def summary(values: list[float]) -> tuple[float, tuple[float, float]]:
        return float(np.mean(values)), bootstrap_ci(values)

    curves = {model: {band: summary(v) for band, v in per_band.items()} for model, per_band in found["curves"].items()}
    control = {name: {d: summary(v) for d, v in per_d.items()} for name, per_d in found["control"].items()}
    uses = {name: [d for d, (_, (low, _)) in per_d.items() if low > 0] for name, per_d in control.items()}
    # the expectation: past the training length NTK-aware scaling keeps RoPE's loss below raw extrapolation's
    last = "-".join(map(str, found["bands"][-1]))
    raw, ntk = (np.array(found["curves"][f"rope, {label}"][last]) for label in ("raw", "NTK-aware ×8"))
    gain = summary((raw - ntk).tolist())  # per window: paired over the same text
    low, high = gain[1]
    outcome = "held" if low > 0 else "did not hold" if high < 0 else "inconclusive"
    return {"curves": curves, "control": control, "uses": uses, "ntk_gain": gain, "verdict": outcome}
