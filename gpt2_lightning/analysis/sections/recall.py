"""Section 3.1, associative recall (Zoology's MQAR, scaled): below which key/value width per position attention
stops recalling.

Every variant is trained to convergence (or to the budget's last step) at each learning rate of a small sweep (first
seed), the rate chosen per variant on a validation stream that neither training nor the final evaluation draws from,
and trained at that rate on the other seeds. Steps to LEVEL are censored times; final accuracy is a count of
queries answered right, with Wilson intervals, read against what a model that looks nothing up scores on this
sampler (`no_lookup_baselines`). Two controls decide whether the probe can judge at all: a window too short to reach
the keys must fail, full attention must pass.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics

import torch

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.probe_runs import PROBE, probe_spec
from gpt2_lightning.analysis.probes import (
    AccuracyCurve,
    AssociativeRecall,
    ProbeModel,
    accuracy,
    eval_generator,
    time_to,
    train_probe,
    validation_generator,
)
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.analysis.statistics import Survival, holm, km_median, logrank, verdict, wilson
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.lm_loss import IGNORE_INDEX

# 64 keys, 64 values, up to 8 pairs (24 positions): in a pilot 16 pairs cost MHA 1.5× the time a step and 1.3× the
# steps to converge, more than the ladder's unconverging runs can spend at `medium`
TASK = AssociativeRecall(train_pairs=(4, 8))
MOST = max(TASK.train_pairs)
EDGES = [0, MOST, 2 * MOST, 3 * MOST]  # key–query distance buckets at the most pairs (distances run 2 … 3·MOST − 1)
LEVEL = 0.95  # "converged": validation accuracy at the most pairs at or above this
HOLD = 2  # a run stops once it has held LEVEL for this many evaluations in a row
MARGIN = 0.5  # "recalls": the Wilson 95% lower bound lies this far above the no-lookup (value elimination) baseline
RISING = 0.05  # a run that never converged was still learning when its last quarter of validations gained this much
# PyTorch's default initialisation and an untied head: from the library's GPT-2 init this probe model does not leave
# the no-lookup baseline within a CPU budget (`probes.pytorch_initialised` gives the pilot's numbers)
RECALL_PROBE = dataclasses.replace(PROBE, init="pytorch")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One attention shape of the 64-wide probe model: `n_head` query heads of 64 / n_head channels sharing
    `n_kv_head` key/value heads (None: one each), through an optional sliding window. Widths below MQA's 8 come
    from more, narrower query heads with a single key/value head (16 × 4, 32 × 2): the residual stream, the MLP and
    the query/output projections keep their size, only what each position stores for later queries shrinks.
    RoPE keeps its fastest frequency (1 rad/token, the one a previous-token head needs) at every even head size."""

    n_head: int = PROBE.n_head
    n_kv_head: int | None = None
    window: int | None = None

    @property
    def head_dim(self) -> int:
        return RECALL_PROBE.n_embd // self.n_head

    @property
    def width(self) -> int:
        """Key (and value) channels each position stores per layer: n_kv × head_dim."""
        return (self.n_kv_head or self.n_head) * self.head_dim

    @property
    def name(self) -> str:
        kv = self.n_kv_head or self.n_head
        name = ("MHA" if kv == self.n_head else "MQA" if kv == 1 else f"GQA-{kv}")
        if self.n_head != PROBE.n_head:
            name += f", {self.n_head} heads × {self.head_dim}"
        return name + (f", window {self.window}" if self.window else "")

    @property
    def key(self) -> str:
        """The name as a run-cache key."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def probe(self, learning_rate: float) -> ProbeModel:
        return dataclasses.replace(RECALL_PROBE, n_head=self.n_head, learning_rate=learning_rate)

    def config(self) -> GPTConfig:
        return self.probe(RECALL_PROBE.learning_rate).config(TASK, pos_encoding="rope", n_kv_head=self.n_kv_head,
                                                               sliding_window=self.window)


# the width ladder, widest first: MHA, GQA-4, GQA-2, MQA at head_dim 8 (64, 32, 16, 8), then MQA at 4 and 2
LADDER = [Variant(), Variant(n_kv_head=4), Variant(n_kv_head=2), Variant(n_kv_head=1), Variant(16, 1), Variant(32, 1)]
MHA = LADDER[0]
WINDOW = 4  # the control's window: 2 layers reach REACH positions back, most keys at the most pairs lie further
REACH = PROBE.n_layer * (WINDOW - 1)
CONTROL = Variant(window=WINDOW)


def every(budget: Budget) -> int:
    """Steps between two validations of a run: 40 a run at most (each costs about three training steps)."""
    return max(1, budget.recall_steps // 40)


# ---- what a model that looks nothing up scores ----------------------------------------------------------------


def no_lookup_per_query(inputs: torch.Tensor, targets: torch.Tensor, pairs: int) -> dict[str, torch.Tensor]:
    """The expected accuracy, per query (n, pairs, in query order), of two guessers that look nothing up:

    - "seen value": a value drawn uniformly from the distinct values stored in the sequence;
    - "value elimination": drawn from those stored values the input has not yet shown after the pairs (an answer
      the input gives away can be struck off, so later queries have fewer candidates). Zoology's sampler never
      shows an answer, so here it equals "seen value" — computed, not assumed; on the earlier probe, which showed
      each answer after its query, it rose from 0.05 to 0.32 with key–query distance (review of the analysis).

    Exact per query (1 / candidates when the true value is a candidate, else 0)."""
    n, scored = inputs.size(0), targets != IGNORE_INDEX
    answers = targets[scored].view(n, -1)
    query_at = scored.nonzero()[:, 1].view(n, -1)
    left = torch.zeros(n, TASK.vocab_size).scatter_add_(1, inputs[:, 1 : 2 * pairs : 2], torch.ones(n, pairs))
    seen = (1 / (left > 0).sum(1, keepdim=True)).expand(n, answers.size(1))
    eliminated, positions = torch.empty(answers.shape), torch.arange(inputs.size(1))
    for q in range(answers.size(1)):
        candidates = left > 0
        eliminated[:, q] = candidates.gather(1, answers[:, q : q + 1]).squeeze(1) / candidates.sum(1).clamp(min=1)
        end = query_at[:, q + 1 : q + 2] if q + 1 < answers.size(1) else torch.full((n, 1), inputs.size(1))
        shown = (positions > query_at[:, q : q + 1]) & (positions < end) & (inputs >= TASK.n_keys)
        left.scatter_add_(1, inputs, -shown.float())
    return {"seen value": seen, "value elimination": eliminated}


def _bucket(distances: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(distances.flatten(), torch.tensor(EDGES[1:-1]), right=True)


def no_lookup_baselines(samples: int = 2048, seed: int = 0) -> dict[str, dict]:
    """{guesser: {"by_pairs": {pairs: accuracy}, "by_distance": {bucket: accuracy at the most pairs}}} for the
    guessers of `no_lookup_per_query`, averaged over `samples` sequences of the probe's own sampler (review of the
    analysis, item 1: the reference a recall accuracy is read against, not 1/n_values)."""
    generator, found = torch.Generator().manual_seed(seed), {}
    for pairs in TASK.train_pairs:
        inputs, targets, distances = TASK.sample(samples, generator, pairs)
        for name, acc in no_lookup_per_query(inputs, targets, pairs).items():
            entry = found.setdefault(name, {"by_pairs": {}, "by_distance": {}})
            entry["by_pairs"][str(pairs)] = acc.mean().item()
            if pairs == MOST:
                bucket = _bucket(distances)
                entry["by_distance"] = {str(b): acc.flatten()[bucket == b].mean().item()
                                        for b in range(len(EDGES) - 1)}
    return found


# ---- runs ----------------------------------------------------------------------------------------------------


def _run(budget: Budget, variant: Variant, learning_rate: float, seed: int) -> dict:
    """One run: the validation curve at the most pairs (stopping once it held LEVEL for HOLD evaluations), then on
    fresh evaluation sequences, [right, asked] per number of pairs, per distance bucket at the most pairs, and for
    the queries whose key lies beyond the control window's reach, with the no-lookup guessers' expected right
    answers on those same queries."""
    curve = AccuracyCurve(TASK.sample(budget.probe_eval, validation_generator(seed), MOST)[:2], every(budget),
                          stop_at=LEVEL, hold=HOLD)
    model = train_probe(TASK, variant.config(), variant.probe(learning_rate), budget.recall_steps, seed, [curve])
    generator, by_pairs = eval_generator(seed), {}
    for pairs in TASK.train_pairs:
        inputs, targets, distances = TASK.sample(budget.probe_eval, generator, pairs)
        right = accuracy(model, inputs, targets).view(distances.shape)
        by_pairs[str(pairs)] = [int(right.sum()), right.numel()]
        if pairs == MOST:
            bucket = _bucket(distances)
            by_distance = {str(b): [int(right.flatten()[bucket == b].sum()), int((bucket == b).sum())]
                           for b in range(len(EDGES) - 1)}
            far = distances > REACH
            beyond = {"right": int(right[far].sum()), "asked": int(far.sum()),
                      "baseline": {name: acc[far].sum().item()
                                   for name, acc in no_lookup_per_query(inputs, targets, pairs).items()}}
    return {"curve": curve.points, "by_pairs": by_pairs, "by_distance": by_distance, "beyond": beyond}


def _spec(budget: Budget, variant: Variant, learning_rate: float) -> dict:
    fields = {**dataclasses.asdict(variant), "learning_rate": learning_rate, "init": RECALL_PROBE.init}
    return {**probe_spec(budget, TASK, fields, budget.recall_steps), "every": every(budget), "stop": [LEVEL, HOLD]}


def _cached(budget: Budget, cache: RunCache, variant: Variant, learning_rate: float, seed: int) -> dict:
    return cache.run(f"recall-{variant.key}-lr{learning_rate:g}-seed{seed}", _spec(budget, variant, learning_rate),
                     lambda: _run(budget, variant, learning_rate, seed))


def measure(budget: Budget, cache: RunCache) -> dict:
    """The sweep runs every learning rate on the first seed; the chosen rate (on validation) then runs the other
    seeds, and the windowed control runs every seed at MHA's chosen rate — a sweep on every seed would cost the
    ladder's slowest runs (the ones that never converge) three times over.

    {"sweep": {variant name: {rate: run of the first seed}}, "chosen": {variant name: rate}, "runs": {variant name:
    [per seed: run at the chosen rate]}, "control": {"learning_rate": MHA's chosen rate, "runs": [per seed]}}; a run
    is {"curve": [(step, validation accuracy)], "by_pairs": {pairs: [right, asked]}, "by_distance": {bucket:
    [right, asked]}, "beyond": {"right", "asked", "baseline": {guesser: expected right}}}."""
    first, rest = budget.recall_seeds[0], budget.recall_seeds[1:]
    sweep = {v.name: {f"{lr:g}": _cached(budget, cache, v, lr, first) for lr in budget.recall_lrs} for v in LADDER}
    chosen = {name: choose_learning_rate(by_rate) for name, by_rate in sweep.items()}
    runs = {v.name: [sweep[v.name][chosen[v.name]]] + [_cached(budget, cache, v, float(chosen[v.name]), seed)
                                                        for seed in rest] for v in LADDER}
    rate = float(chosen[MHA.name])
    control = [_cached(budget, cache, CONTROL, rate, seed) for seed in budget.recall_seeds]
    return {"sweep": sweep, "chosen": chosen, "runs": runs, "control": {"learning_rate": rate, "runs": control}}


# ---- judgements ------------------------------------------------------------------------------------------------


def time_to_level(run: dict) -> tuple[int, bool]:
    """(steps, reached): the first validation at LEVEL, or the last one, censored."""
    return time_to(run["curve"], LEVEL)


def choose_learning_rate(by_rate: dict[str, dict]) -> str:
    """The learning rate whose run did best on the validation stream: reaching LEVEL there first, else the highest
    last validation accuracy (the first rate listed on a tie). The final evaluation never enters: a rate chosen on it
    would be judged on the sequences it was chosen for, and look better than it is."""
    def score(rate: str) -> tuple[bool, float, float]:
        step, reached = time_to_level(by_rate[rate])
        return reached, -step if reached else -math.inf, by_rate[rate]["curve"][-1][1]

    return max(by_rate, key=score)


def recalls(right: int, asked: int, baseline: float) -> bool:
    """Whether `right` of `asked` is recall: the Wilson 95% lower bound lies MARGIN or more above `baseline`, the
    accuracy of a model that looks nothing up on those queries."""
    return wilson(right, asked)[0] >= baseline + MARGIN


def still_learning(run: dict) -> bool:
    """Whether a run that never reached LEVEL was still climbing when its steps ran out: its validation accuracy
    rose by RISING or more over the last quarter of its validations. Such a run says the budget ended, not that its
    width cannot recall."""
    curve = run["curve"]
    return not time_to_level(run)[1] and curve[-1][1] - curve[len(curve) * 3 // 4 - 1][1] >= RISING


def state(flags: list[bool], rising: list[bool]) -> str:
    """A variant's outcome over its seeds, from whether each recalls and whether each was still learning: "recalls"
    (every seed), "fails" (none, and none still learning), "still learning" (none, but some still rising), or
    "mixed" (some seeds recall)."""
    if all(flags):
        return "recalls"
    if any(flags):
        return "mixed"
    return "still learning" if any(rising) else "fails"


def width_threshold(states: dict[int, str]) -> dict:
    """From {width: state}, the narrowest width down to which every width recalls ("recalls_down_to", None when the
    widest does not), the first width below it ("fails_at", None when every width recalls), and whether the ladder
    is monotone (no width recalls below one that does not)."""
    widths = sorted(states, reverse=True)
    first = next((i for i, w in enumerate(widths) if states[w] != "recalls"), None)
    down_to = widths[-1] if first is None else (widths[first - 1] if first > 0 else None)
    fails_at = None if first is None else widths[first]
    monotone = first is None or all(states[w] != "recalls" for w in widths[first:])
    return {"recalls_down_to": down_to, "fails_at": fails_at, "monotone": monotone}


def controls(mha_state: str, window_flags: list[bool]) -> dict:
    """The probe can judge only when full attention recalls and the window recalls nothing it cannot reach: every
    seed's accuracy on the queries beyond its reach fails the recall rule."""
    full, window = mha_state == "recalls", not any(window_flags)
    return {"full_passes": full, "window_fails": window, "ok": full and window}


def judge(found: dict, baselines: dict[str, dict]) -> dict:
    """Per variant at its chosen rate: steps to LEVEL (Kaplan–Meier median; log-rank against MHA, Holm over the
    ladder), final accuracy at the most pairs (pooled over seeds, Wilson 95%), whether each seed recalls. Then the
    width below which recall fails, the controls, and the verdicts:

    - "threshold" (Zoology: recall depends on the state size, here the width per position): held when a width of
      the ladder fails while every wider one recalls; did not hold when every width recalls; inconclusive when the
      first width that does not recall is mixed or still learning, or a narrower one recalls again;
    - "gqa" (Ainslie et al.: GQA keeps MHA's quality): held when GQA-4 and GQA-2 recall, did not hold when either
      fails, inconclusive otherwise;
    - each below-MHA width expected to need more steps (log-rank, Holm): per variant.

    Every verdict is inconclusive when a control fails: the probe then cannot tell recall from its absence."""
    floor, runs = baselines["value elimination"]["by_pairs"][str(MOST)], found["runs"]
    times = {name: [time_to_level(r) for r in per_seed] for name, per_seed in runs.items()}
    flags = {name: [recalls(*r["by_pairs"][str(MOST)], floor) for r in per_seed] for name, per_seed in runs.items()}
    pooled = {name: [sum(r["by_pairs"][str(MOST)][i] for r in per_seed) for i in (0, 1)]
              for name, per_seed in runs.items()}
    narrower = [v.name for v in LADDER[1:]]
    tests: dict[str, Survival] = {n: logrank(*zip(*times[n]), *zip(*times[MHA.name])) for n in narrower}
    adjusted = dict(zip(narrower, holm([tests[n].p for n in narrower])))
    states = {v.name: state(flags[v.name], [still_learning(r) for r in runs[v.name]]) for v in LADDER}
    by_width = {v.width: states[v.name] for v in LADDER}
    threshold = width_threshold(by_width)
    beyond = [r["beyond"] for r in found["control"]["runs"]]
    window_floors = [b["baseline"]["value elimination"] / b["asked"] for b in beyond]
    window_flags = [recalls(b["right"], b["asked"], f) for b, f in zip(beyond, window_floors)]
    checked = controls(states[MHA.name], window_flags)
    if not checked["ok"]:
        found_threshold = gqa = "inconclusive"
    else:
        fails = threshold["fails_at"]
        found_threshold = ("did not hold" if fails is None else
                           "held" if threshold["monotone"] and by_width[fails] == "fails" else "inconclusive")
        gqa_states = [states[v.name] for v in LADDER if v.n_head == PROBE.n_head and v.n_kv_head in (4, 2)]
        gqa = ("held" if all(s == "recalls" for s in gqa_states) else
               "did not hold" if "fails" in gqa_states else "inconclusive")
    slower = {n: verdict(tests[n], "higher", p=adjusted[n]) if checked["ok"] else "inconclusive" for n in narrower}
    return {"floor": floor, "times": times, "flags": flags, "pooled": pooled,
            "intervals": {name: wilson(*counts) for name, counts in pooled.items()}, "states": states,
            "states_by_width": by_width, "medians": {name: km_median(*zip(*t)) for name, t in times.items()},
            "tests": tests, "adjusted": adjusted, "threshold": threshold, "window_flags": window_flags,
            "window_intervals": [wilson(b["right"], b["asked"]) for b in beyond],
            "window_floor": statistics.mean(window_floors), "controls": checked, "slower": slower, "gqa": gqa,
            "verdict": found_threshold}
