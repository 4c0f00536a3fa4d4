"""Sections 3.3 and 3.4: what rotary positions can resolve, what each position encoding carries to positions it never
trained at, and why RoPE + a window failed to learn a copy that sits inside its window.

- **Resolution.** The fixed-offset copy (`RepeatedSegments`) is one positional attention pattern: look a fixed
  distance back. RoPE can build it only from head_dim/2 rotations at θ_i = base^(−2i/head_dim) rad/token
  (RoFormer): at head_dim 8 and base 10⁴ those are 1, 0.1, 0.01 and 0.001, two of which barely turn over the
  64-token sequence. So the copy runs at head_dim 8, 16 and 32 — n_head 8, 4 and 2 at the probe's width of 64:
  the same weights, split into fewer, wider heads — and at bases 10⁴ and 100, each against learned positions at
  the same head_dim.
- **Position shift.** Models trained at absolute positions [0, 64) read the same sequences at [64, 128) through
  `Shifted` (the start position of a cache that holds nothing): learned positions then read table rows no
  training step reached; RoPE's attention scores depend on offsets only.
- **Induction at a random offset** (`RandomOffsetInduction`): the earlier occurrence must be found by content.
- **Kernel ablation.** RoPE + window trained through the banded kernel (what `attention` picks at T >= 2w on a
  CPU) and through the dense mask, seed for seed: both are exact, so a failure that follows the seed is
  optimisation, one that follows the kernel a kernel problem. Controls: the same window with learned positions,
  and with RoPE at head_dim 32.

Steps to learn are censored times (a run that never got there is censored at its last evaluation): Kaplan–Meier
medians and log-rank tests, Holm-adjusted within each family.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import statistics
from collections.abc import Iterator

import torch
from torch import nn

import gpt2_lightning.attention as attention_module
from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.probe_runs import LEARNED, PROBE, PROBE_WINDOW, probe_spec
from gpt2_lightning.analysis.probes import (
    AccuracyCurve,
    ProbeModel,
    RandomOffsetInduction,
    RepeatedSegments,
    accuracy,
    eval_generator,
    steps_to,
    train_probe,
)
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.statistics import (
    ALPHA,
    Survival,
    Verdict,
    holm,
    km_median,
    logrank,
    noninferiority,
    paired,
    verdict,
)
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

TASK = RepeatedSegments()
INDUCTION = RandomOffsetInduction()
HEAD_DIMS = (8, 16, 32)
BASES = (10000.0, 100.0)  # the usual base, and one whose slowest rotation turns 0.85–2 rad over the sequence
SHIFT = TASK.length  # trained at positions [0, 64), tested at [64, 128)
SHIFT_HEAD_DIM = 16
INDUCTION_HEAD_DIM = 16
LENGTH_FACTORS = (1, 2, 4, 8)
HOLDS = 0.05  # length generalisation holds while accuracy stays within this of its 1× value
SHIFT_MARGIN = 0.05  # RoPE transfers when shifted accuracy is within this of in-place accuracy in every seed
LAG_MARGIN = 0.1  # "no slower": steps to learn at most this fraction of the run's steps above the reference's
CURVE_BATCH = 64  # sequences per point of a learning curve (~1,800 copy targets: a standard error under 0.01 at 90%);
# the budget's probe_eval sequences score the final models, here 60 points a run would cost more than the training


@dataclasses.dataclass(frozen=True)
class Variant:
    """One probe configuration at the probe's width: `head_dim` sets n_head (width / head_dim); `dense` forces
    windowed attention through the dense mask; `positions`, the model's block_size when above the task's length
    (learned positions then have rows that training never reaches)."""

    pos_encoding: str = "learned"
    head_dim: int = PROBE.n_embd // PROBE.n_head
    rope_theta: float = 10000.0
    window: int | None = None
    dense: bool = False
    positions: int | None = None

    @property
    def name(self) -> str:
        encoding = "learned" if self.pos_encoding == "learned" else f"rope θ={self.rope_theta:g}"
        name = f"{encoding}{' + window' if self.window else ''}, head_dim {self.head_dim}"
        return name + (" (dense mask)" if self.dense else "") + (f" ({self.positions} positions)"
                                                                 if self.positions else "")

    @property
    def key(self) -> str:
        """The name as a run-cache key."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    @property
    def probe(self) -> ProbeModel:
        """The probe model with this head_dim: its width, n_embd / head_dim heads."""
        return dataclasses.replace(PROBE, n_head=PROBE.n_embd // self.head_dim)

    def config(self, task) -> GPTConfig:
        """The model trained on `task`."""
        fields = {"pos_encoding": self.pos_encoding, "sliding_window": self.window}
        if self.pos_encoding == "rope":
            fields["rope_theta"] = self.rope_theta
        config = self.probe.config(task, **fields)
        return dataclasses.replace(config, block_size=self.positions) if self.positions else config


LEARNED_AT = {hd: Variant(head_dim=hd) for hd in HEAD_DIMS}
ROPE_AT = {(hd, base): Variant("rope", hd, base) for hd in HEAD_DIMS for base in BASES}
RESOLUTION = [v for hd in HEAD_DIMS for v in (LEARNED_AT[hd], *(ROPE_AT[hd, base] for base in BASES))]
WINDOWED = Variant("rope", window=PROBE_WINDOW)  # the probe's shape: head_dim 8, base 10⁴
KERNELS = {"banded kernel": WINDOWED, "dense mask": dataclasses.replace(WINDOWED, dense=True)}
# the window without RoPE, and RoPE + window with 16 frequencies, each against the same model without the window
WINDOW_CONTROLS = {Variant(window=PROBE_WINDOW): LEARNED_AT[8],
                   Variant("rope", 32, window=PROBE_WINDOW): ROPE_AT[32, 1e4]}
SHIFT_PAIR = {"learned": Variant(head_dim=SHIFT_HEAD_DIM, positions=SHIFT + TASK.length),
              "rope": ROPE_AT[SHIFT_HEAD_DIM, 1e4]}
INDUCTION_PAIR = {"learned": LEARNED_AT[INDUCTION_HEAD_DIM], "rope": ROPE_AT[INDUCTION_HEAD_DIM, 1e4]}
LENGTH_VARIANTS = (LEARNED_AT[8], ROPE_AT[8, 1e4], WINDOWED)
COPY_VARIANTS = [*RESOLUTION, *KERNELS.values(), *WINDOW_CONTROLS, SHIFT_PAIR["learned"]]


def slowest_turn(head_dim: int, base: float, length: int = TASK.length) -> float:
    """The angle (rad) RoPE's slowest frequency, base^(−(head_dim − 2)/head_dim), turns over `length` positions."""
    return length * base ** (-(head_dim - 2) / head_dim)


class PositionOffset:
    """A `Cache` (gpt2_lightning.model) that holds nothing: ids are read from absolute position `pos` on, and
    attention sees only them."""

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


class Shifted(nn.Module):
    """`model` reading its (B, T) input at absolute positions [start, start + T), with nothing before them: the
    position-shift test's view of a trained model. Learned positions refuse past block_size."""

    def __init__(self, model: GPT, start: int) -> None:
        super().__init__()
        self.model, self.start = model, start

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, kv_cache=PositionOffset(self.start))


