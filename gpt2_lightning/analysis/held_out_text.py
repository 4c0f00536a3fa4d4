"""Measurements on held-out text shared by sections 4.1, 4.3 and 4.5: one set of held-out windows for every model,
each position's loss, a next-token answer's score, and the shuffled-prefix control that says how far back a
model's predictions use the text."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import lm_data
from gpt2_lightning.model import GPT

WINDOWS = 32  # held-out windows scored per model
DISTANCES = (1 / 8, 1 / 4, 1 / 2)  # the control's kept context before the scored tail, in window lengths


def held_out(budget: Budget, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): WINDOWS held-out windows of `length` tokens (compact ids), the same for every model."""
    data = lm_data(budget, budget.seeds[0], length)
    xs, ys = [], []
    for x, y in data.val_dataloader():
        xs.append(data.vocab.table[x]), ys.append(data.vocab.table[y])
        if sum(len(b) for b in xs) >= WINDOWS:
            break
    return torch.cat(xs)[:WINDOWS], torch.cat(ys)[:WINDOWS]


@torch.no_grad()
def per_position_loss(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """(windows, T) next-token losses in nats of each position."""
    logits = model(inputs).float()  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).numpy()


@torch.no_grad()
def answer_scores(model: GPT, inputs: torch.Tensor, answers: torch.Tensor) -> tuple[float, list[float]]:
    """(top-1 accuracy, each passage's log-probability in nats) of each passage's answer as the next token."""
    logp = F.log_softmax(model(inputs)[:, -1].float(), dim=-1)
    return (logp.argmax(-1) == answers).float().mean().item(), logp.gather(1, answers[:, None])[:, 0].tolist()


def shuffled_prefix_gain(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, T: int) -> dict[str, list[float]]:
    """Per window, for each kept distance d (a fraction of T): the loss on the last T/4 positions of a T-token
    window when everything more than d·T tokens before that tail is replaced by another window's text, minus the
    loss with the true text. A gain above zero means the model used text more than d·T tokens back."""
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
