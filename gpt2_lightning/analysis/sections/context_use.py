"""Section 4.3, context use on held-out text: the per-position loss L(t) on the same held-out windows out to 8× the
training length, with RoPE raw and scaled (position interpolation, NTK-aware), and a shuffled-prefix control that
measures how far back each model's predictions use the text (issue 23, item 3).

The windows are identical for every model and factor: a causal model's loss at position t depends only on the first
t + 1 tokens, so one pass over windows of 8T gives L(t) at every length up to 8T. Confidence intervals are bootstrap
intervals over windows (the held-out text is a fixed sample).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import lm_data
from gpt2_lightning.analysis.statistics import bootstrap_ci
from gpt2_lightning.checkpoints import load
from gpt2_lightning.model import GPT

FACTOR = 8  # the longest window, in training lengths
SCALINGS = {"raw": None, "interpolated ×8": "linear", "NTK-aware ×8": "ntk"}
ROPE_VARIANTS = ("rope", "rope+gqa2+window")
WINDOWS = 32  # held-out windows scored per model
DISTANCES = (1 / 8, 1 / 4, 1 / 2)  # the control's kept context before the scored tail, in training lengths


@torch.no_grad()
def per_position_loss(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """(windows, T) next-token losses in nats of each position."""
    logits = model(inputs).float()  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).numpy()


def _bands(T: int) -> list[tuple[int, int]]:
    """Position bands [0, T), [T, 2T), [2T, 4T), … [FACTOR/2 · T, FACTOR · T)."""
    bands, start = [(0, T)], T
    while start < FACTOR * T:
        bands.append((start, 2 * start))
        start *= 2
    return bands


def held_out(budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
    """WINDOWS held-out windows of FACTOR × block_size tokens (compact ids), the same for every model."""
    data = lm_data(budget, budget.seeds[0], FACTOR * budget.block_size)
    xs, ys = [], []
    for x, y in data.val_dataloader():
        xs.append(data.vocab.table[x]), ys.append(data.vocab.table[y])
        if sum(len(b) for b in xs) >= WINDOWS:
            break
    return torch.cat(xs)[:WINDOWS], torch.cat(ys)[:WINDOWS]


def _shuffled_prefix_gain(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, T: int) -> dict[str, list[float]]:
    """Per window, for each kept distance d: the loss on the last T/4 positions of a T-token window when everything
    more than d tokens before that tail is replaced by another window's text, minus the loss with the true text.
    A gain above zero means the model used text more than d tokens back."""
    x, y = inputs[:, :T], targets[:, :T]
    tail = T // 4
    true = per_position_loss(model, x, y)[:, -tail:].mean(axis=1)
    gains = {}
    for d in DISTANCES:
        keep = tail + int(d * T)
        swapped = x.clone()
        swapped[:, : T - keep] = x.roll(1, dims=0)[:, : T - keep]  # another window's text, same positions
        gains[f"{d:g}"] = (per_position_loss(model, swapped, y)[:, -tail:].mean(axis=1) - true).tolist()
    return gains


def measure(budget: Budget, results: dict[str, list[dict]]) -> dict:
    """{"bands": [[start, end], ...], "curves": {model: {band: [mean loss per window]}}, "control": {variant:
    {distance: [gain per window]}}} for seed 1 of each variant: RoPE variants raw and scaled out to FACTOR ×
    block_size; learned-position variants within their block_size."""
    T = budget.block_size
    inputs, targets = held_out(budget)
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
        control[name] = _shuffled_prefix_gain(model, inputs, targets, T)
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