@contextlib.contextmanager
def attention_kernel(dense: bool) -> Iterator[None]:
    """Windowed attention through the dense (T, S) mask instead of the banded kernel while inside, when `dense`
    (`attention` reads `BANDED_MIN_WINDOWS` at each call); restored on the way out. The CPU kernels: on a CUDA
    device windowed attention is FlexAttention either way."""
    saved = attention_module.BANDED_MIN_WINDOWS
    if dense:
        attention_module.BANDED_MIN_WINDOWS = math.inf
    try:
        yield
    finally:
        attention_module.BANDED_MIN_WINDOWS = saved


def every(steps: int) -> int:
    """Steps between two evaluations of a learning curve: 60 points a run."""
    return max(1, steps // 60)


def _spec(budget: Budget, task, variant: Variant, steps: int) -> dict:
    return {**probe_spec(budget, task, dataclasses.asdict(variant), steps), "every": every(steps)}


def _mean_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float | str:
    """Mean accuracy, or the model's refusal (learned positions past block_size), its first clause."""
    try:
        return accuracy(model, inputs, targets).float().mean().item()
    except ValueError as err:
        return str(err).split(";")[0]


def _copy_run(budget: Budget, variant: Variant, seed: int) -> dict:
    """The learning curve; accuracy in place and shifted by SHIFT on the same fresh sequences; for LENGTH_VARIANTS,
    accuracy at 1–8× the training length (on as many tokens at each)."""
    generator = eval_generator(seed)
    curve = AccuracyCurve(TASK.batch(CURVE_BATCH, generator), every(budget.copy_steps))
    with attention_kernel(variant.dense):
        model = train_probe(TASK, variant.config(TASK), variant.probe, budget.copy_steps, seed, [curve])
        inputs, targets = TASK.batch(budget.probe_eval, generator)
        result = {"curve": curve.points, "in_place": _mean_accuracy(model, inputs, targets),
                  "shifted": _mean_accuracy(Shifted(model, SHIFT), inputs, targets)}
        if variant in LENGTH_VARIANTS:  # probe_eval / f sequences of f times the length: the same tokens at each f
            result["lengths"] = {str(f): _mean_accuracy(model, *TASK.sample(max(1, budget.probe_eval // f),
                                                                            generator, f * TASK.length))
                                 for f in LENGTH_FACTORS}
    return result


def _induction_run(budget: Budget, variant: Variant, seed: int) -> dict:
    curve = AccuracyCurve(INDUCTION.batch(CURVE_BATCH, eval_generator(seed)), every(budget.induction_steps))
    train_probe(INDUCTION, variant.config(INDUCTION), variant.probe, budget.induction_steps, seed, [curve])
    return {"curve": curve.points}


def measure(budget: Budget, cache: RunCache) -> dict[str, dict[str, list[dict]]]:
    """{"copy": {variant name: [per seed: {"curve": [(step, accuracy)], "in_place", "shifted": accuracy or the
    refusal, "lengths" (LENGTH_VARIANTS): {factor: accuracy or the refusal}}]}, "induction": {name: [{"curve"}]}}."""
    copy = {v.name: [cache.run(f"copy-{v.key}-seed{seed}", _spec(budget, TASK, v, budget.copy_steps),
                               lambda v=v, seed=seed: _copy_run(budget, v, seed)) for seed in budget.rope_seeds]
            for v in COPY_VARIANTS}
    induction = {v.name: [cache.run(f"induction-{v.key}-seed{seed}",
                                    _spec(budget, INDUCTION, v, budget.induction_steps),
                                    lambda v=v, seed=seed: _induction_run(budget, v, seed))
                          for seed in budget.induction_seeds] for v in INDUCTION_PAIR.values()}
    return {"copy": copy, "induction": induction}


# ---- judgements ------------------------------------------------------------------------------------------------


def time_to_learn(run: dict) -> tuple[int, bool]:
    """(steps, reached): the first step at LEARNED, or the last evaluated step with reached False (censored)."""
    step = steps_to(run["curve"], LEARNED)
    return (step, True) if step is not None else (run["curve"][-1][0], False)


def _times(runs: list[dict]) -> list[tuple[int, bool]]:
    return [time_to_learn(r) for r in runs]


def _logrank(a: list[dict], b: list[dict]) -> Survival:
    """Do a's runs reach LEARNED sooner than b's (Survival.diff < 0)?"""
    return logrank(*zip(*_times(a)), *zip(*_times(b)))


def no_slower(a: list[dict], b: list[dict], test: Survival, p: float | None, margin: float) -> Verdict:
    """Is a no slower to learn than b? "did not hold" when b was significantly sooner (`test`, a against b, at the
    adjusted `p`); "held" when every run reached LEARNED and a's steps exceed b's by significantly less than
    `margin` (paired by seed, one-sided); otherwise "inconclusive" (censored runs cannot show non-inferiority)."""
    if p is not None and p < ALPHA and test.diff > 0:
        return "did not hold"
    times_a, times_b = _times(a), _times(b)
    if all(reached for _, reached in times_a + times_b):
        p_margin = noninferiority(paired([t for t, _ in times_a], [t for t, _ in times_b]), margin)
        if p_margin is not None and p_margin < ALPHA:
            return "held"
    return "inconclusive"


def _all(verdicts: list[Verdict]) -> Verdict:
    """One verdict from several that must all hold."""
    if "did not hold" in verdicts:
        return "did not hold"
    return "held" if all(v == "held" for v in verdicts) else "inconclusive"


def judge_resolution(copy: dict[str, list[dict]], steps: int) -> dict:
    """Steps to LEARNED per variant of the head_dim × base grid; every RoPE variant against learned positions at its
    head_dim, and two comparisons within RoPE (16 against 4 frequencies; base 100 against 10⁴ at head_dim 8) —
    log-rank, Holm over these eight. Expected (RoFormer's frequencies): more frequencies and a lower base learn the
    offset sooner; and (the review's reading of the old probe) with head_dim ≥ 16 RoPE is no slower than learned
    positions, within LAG_MARGIN of the run."""
    tests = {ROPE_AT[hd, base].name: _logrank(copy[ROPE_AT[hd, base].name], copy[LEARNED_AT[hd].name])
             for hd in HEAD_DIMS for base in BASES}
    tests["frequencies"] = _logrank(copy[ROPE_AT[32, 1e4].name], copy[ROPE_AT[8, 1e4].name])
    tests["base"] = _logrank(copy[ROPE_AT[8, 100.0].name], copy[ROPE_AT[8, 1e4].name])
    adjusted = dict(zip(tests, holm([t.p for t in tests.values()])))
    catch_up = {hd: no_slower(copy[ROPE_AT[hd, 1e4].name], copy[LEARNED_AT[hd].name], tests[ROPE_AT[hd, 1e4].name],
                              adjusted[ROPE_AT[hd, 1e4].name], LAG_MARGIN * steps) for hd in HEAD_DIMS[1:]}
    times = {v.name: _times(copy[v.name]) for v in RESOLUTION}
    return {"times": times, "medians": {name: km_median(*zip(*t)) for name, t in times.items()},
            "tests": tests, "adjusted": adjusted, "catch_up": catch_up,
            "all_learned": all(reached for per_seed in times.values() for _, reached in per_seed),
            "verdicts": {"frequencies": verdict(tests["frequencies"], "lower", p=adjusted["frequencies"]),
                         "base": verdict(tests["base"], "lower", p=adjusted["base"]),
                         "no_slower": _all(list(catch_up.values()))}}


def judge_shift(copy: dict[str, list[dict]]) -> dict:
    """Trained at positions [0, 64), read at [64, 128). Expected: RoPE transfers — its shifted accuracy within
    SHIFT_MARGIN of in place in every seed (an exact check: the same sequences through the same model, whose scores
    depend on offsets only) — and learned positions do not: shifted accuracy significantly lower (paired by seed;
    "did not hold" if shown equivalent within SHIFT_MARGIN). Both must have learned the task in place (LEARNED in
    every seed), else the test says nothing: "inconclusive"."""
    runs = {k: copy[v.name] for k, v in SHIFT_PAIR.items()}
    in_place = {k: [r["in_place"] for r in rs] for k, rs in runs.items()}
    shifted = {k: [r["shifted"] for r in rs] for k, rs in runs.items()}
    learned_in_place = all(a >= LEARNED for values in in_place.values() for a in values)
    rope_gap = max(abs(s - a) for s, a in zip(shifted["rope"], in_place["rope"]))
    test = paired(shifted["learned"], in_place["learned"])
    learned_fails = verdict(test, "lower", margin=SHIFT_MARGIN)
    if not learned_in_place:
        outcome: Verdict = "inconclusive"
    else:
        outcome = _all(["held" if rope_gap <= SHIFT_MARGIN else "did not hold", learned_fails])
    refusal = copy[LEARNED_AT[8].name][0]["shifted"]
    return {"in_place": in_place, "shifted": shifted, "learned_in_place": learned_in_place, "rope_gap": rope_gap,
            "learned_test": test, "learned_verdict": learned_fails, "verdict": outcome,
            "refusal": refusal if isinstance(refusal, str) else None}


def judge_kernel(copy: dict[str, list[dict]], steps: int) -> dict:
    """RoPE + window through the banded kernel and the dense mask, seed for seed. Expected: both exact, so every
    seed's outcome (the step it reached LEARNED, or censored) is the same under both — "held" exactly so;
    "did not hold" if the log-rank test tells the kernels apart; otherwise "inconclusive". Also (the review's
    expectation): RoPE + window no slower than RoPE alone, the offset being inside the window; and the window's
    effect with learned positions and with RoPE at head_dim 32 — each windowed model against itself without the
    window, log-rank, Holm over this family of four."""
    banded, dense = (copy[v.name] for v in KERNELS.values())
    pairs = {"kernel": (dense, banded), "window": (banded, copy[ROPE_AT[8, 1e4].name]),
             **{w.name: (copy[w.name], copy[base.name]) for w, base in WINDOW_CONTROLS.items()}}
    tests = {k: _logrank(a, b) for k, (a, b) in pairs.items()}
    adjusted = dict(zip(tests, holm([t.p for t in tests.values()])))
    same = _times(banded) == _times(dense)
    gap = max(abs(x[1] - y[1]) for rb, rd in zip(banded, dense) for x, y in zip(rb["curve"], rd["curve"]))
    apart = adjusted["kernel"] is not None and adjusted["kernel"] < ALPHA
    kernel: Verdict = "held" if same else ("did not hold" if apart else "inconclusive")
    times = {v.name: _times(copy[v.name]) for v in [*KERNELS.values(), ROPE_AT[8, 1e4], *WINDOW_CONTROLS]}
    return {"times": times, "medians": {name: km_median(*zip(*t)) for name, t in times.items()}, "tests": tests,
            "adjusted": adjusted, "same_outcomes": same, "curve_gap": gap,
            "failed": sum(not reached for _, reached in _times(banded)), "seeds": len(banded),
            "verdicts": {"kernel": kernel,
                         "window": no_slower(banded, copy[ROPE_AT[8, 1e4].name], tests["window"], adjusted["window"],
                                             LAG_MARGIN * steps)}}


def judge_induction(induction: dict[str, list[dict]]) -> dict:
    """Random-offset induction per encoding. Expected (Olsson et al. 2022): a two-layer model forms an induction
    head, with either encoding, since matching by content needs no position — "held" when every encoding's
    Kaplan–Meier median reached LEARNED; a budget in which it did not form cannot say it never would:
    "inconclusive", never "did not hold". RoPE against learned positions by log-rank, no expectation."""
    runs = {k: induction[v.name] for k, v in INDUCTION_PAIR.items()}
    times = {k: _times(rs) for k, rs in runs.items()}
    medians = {k: km_median(*zip(*t)) for k, t in times.items()}
    formed = {k: m is not None for k, m in medians.items()}
    return {"times": times, "medians": medians, "formed": formed,
            "final": {k: [r["curve"][-1][1] for r in rs] for k, rs in runs.items()},
            "test": _logrank(runs["rope"], runs["learned"]),
            "verdict": "held" if all(formed.values()) else "inconclusive"}


def judge_lengths(copy: dict[str, list[dict]]) -> dict:
    """Which lengths learned positions refused, and whether each RoPE variant kept its 1× accuracy, within HOLDS, at
    every length (seed means; a fixed threshold, not a test): "inconclusive" where the model never learned the copy
    at 1× (a seed mean below LEARNED) — an accuracy that was never there cannot be kept or lost."""
    numeric = {v.name: {f: [r["lengths"][str(f)] for r in copy[v.name]] for f in LENGTH_FACTORS
                        if all(isinstance(r["lengths"][str(f)], float) for r in copy[v.name])}
               for v in LENGTH_VARIANTS}

    def kept(variant: Variant) -> Verdict:
        base = statistics.mean(numeric[variant.name][1])
        if base < LEARNED:
            return "inconclusive"
        return "held" if all(statistics.mean(v) >= base - HOLDS for v in numeric[variant.name].values()) else (
            "did not hold")

    return {"refused": sorted(set(LENGTH_FACTORS) - set(numeric[LEARNED_AT[8].name])), "windowed": kept(WINDOWED),
            "rope": kept(ROPE_AT[8, 1e4])}


def judge(found: dict, budget: Budget) -> dict:
    """Every judgement of sections 3.3 and 3.4, from `measure`'s findings."""
    copy = found["copy"]
    return {"resolution": judge_resolution(copy, budget.copy_steps), "shift": judge_shift(copy),
            "kernel": judge_kernel(copy, budget.copy_steps), "induction": judge_induction(found["induction"]),
            "lengths": judge_lengths(copy)}
