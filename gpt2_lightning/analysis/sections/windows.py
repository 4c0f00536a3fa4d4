"""Section 4.5, windows where they bind: language models trained at a block several times a window's reach, so that
the window decides what the model can see (issue 23, item 4).

Five variants of the section-4 shape with RoPE, by role: full attention, a small and a large uniform window, a
local:global hybrid of the small window (every layer local but the last), and windows doubling with depth whose sum
equals the small uniform window's — the same KV cache and the same reach Σ(w − 1), distributed differently
(Longformer's comparison, a fixed window of the average size). Each run trains through `lm_runs.train_lm` (cached
with its weights), and its weights are then measured: the per-position loss and the shuffled-prefix control of 4.3
(`held_out_text`) on held-out windows, and the retrieval of a fact planted in those windows at distances inside and
beyond the reaches (a rare pair "A B" planted, "A" asked again at the end: the gain in log p(B) over the same window
with "A′ B" planted instead, where B is as visible but not A's). The findings end in a Pareto table — validation
loss, KV GiB at 32k × batch 32 for the 124M shape, training tokens/s — whose recommendation is the non-dominated set,
computed.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Sequence

import numpy as np
import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.held_out_text import answer_scores, held_out, per_position_loss, shuffled_prefix_gain
from gpt2_lightning.analysis.lm_runs import lm_config, lm_spec, train_lm
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.sections.lm_quality import MARGIN
from gpt2_lightning.analysis.statistics import ALPHA, Comparison, bootstrap_ci, holm, paired, verdict
from gpt2_lightning.checkpoints import load
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

Windows = int | list[int | None] | None  # a GPTConfig.sliding_window
TARGET_CONTEXT, TARGET_BATCH = 32768, 32  # the Pareto table's KV cache: the 124M shape in bf16 at this context
TIMING_TIE = 0.10  # tokens/s within ±10% of each other tie in the Pareto table (a shared CPU's timings)
EXACT = 1e-4  # nats: a retrieval gain this small is zero (float rounding), the mark of text out of reach
EXPECTED = {("growing", "small"): "lower", ("hybrid", "small"): "lower", ("hybrid", "full"): "equivalent"}


# ---- the variants and their formulas -------------------------------------------------------------------------


def growing(window: int, n_layer: int) -> list[int]:
    """Windows doubling with depth whose sum is n_layer · window: the KV cache and the reach of the uniform window
    `window`, spent small in the lower layers and large in the upper (Longformer, Table 4)."""
    total = n_layer * window
    spans = [max(1, round(total * 2**i / (2**n_layer - 1))) for i in range(n_layer)]
    spans[-1] += total - sum(spans)
    return spans


def variants(budget: Budget) -> dict[str, Windows]:
    """Each role's sliding_window at the budget's shape (see the module's docstring)."""
    small, large = budget.windows_sizes
    L = budget.n_layer
    return {"full": None, "small": small, "large": large, "hybrid": [small] * (L - 1) + [None],
            "growing": growing(small, L)}


def label(role: str, windows: Windows, n_layer: int) -> str:
    """A variant's name in the document: "uniform 16", "hybrid 3:1 (w 16)", "growing 4→34"."""
    if role == "full":
        return "full attention"
    if role in ("small", "large"):
        return f"uniform {windows}"
    if role == "hybrid":
        return f"hybrid {n_layer - 1}:1 (w {windows[0]})"
    return f"growing {windows[0]}→{windows[-1]}"


def reach(layer_windows: Sequence[int | None]) -> int | None:
    """How far back the last layer's output can see: Σ over layers of (w − 1) (a layer of window w moves
    information w − 1 positions; tests/unit/test_variants.py checks each layer's exactly); None, unbounded, when
    a layer is global."""
    return None if None in layer_windows else sum(w - 1 for w in layer_windows)


def out_of_reach(distance: int, reach: int | None) -> bool:
    """Whether a fact whose B lies `distance` back is beyond a reach (None: unbounded): its first token A,
    distance + 1 back, is, and then the fact and its decoy look the same to the query."""
    return reach is not None and distance + 1 > reach


def at_124m(layer_windows: Sequence[int | None], scale: int) -> GPTConfig:
    """The 124M shape (GPT-2 small, RoPE) with a small model's per-layer windows: each multiplied by `scale` (the
    target context over the training block: the same fraction of the context) and the schedule stretched over the
    124M's layers (its layer i takes the small model's layer ⌊i · L / 12⌋: hybrids keep their ratio, growing
    windows keep growing)."""
    n_layer = GPTConfig().n_layer
    spans = [layer_windows[i * len(layer_windows) // n_layer] for i in range(n_layer)]
    return GPTConfig(pos_encoding="rope", sliding_window=[None if w is None else w * scale for w in spans])


def kv_gib(config: GPTConfig) -> float:
    """KV-cache GiB at TARGET_CONTEXT × TARGET_BATCH in bf16, by `GPTConfig.kv_cache_bytes`."""
    return config.kv_cache_bytes(TARGET_CONTEXT, TARGET_BATCH) / 2**30


def fact_distances(block: int, reaches: tuple[int, int]) -> list[int]:
    """Where the planted fact's answer B lies before the query: halfway into the small window's reach (inside every
    window's), halfway between the two reaches (beyond the small window's, inside the large one's) and halfway
    from the large window's reach to the start of the block (beyond every window's). A fact d back is within a
    reach R when its first token A, d + 1 back, is: d + 1 ≤ R."""
    small, large = reaches
    return [small // 2, (small + large) // 2, (large + block - 2) // 2]


# ---- the held-out text and the planted facts -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The held-out windows every run is measured on, and the facts planted in them."""

    inputs: torch.Tensor  # (N, T) compact ids
    targets: torch.Tensor  # (N, T)
    distances: list[int]
    planted: torch.Tensor  # (len(distances), N, T): the fact "A B" planted with B d positions before the last, A last
    decoys: torch.Tensor  # (len(distances), N, T): the same with "A′ B" planted instead (A′ another absent token)
    answers: torch.Tensor  # (N,): B


def plant_facts(inputs: torch.Tensor, distances: Sequence[int], vocab_size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(planted, decoys, answers): (len(distances), N, T), the same, and (N,). Per window, three distinct tokens A,
    B, A′ drawn from the less frequent three quarters of the compact vocabulary (the rare-token id excluded) among
    those absent from the window: the last position becomes A (the query, whose next token should be B); the
    planted copy writes A at T − 2 − d and B at T − 1 − d, so B lies d positions before the query; the decoy writes
    A′ where A was, so B is as far and as visible but follows another token. Raises ValueError when d ≥ T − 1."""
    N, T = inputs.shape
    if max(distances) >= T - 1:
        raise ValueError(f"a fact {max(distances)} positions back does not fit before the query in {T} tokens")
    candidates = torch.arange(vocab_size // 4, vocab_size - 1)
    planted, answers = inputs.clone().repeat(len(distances), 1, 1), torch.empty(N, dtype=torch.long)
    decoys = planted.clone()
    for i in range(N):
        absent = candidates[~torch.isin(candidates, inputs[i])]
        a, b, other = absent[torch.randperm(len(absent), generator=generator)[:3]].tolist()
        answers[i] = b
        for k, d in enumerate(distances):
            planted[k, i, -1], planted[k, i, T - 2 - d], planted[k, i, T - 1 - d] = a, a, b
            decoys[k, i, -1], decoys[k, i, T - 2 - d], decoys[k, i, T - 1 - d] = a, other, b
    return planted, decoys, answers


def _held_out(bind: Budget, distances: list[int]) -> HeldOut:
    """The held-out windows of section 4.3 (`held_out_text.held_out`) at the bound block, with the facts planted."""
    inputs, targets = held_out(bind, bind.block_size)
    planted, decoys, answers = plant_facts(inputs, distances, bind.vocab_size, torch.Generator().manual_seed(0))
    return HeldOut(inputs, targets, distances, planted, decoys, answers)


def position_bands(T: int) -> list[tuple[int, int]]:
    """Position bands [0, 8), [8, 16), [16, 32), … doubling up to [T/2, T)."""
    bands, start = [(0, 8)], 8
    while start < T:
        bands.append((start, min(2 * start, T)))
        start *= 2
    return bands


# ---- the runs ------------------------------------------------------------------------------------------------


def bound(budget: Budget) -> Budget:
    """The budget as this section's runs read it: the longer block, its batch, steps, seeds and validation."""
    return dataclasses.replace(budget, block_size=budget.windows_block, batch_size=budget.windows_batch,
                               steps=budget.windows_steps, seeds=budget.windows_seeds,
                               eval_batches=budget.windows_eval_batches)


@torch.no_grad()
def evaluate(model: GPT, text: HeldOut) -> dict:
    """Per held-out window: the mean loss per position band, the shuffled-prefix control's gain at each kept
    distance (section 4.3), and per planted distance the gain in log p(B) of the fact over its decoy, with the
    top-1 rate of B after the fact."""
    T = text.inputs.size(1)
    losses = per_position_loss(model, text.inputs, text.targets)
    retrieval = {}
    for d, planted, decoys in zip(text.distances, text.planted, text.decoys):
        top1, logp = answer_scores(model, planted, text.answers)
        _, decoy = answer_scores(model, decoys, text.answers)
        retrieval[str(d)] = {"top1": top1, "gains": [p - q for p, q in zip(logp, decoy)]}
    return {"bands": {f"{a}-{b}": losses[:, a:b].mean(axis=1).tolist() for a, b in position_bands(T)},
            "control": shuffled_prefix_gain(model, text.inputs, text.targets, T),
            "retrieval": retrieval}


def measure(budget: Budget, cache: RunCache) -> dict:
    """{"variants": {role: label, windows, reach, KV bytes per token at the block, the 124M windows and KV GiB},
    "runs": {role: [per seed: curve, tokens_per_sec, bands, control, retrieval]}, "distances", "block", "scale"}.
    Every role × seed trains with the same data order per seed, cached with its weights (the curve and tokens/s,
    validation included); the weights are measured afresh each call, so that the section-4.3 code they are
    measured with is the code of this call (the cache keys a run on its own section's source only)."""
    bind = bound(budget)
    T, scale = bind.block_size, TARGET_CONTEXT // bind.block_size
    table = variants(budget)
    configs = {role: lm_config(bind, {"pos_encoding": "rope", "sliding_window": w}) for role, w in table.items()}
    distances = fact_distances(T, (reach(configs["small"].layer_windows), reach(configs["large"].layer_windows)))
    text = _held_out(bind, distances)
    found = {"variants": {}, "runs": {}, "distances": distances, "block": T, "scale": scale}
    for role, config in configs.items():
        big = at_124m(config.layer_windows, scale)
        found["variants"][role] = {
            "label": label(role, table[role], bind.n_layer), "windows": config.layer_windows,
            "reach": reach(config.layer_windows), "kv_bytes_per_token": config.kv_cache_bytes(T) / T,
            "windows_124m": big.layer_windows, "kv_gib": kv_gib(big)}
        for seed in bind.seeds:
            out = cache.directory / f"windows-{role}-seed{seed}"
            result = cache.run(out.name, lm_spec(bind, config, bind.steps, seed=seed),
                               lambda: train_lm(bind, config, seed, bind.steps, out), out)
            found["runs"].setdefault(role, []).append({**result, **evaluate(load(out).eval(), text)})
    return found


# ---- judging -------------------------------------------------------------------------------------------------


def _loss_signs(losses: dict[str, list[float]]) -> dict[tuple[str, str], int]:
    """For every ordered pair (a, b): +1 when a's loss is significantly lower than b's (paired by seed, Holm over
    every pair), −1 when significantly higher, 0 when the seeds cannot tell them apart."""
    pairs = list(itertools.combinations(losses, 2))
    tests = [paired(losses[a], losses[b]) for a, b in pairs]
    signs = {}
    for (a, b), test, p in zip(pairs, tests, holm([t.p for t in tests])):
        sign = 0 if p is None or p >= ALPHA else (1 if test.diff < 0 else -1)
        signs[a, b], signs[b, a] = sign, -sign
    return signs


def _sign(a: float, b: float, tie: float) -> int:
    """+1 when `a` exceeds `b` by more than the relative `tie`, −1 when `b` exceeds `a` by as much, else 0."""
    if a > b * (1 + tie):
        return 1
    return -1 if b > a * (1 + tie) else 0


def pareto(rows: dict[str, dict]) -> dict[str, list[str]]:
    """{name: the rows that dominate it}, from rows {name: {"losses": per seed, "kv_gib", "tokens_per_sec": per
    seed}}. a dominates b when a is better on at least one of the three and worse on none: loss lower by a paired
    test over seeds (Holm over every pair; otherwise a tie), KV GiB smaller (equal ones tie), median tokens/s higher
    by more than TIMING_TIE (otherwise a tie). The rows dominated by none are the recommendation: no other is at
    least as good on all three and better on one."""
    losses = _loss_signs({name: row["losses"] for name, row in rows.items()})
    speed = {name: statistics.median(row["tokens_per_sec"]) for name, row in rows.items()}
    dominated = {}
    for b in rows:
        dominated[b] = []
        for a in rows:
            if a == b:
                continue
            signs = (losses[a, b], _sign(rows[b]["kv_gib"], rows[a]["kv_gib"], 1e-12),  # a's smaller cache: +1
                     _sign(speed[a], speed[b], TIMING_TIE))
            if max(signs) > 0 and min(signs) >= 0:
                dominated[b].append(a)
    return dominated


def _summary(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    return float(np.mean(values)), bootstrap_ci(values)


def _seed_mean(per_seed: list[list[float]]) -> list[float]:
    """Per window, the mean over seeds (the windows are the same text for every seed)."""
    return np.mean(np.array(per_seed), axis=0).tolist()


def _ci_verdict(summaries: Sequence[tuple[float, tuple[float, float]]]) -> str:
    """"held" when every interval lies above zero, "did not hold" when one lies below, else "inconclusive"."""
    if any(high < 0 for _, (_, high) in summaries):
        return "did not hold"
    return "held" if all(low > 0 for _, (low, _) in summaries) else "inconclusive"


def judge(found: dict) -> dict:
    """Loss per variant (paired against full attention; the three expectations Holm-adjusted or TOST within
    MARGIN), position bands, the control and retrieval as seed means per window with bootstrap intervals; the exact
    check that nothing beyond a window's reach is retrieved; whether the hybrid and full attention retrieve a fact
    beyond every window's reach (intervals above zero); and the Pareto front."""
    runs, info, distances = found["runs"], found["variants"], found["distances"]
    finals = {role: [r["curve"][-1][1] for r in per_seed] for role, per_seed in runs.items()}
    speed = {role: [r["tokens_per_sec"] for r in per_seed] for role, per_seed in runs.items()}
    vs_full: dict[str, Comparison] = {role: paired(finals[role], finals["full"]) for role in runs if role != "full"}
    tests = {pair: paired(finals[pair[0]], finals[pair[1]]) for pair in EXPECTED}
    directional = [pair for pair, expected in EXPECTED.items() if expected != "equivalent"]
    adjusted = dict(zip(directional, holm([tests[pair].p for pair in directional])))
    verdicts = {pair: verdict(tests[pair], expected, p=adjusted.get(pair), margin=MARGIN)
                for pair, expected in EXPECTED.items()}

    def per_window(key: str) -> dict[str, dict[str, tuple]]:
        return {role: {part: _summary(_seed_mean([r[key][part] for r in per_seed])) for part in per_seed[0][key]}
                for role, per_seed in runs.items()}

    retrieval = {role: {str(d): {"gain": _summary(_seed_mean([r["retrieval"][str(d)]["gains"] for r in per_seed])),
                                 "top1": statistics.mean(r["retrieval"][str(d)]["top1"] for r in per_seed)}
                        for d in distances} for role, per_seed in runs.items()}
    beyond = {role: [d for d in distances if out_of_reach(d, info[role]["reach"])] for role in runs}
    unseen = all(abs(g) < EXACT for role in runs for d in beyond[role] for r in runs[role]
                 for g in r["retrieval"][str(d)]["gains"])
    far = distances[-1]
    control = per_window("control")
    front = pareto({role: {"losses": finals[role], "kv_gib": info[role]["kv_gib"], "tokens_per_sec": speed[role]}
                    for role in runs})
    return {"finals": finals, "tokens_per_sec": {role: statistics.median(v) for role, v in speed.items()},
            "vs_full": vs_full, "tests": tests, "adjusted": adjusted, "verdicts": verdicts,
            "bands": per_window("bands"), "control": control,
            "uses": {role: [d for d, (_, (low, _)) in per_d.items() if low > 0] for role, per_d in control.items()},
            "retrieval": retrieval, "beyond": beyond, "unseen_beyond_reach": unseen, "far": far,
            "global_retrieves": _ci_verdict([retrieval[role][str(far)]["gain"] for role in ("full", "hybrid")]),
            "dominated_by": front, "recommended": [role for role, by in front.items() if not by]}

