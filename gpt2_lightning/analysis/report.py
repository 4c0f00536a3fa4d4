"""The analysis document: the sections' findings and judgements formatted into tables and phrases, then filled into
the prose of `templates/analysis.md`. Nothing here measures or decides; a phrase only says what a judgement is."""

from __future__ import annotations

import itertools
import math
import statistics
from importlib.resources import files

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import LM_VARIANTS
from gpt2_lightning.analysis.probe_runs import LEARNED, PROBE, PROBE_WINDOW
from gpt2_lightning.analysis.sections import (
    context,
    context_use,
    copying,
    extrapolation,
    lm_quality,
    passkey,
    recall,
    size,
    uptraining,
    windows,
)
from gpt2_lightning.analysis.sections.speed import ATTENTION_KINDS, window_speedup
from gpt2_lightning.analysis.statistics import Comparison, format_p, mean_sd, number

TEMPLATE = files("gpt2_lightning.analysis") / "templates" / "analysis.md"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bold(verdict: str) -> str:
    return f"**{verdict}**"


def held(condition: bool) -> str:
    """The verdict of an exact check (arithmetic or a fixed threshold, no sampling to be uncertain about)."""
    return bold("held" if condition else "did not hold")


def _mde(comparison: Comparison, digits: int = 3) -> str:
    mde = comparison.minimum_detectable_effect()
    return "—" if mde is None else number(mde, digits)


def _size(rows: list[dict], size_held: bool) -> dict:
    cells = []
    for r in rows:
        heads = "MHA" if r["kv"] is None else ("MQA" if r["kv"] == 1 else f"GQA-{r['kv']}")
        row = [f"{r['pos']}, {heads}, {'full' if r['window'] is None else 'w' + str(r['window'])}",
               f"{r['params']:,}", f"{r['attention_params']:,}"]
        for T in ("1024", "8192"):
            row += [f"{r['formula_flops'][T] / 1e6:.0f}", f"{r['counted_flops'][T] / 1e6:.0f}"]
        row += [f"{r['kv_bytes_per_token']:,}"] + [f"{r['kv_bytes_per_token'] * min(n, r['window'] or n) / 2**20:.1f}"
                                                   for n in (1024, 8192)]
        cells.append(row)
    header = ["variant", "parameters", "attention params", "MFLOP/tok T=1k (formula)", "counted", "MFLOP/tok T=8k",
              "counted", "KV B/token fp16", "KV MiB @1k", "KV MiB @8k"]
    return {"size_table": table(header, cells), "size_verdict": held(size_held)}


def _kv_memory(rows: list[dict]) -> dict:
    """The KV-cache table: GiB per context × batch, and whether the formula matched an allocated cache."""
    points = [(t, b) for t in size.KV_CONTEXTS for b in size.KV_BATCHES]
    cells = [[r["name"]] + [f"{r['gib'][f'{t}x{b}']:,.2f}" for t, b in points]
             + ["yes" if r["formula_equals_allocated"] else "NO"] for r in rows]
    header = ["variant (124M, bf16), GiB"] + [f"{t // 1024}k × batch {b}" for t, b in points] + ["formula = allocated"]
    return {"kv_memory_table": table(header, cells)}


def _speed(points: dict, decode: dict) -> dict:
    longest, speedup = window_speedup(points)
    rows = [[T] + [f"{points[T][k]['ms']:.1f} ms / {points[T][k]['peak_mb']:.0f} MB" for k in ATTENTION_KINDS]
            for T in sorted(points, key=int)]
    return {**_decode(decode), "attention_table": table(["T", *ATTENTION_KINDS], rows), "longest": longest,
            "speedup": f"{speedup:.1f}", "speed_verdict": held(speedup > 1)}


def decode_cells(decode: dict) -> list[list[str]]:
    """Rows of the decode table: per variant and context, mean ms per token [± 95% half-width] (ratio to MHA; the
    ratio the bytes read allow) and the cache's MiB — what the analysis and benchmarks/bench_long_context.py print."""
    rows = []
    for name, per_context in decode.items():
        row = [name]
        for length, c in per_context.items():
            mha = decode["MHA"][length]
            allow = (c["weights_bytes"] + c["cache_bytes"]) / (mha["weights_bytes"] + mha["cache_bytes"])
            half = "" if c["ms_half"] is None else f" ± {c['ms_half']:.1f}"
            row.append(f"{c['ms']:.1f}{half} ms ({c['ms'] / mha['ms']:.2f}×; {allow:.2f}×), "
                       f"{c['cache_bytes'] / 2**20:,.0f} MiB")
        rows.append(row)
    return rows


def _decode(decode: dict) -> dict:
    contexts = list(next(iter(decode.values())))
    header = ["variant (124M, RoPE, fp32, batch 1)"] + [f"context {c}" for c in contexts]
    return {"decode_table": table(header, decode_cells(decode))}


def _share(right: int, asked: int, interval: tuple[float, float]) -> str:
    """'0.988 [0.985, 0.990] (8,093 / 8,192)': a pooled accuracy with its Wilson 95% interval and its counts."""
    return f"{right / asked:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] ({right:,} / {asked:,})"


def _recall(budget: Budget, found: dict, judged: dict, baselines: dict) -> dict:
    """Section 3.1's tables and phrases: the no-lookup baselines, the learning-rate sweep, the width ladder at its
    chosen rates, the controls and the width below which recall failed."""
    most, level = recall.MOST, f"{recall.LEVEL:.0%}"
    buckets = range(len(recall.EDGES) - 1)
    baseline_rows = [[name] + [f"{b['by_pairs'][str(p)]:.3f}" for p in recall.TASK.train_pairs]
                     + [f"{b['by_distance'][str(k)]:.3f}" for k in buckets] for name, b in baselines.items()]
    baseline_header = (["looks nothing up"] + [f"{p} pairs" for p in recall.TASK.train_pairs]
                       + [f"distance {recall.EDGES[k]}–{recall.EDGES[k + 1] - 1} ({most} pairs)" for k in buckets])
    sweep_rows = [[v.name] + [f"{_steps_text(*recall.time_to_level(run))}, {run['curve'][-1][1]:.3f}"
                              + (" ←" if rate == found["chosen"][v.name] else "")
                              for rate, run in found["sweep"][v.name].items()] for v in recall.LADDER]
    sweep_header = ["variant"] + [f"lr {rate}: steps to {level}, last validation accuracy"
                                  for rate in found["sweep"][recall.MHA.name]]
    rows = []
    for v in recall.LADDER:
        n = v.name
        right, asked = judged["pooled"][n]
        rows.append([n, f"{v.n_kv_head or v.n_head} × {v.head_dim} = {v.width}", found["chosen"][n],
                     *_time_cells(judged["times"][n], judged["medians"][n]),
                     "—" if v == recall.MHA else _survival(judged["tests"][n], judged["adjusted"][n]),
                     "—" if v == recall.MHA else bold(judged["slower"][n]),
                     _share(right, asked, judged["intervals"][n]), f"{right / asked - judged['floor']:+.3f}",
                     f"{judged['states'][n]} ({sum(judged['flags'][n])}/{len(judged['flags'][n])} seeds)"])
    header = ["variant", "K/V width per position (n_kv × head_dim)", "lr (validation)", f"steps to {level} per seed",
              "Kaplan–Meier median", "vs MHA: medians, log-rank", "needs more steps than MHA",
              f"accuracy at {most} pairs [Wilson 95%] (right / asked)", "minus no lookup",
              "outcome (seeds that recall)"]
    checked, control = judged["controls"], found["control"]
    window = ", ".join(_share(r["beyond"]["right"], r["beyond"]["asked"], interval) + (" recalls" if flag else "")
                       for r, interval, flag in zip(control["runs"], judged["window_intervals"],
                                                    judged["window_flags"]))
    leak = "it failed, as it must" if checked["window_fails"] else "it recalled what it cannot reach: the probe leaks"
    controls = (f"on the queries whose key lies more than {recall.REACH} positions back, the window-{recall.WINDOW} "
                f"model (lr {control['learning_rate']:g}, MHA's) answered {window} per seed against "
                f"{judged['window_floor']:.3f} for no lookup — {leak}"
                f"; full attention {'recalled' if checked['full_passes'] else 'did not recall'} at {most} pairs "
                f"({judged['states'][recall.MHA.name]}) — the controls "
                + bold("held" if checked["ok"] else "did not hold"))
    threshold = judged["threshold"]
    if not checked["full_passes"]:
        result = "MHA itself did not recall, so no width can be said to fail where it does"
    else:
        result = _recall_threshold(judged)
        if threshold["fails_at"] is not None:
            result += (f" ({judged['states_by_width'][threshold['fails_at']]}"
                       + ("" if threshold["monotone"] else "; a narrower width recalled again: not monotone") + ")")
    return {"recall_baselines_table": table(baseline_header, baseline_rows),
            "recall_sweep_table": table(sweep_header, sweep_rows), "recall_table": table(header, rows),
            "recall_controls": controls, "recall_result": result, "recall_verdict": bold(judged["verdict"]),
            "recall_gqa_verdict": bold(judged["gqa"]), "recall_keys": recall.TASK.n_keys,
            "recall_values": recall.TASK.n_values, "recall_pairs": list(recall.TASK.train_pairs),
            "recall_most": most, "recall_steps": budget.recall_steps,
            "recall_lrs": ", ".join(f"{lr:g}" for lr in budget.recall_lrs), "recall_seeds": list(budget.recall_seeds),
            "recall_every": recall.every(budget), "recall_level": level, "recall_hold": recall.HOLD,
            "recall_margin": recall.MARGIN, "recall_rising": recall.RISING, "recall_floor": f"{judged['floor']:.3f}",
            "recall_window": recall.WINDOW,
            "recall_reach": recall.REACH, "recall_ladder": "; ".join(f"{v.name}: {v.width}" for v in recall.LADDER)}


def _passkey(budget: Budget, found: dict, judged: dict) -> dict:
    rows = [[name] + [mean_sd([r[str(d)] for r in per_seed]) for d in passkey.DISTANCES]
            for name, per_seed in found.items()]
    return {"passkey_table": table(["variant"] + [f"d = {d}" for d in passkey.DISTANCES], rows),
            "passkey_chance": f"{passkey.CHANCE:.3f}", "passkey_band": f"{judged['band']:.3f}",
            "passkey_length": passkey.TASK.length, "passkey_keys": passkey.TASK.n_keys,
            "passkey_steps": budget.passkey_steps,
            "passkey_beyond": "at chance at every distance" if judged["falls"] else "above chance somewhere",
            "passkey_falls_verdict": held(judged["falls"]),
            "passkey_within": ("retrieved the passkey at every distance" if judged["within"] else
                               "did not retrieve it at every distance — it had not learned the relay through both "
                               "layers in this budget"),
            "passkey_full": "retrieved it at every distance" if judged["full"] else "fell to chance somewhere",
            "passkey_full_verdict": held(judged["full"])}


def _steps_text(steps: int, reached: bool) -> str:
    return str(steps) if reached else f"≥ {steps}"


def _survival(test, adjusted: float | None) -> str:
    """A log-rank comparison with its Holm-adjusted p-value."""
    return test.format() + ("" if adjusted is None else f" (Holm {format_p(adjusted)})")


def _time_cells(times: list[tuple[int, bool]], median: float | None) -> list[str]:
    return [", ".join(_steps_text(*t) for t in times), "not reached" if median is None else number(median, 0)]


def _accuracies(values: list) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _kept(verdict: str) -> str:
    """What a length-generalisation verdict (copying.judge_lengths) says of the model's accuracy."""
    return {"held": f"stayed within {copying.HOLDS} of its 1× copy accuracy to 8× the training length",
            "did not hold": f"lost more than {copying.HOLDS} of its 1× copy accuracy by 8× the training length",
            "inconclusive": f"never learned the copy at 1× ({LEARNED:.0%}), so had no accuracy to keep"}[verdict]


def _copying(budget: Budget, found: dict, judged: dict) -> dict:
    """Sections 3.3 and 3.4: the head_dim × base grid, the position shift, induction, the kernel ablation, lengths."""
    res, shift, kernel, induction, lengths = (judged[k] for k in ("resolution", "shift", "kernel", "induction",
                                                                    "lengths"))
    rows = []
    for v in copying.RESOLUTION:
        rope = v.pos_encoding == "rope"
        rows.append([v.name, PROBE.n_embd // v.head_dim, v.head_dim // 2 if rope else "—",
                     f"{copying.slowest_turn(v.head_dim, v.rope_theta):.2f}" if rope else "—",
                     *_time_cells(res["times"][v.name], res["medians"][v.name]),
                     _survival(res["tests"][v.name], res["adjusted"][v.name]) if rope else "—"])
    shift_rows = [[copying.SHIFT_PAIR[k].name, _accuracies(shift["in_place"][k]), _accuracies(shift["shifted"][k])]
                  for k in copying.SHIFT_PAIR]
    induction_rows = [[copying.INDUCTION_PAIR[k].name, *_time_cells(induction["times"][k], induction["medians"][k]),
                       _accuracies(induction["final"][k])] for k in copying.INDUCTION_PAIR]
    kernel_rows = [[name, *_time_cells(kernel["times"][name], kernel["medians"][name]), against]
                   for name, against in [
                       (copying.KERNELS["banded kernel"].name, "—"),
                       (copying.KERNELS["dense mask"].name,
                        "banded kernel: " + _survival(kernel["tests"]["kernel"], kernel["adjusted"]["kernel"])),
                       (copying.ROPE_AT[8, 1e4].name, "RoPE + window against it: "
                        + _survival(kernel["tests"]["window"], kernel["adjusted"]["window"])),
                       *[(w.name, f"{base.name} (grid above): " + _survival(kernel["tests"][w.name],
                                                                           kernel["adjusted"][w.name]))
                         for w, base in copying.WINDOW_CONTROLS.items()]]]
    length_rows = []
    for v in copying.LENGTH_VARIANTS:
        cells = [v.name]
        for f in copying.LENGTH_FACTORS:
            values = [r["lengths"][str(f)] for r in found["copy"][v.name]]
            cells.append(mean_sd(values) if all(isinstance(x, float) for x in values) else f"refused: *{values[0]}*")
        length_rows.append(cells)
    refused, verdicts = lengths["refused"], res["verdicts"]
    catch_up = "; ".join(f"head_dim {hd}: {bold(v)}" for hd, v in res["catch_up"].items())
    same = ("every seed reached it at the same step, or failed, under both" if kernel["same_outcomes"] else
            "the kernels' outcomes differed in some seed")
    failed, seeds = kernel["failed"], kernel["seeds"]
    reading = {"did not hold": "the kernel changed the outcome: a kernel problem",
               "inconclusive": "this budget cannot tell whether the outcomes follow the kernel or the seed"}.get(
        kernel["verdicts"]["kernel"],
        "the failures follow the seed, not the kernel: RoPE + window's optimisation at this shape" if 0 < failed < seeds
        else "every seed failed under both kernels: the window's effect on optimisation at this budget, not the kernel"
        if failed else "every seed learned it under both kernels: the earlier failures did not recur")
    learned_test = shift["learned_test"]
    return {
        "copy_segment": copying.TASK.segment, "copy_vocab": copying.TASK.vocab, "copy_length": copying.TASK.length,
        "copy_every": copying.every(budget.copy_steps), "copy_steps": budget.copy_steps, "learned": f"{LEARNED:.0%}",
        "rope_seeds": list(budget.rope_seeds), "copy_width": PROBE.n_embd,
        "turn_8_1e4": f"{copying.slowest_turn(8, 1e4):.2f}", "turn_8_100": f"{copying.slowest_turn(8, 100.0):.2f}",
        "turn_32_1e4": f"{copying.slowest_turn(32, 1e4):.2f}",
        "lag_margin": number(copying.LAG_MARGIN * budget.copy_steps, 0), "lag_fraction": f"{copying.LAG_MARGIN:.0%}",
        "copy_table": table(["variant", "heads", "RoPE frequencies", f"slowest turns (rad) over {copying.TASK.length}",
                             f"steps to {LEARNED:.0%} per seed", "Kaplan–Meier median",
                             "vs learned at its head_dim: medians, log-rank (Holm over 8)"], rows),
        "copy_all": f"{'every run reached' if res['all_learned'] else 'not every run reached'} {LEARNED:.0%}",
        "copy_frequencies": _survival(res["tests"]["frequencies"], res["adjusted"]["frequencies"]),
        "copy_frequencies_verdict": bold(verdicts["frequencies"]),
        "copy_base": _survival(res["tests"]["base"], res["adjusted"]["base"]),
        "copy_base_verdict": bold(verdicts["base"]), "copy_catch_up": catch_up,
        "copy_no_slower_verdict": bold(verdicts["no_slower"]),
        "shift_start": copying.SHIFT, "shift_end": copying.SHIFT + copying.TASK.length,
        "shift_last": copying.SHIFT + copying.TASK.length - 1, "curve_batch": copying.CURVE_BATCH,
        "induction_seeds": list(budget.induction_seeds),
        "shift_head_dim": copying.SHIFT_HEAD_DIM, "shift_margin": copying.SHIFT_MARGIN,
        "shift_table": table(["model", f"in place, positions 0–{copying.TASK.length - 1}, per seed",
                              f"shifted, positions {copying.SHIFT}–{copying.SHIFT + copying.TASK.length - 1}"],
                             shift_rows),
        "shift_rope_gap": f"{shift['rope_gap']:.4f}", "shift_learned": learned_test.format(),
        "shift_controls": ("" if shift["learned_in_place"] else
                           f" Not every model reached {LEARNED:.0%} in place, so the shift cannot be judged."),
        "shift_verdict": bold(shift["verdict"]),
        "shift_refusal": f"*{shift['refusal']}*" if shift["refusal"] else "no refusal",
        "induction_segment": copying.INDUCTION.segment, "induction_length": copying.INDUCTION.length,
        "induction_vocab": copying.INDUCTION.vocab, "induction_steps": budget.induction_steps,
        "induction_every": copying.every(budget.induction_steps), "induction_head_dim": copying.INDUCTION_HEAD_DIM,
        "induction_table": table(["model", f"steps to {LEARNED:.0%} per seed", "Kaplan–Meier median",
                                  "final accuracy per seed"], induction_rows),
        "induction_formed": (", ".join(k for k, f in induction["formed"].items() if f) or "neither encoding")
        + f" formed it within {budget.induction_steps} steps",
        "induction_test": induction["test"].format(), "induction_verdict": bold(induction["verdict"]),
        "kernel_table": table(["variant", f"steps to {LEARNED:.0%} per seed", "Kaplan–Meier median",
                               "against: medians, log-rank (Holm over 4)"], kernel_rows),
        "kernel_failed": f"{failed} of {seeds}", "kernel_same": same,
        "kernel_gap": f"{kernel['curve_gap']:.4f}", "kernel_verdict": bold(kernel["verdicts"]["kernel"]),
        "kernel_reading": reading, "window_no_slower_verdict": bold(kernel["verdicts"]["window"]),
        "length_table": table(["variant"] + [f"{f}× ({f * copying.TASK.length})" for f in copying.LENGTH_FACTORS],
                              length_rows),
        "length_refused": ("refused " + ", ".join(f"{f}×" for f in refused) + " with the error shown" if refused
                           else "did not refuse"),
        "length_refused_verdict": held(bool(refused)),
        "length_window": _kept(lengths["windowed"]), "length_window_verdict": bold(lengths["windowed"]),
        "length_rope": _kept(lengths["rope"]) + (" (a drop allowed for)" if lengths["rope"] == "did not hold" else "")}


def _corpus(budget: Budget, found: dict) -> str:
    corpus = ("the builtin corpus (Python's pydoc topics, ~465 KB; the tiny budget only)" if budget.corpus == "builtin"
              else "the reference English corpus (State of the Union addresses and *Moby-Dick*, ~12 MB: "
                   "`gpt2_lightning/analysis/english.py` states provenance and licence)")
    return (f"{corpus}, {found['n_tokens']:,} GPT-2 tokens, in a compact vocabulary of the {budget.vocab_size - 1} "
            f"most frequent training tokens plus one rare-token id ({found['coverage']:.1%} of training tokens kept)")


def _lm(budget: Budget, found: dict, judged: dict) -> dict:
    finals, comparisons = found["finals"], judged["comparisons"]
    rows = []
    for name in LM_VARIANTS:
        tokens = statistics.median(found["tokens_per_sec"][name])
        rows.append([name, mean_sd(finals[name]), f"{math.exp(statistics.mean(finals[name])):.1f}",
                     f"{tokens:,.0f} ({judged['throughput_change'][name]:+.0%})",
                     f"{judged['flops_change'][name]:+.1%}", ", ".join(f"{x:.3f}" for x in finals[name]),
                     "—" if name == "baseline" else comparisons[name].format(p=judged["adjusted"][name]),
                     "—" if name == "baseline" else _mde(comparisons[name])])
    below = judged["below_unigram"]
    verdicts = judged["verdicts"]
    return {"lm_table": table(["variant", "final val loss (mean ± sd)", "val ppl",
                               "tokens/s (median run, vs baseline)", "FLOPs/token vs baseline", "per seed",
                               "vs baseline: Δ [95% CI], Holm p (paired)", "MDE"], rows),
            "lm_cost": _cost(judged, [n for n in LM_VARIANTS if n != "baseline"]),
            "lm_gqa_params": f"{found['params']['gqa2'] / found['params']['baseline'] - 1:+.1%}",
            "lm_rope_verdict": bold(verdicts["rope"]), "lm_gqa_verdict": bold(verdicts["gqa2"]),
            "lm_window_verdict": bold(verdicts["window"]), "lm_mde_note": _mde_range(list(comparisons.values())),
            "unigram": f"{found['unigram']:.3f}", "below_unigram": f"{abs(below):.3f}",
            "below_or_above": "below" if below < 0 else "above", "corpus": _corpus(budget, found),
            "tokens_per_run": f"{budget.steps * budget.batch_size * budget.block_size:,}",
            "lm_reach": budget.n_layer * (budget.window - 1), "margin": lm_quality.MARGIN}


def _context(found: dict, judged: dict) -> dict:
    rows = []
    for name, per_seed in found["scores"].items():
        low, high = judged["bootstrap"][name]
        rows.append([name] + [mean_sd([s[key] for s in per_seed]) for key in
                              ("full_top1", "local_top1", "full_logp", "local_logp")]
                    + [mean_sd(judged["gains"][name]), f"[{low:+.3f}, {high:+.3f}]",
                       "—" if name == "baseline" else str(judged["vs_baseline"][name])])
    local = context.LOCAL_CONTEXT
    using = [n for n, v in judged["verdicts"].items() if v == "held"]
    variants = list(next(iter(found["samples"].values())))
    samples = [[f"*{prompt}*"] + [text.replace("\n", " ").replace("|", "/").strip() for text in by_variant.values()]
               for prompt, by_variant in found["samples"].items()]
    return {"context_table": table(["variant", "top-1, full passage", f"top-1, last {local}", "log-prob, full passage",
                                    f"log-prob, last {local}", "gain from the passage (nats)",
                                    "gain, 95% bootstrap over passages", "gain vs baseline: Δ [95% CI], p (paired)"],
                                   rows),
            "context_using": ", ".join(using) if using else "no variant", "context_verdict": bold(judged["verdict"]),
            "samples_table": table(["prompt"] + variants, samples), "passages": found["passages"], "local": local}


def _extrapolation(budget: Budget, found: dict, judged: dict) -> dict:
    T = budget.block_size
    rows = [[name] + [f"{x:.3f}" if isinstance(x, float) else f"refused: *{x}*" for x in losses.values()]
            for name, losses in found.items()]
    return {"extrapolation_table": table(["variant", f"{T} (1×)", f"{2 * T} (2×)", f"{4 * T} (4×)"], rows),
            "extrapolation_holds": extrapolation.HOLDS, "extrapolation_verdict": held(judged["window_kept"]),
            "extrapolation_rope": "kept it too" if judged["rope_kept"] else "lost more than that"}


def _context_use(budget: Budget, found: dict, judged: dict) -> dict:
    """The per-position loss bands and the shuffled-prefix control, each with its bootstrap interval over windows."""
    T = budget.block_size

    def cell(mean_ci) -> str:
        mean, (low, high) = mean_ci
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"

    bands = [f"{a}-{b}" for a, b in found["bands"]]
    curve_rows = [[model] + [cell(per_band[band]) if band in per_band else "—" for band in bands]
                  for model, per_band in judged["curves"].items()]
    curve_header = ["model (seed 1)"] + [f"positions {a}–{b - 1} ({a / T:g}–{b / T:g}×)" for a, b in found["bands"]]
    distances = list(next(iter(judged["control"].values())))
    control_rows = [[name] + [cell(per_d[d]) for d in distances] + [", ".join(judged["uses"][name]) or "none"]
                    for name, per_d in judged["control"].items()]
    control_header = (["variant"] + [f"text kept {float(d) * T:g} back" for d in distances]
                      + ["uses text this far back (CI above 0), in training lengths"])
    start, end = found["bands"][-1]
    return {"context_use_curves": table(curve_header, curve_rows),
            "context_use_control": table(control_header, control_rows), "context_use_windows": found["windows"],
            "context_use_factor": context_use.FACTOR, "context_use_band": f"{start}–{end - 1}",
            "context_use_ntk_gain": cell(judged["ntk_gain"]), "context_use_verdict": bold(judged["verdict"])}


def _cost(judged: dict, names: list[str]) -> str:
    """'rope −15% tokens/s at +0.0% FLOPs/token, …': measured throughput against what the FLOP count predicts."""
    return "; ".join(f"{n} {judged['throughput_change'][n]:+.0%} tokens/s at {judged['flops_change'][n]:+.1%} "
                     "FLOPs/token" for n in names)


def _mde_range(comparisons: list[Comparison]) -> str:
    mdes = [m for m in (c.minimum_detectable_effect() for c in comparisons) if m is not None]
    if not mdes:
        return "No comparison could be tested (no variance between seeds, or one seed): every verdict is inconclusive."
    return (f"At this budget a paired comparison detects (80% power) differences of {min(mdes):.3f}–{max(mdes):.3f} "
            "nats and no smaller; a smaller effect reads as inconclusive.")


def _expectation(expected: str) -> str:
    """A rung's expectation against MHA in words."""
    return {"higher": "a cost (higher loss)", "lower": "a gain (lower loss)",
            "equivalent": f"equivalent (±{lm_quality.MARGIN})"}[expected]


def _ladder(found: dict, judged: dict) -> dict:
    """Section 4.4's ladder: per rung its shape, loss, test against MHA with TOST and MDE, verdict and cost."""
    rungs, others = found["rungs"], [n for n in found["rungs"] if n != "baseline"]
    rows = []
    for name, r in rungs.items():
        tested = name != "baseline"
        c = judged["comparisons"].get(name)
        tost_p = judged["tost"].get(name)
        rows.append([name, r["n_kv"], r["mlp_width"], f"{r['params']:,} ({judged['param_change'][name]:+,})",
                     mean_sd(r["finals"]), ", ".join(f"{x:.3f}" for x in r["finals"]),
                     _expectation(judged["expected"][name]) if tested else "—",
                     c.format(p=judged["adjusted"][name]) if tested else "—",
                     ("—" if tost_p is None else format_p(tost_p)) if tested else "—",
                     _mde(c) if tested else "—", bold(judged["verdicts"][name]) if tested else "—",
                     f"{judged['throughput'][name]:,.0f} ({judged['throughput_change'][name]:+.0%})",
                     f"{judged['flops_change'][name]:+.1%}"])
    widened = [n for n in others if rungs[n]["widened"]]
    widening = "; ".join(f"{n} − {n.removesuffix('+mlp')}: {judged['widening'][n].format()} (MDE "
                         f"{_mde(judged['widening'][n])})" for n in widened)
    residual = ", ".join(f"{n} {judged['param_change'][n]:+,}" for n in widened)
    return {"ladder_table": table(["rung", "K/V heads", "MLP width", "parameters (vs MHA)", "final val loss",
                                   "per seed", "expected vs MHA", "Δ vs MHA [95% CI], Holm p (paired)",
                                   f"TOST p (±{lm_quality.MARGIN})", "MDE", "verdict", "tokens/s (vs MHA)",
                                   "FLOPs/token vs MHA"], rows),
            "ladder_steps": found["steps"], "ladder_seeds": found["seeds"], "ladder_head_dim": found["head_dim"],
            "ladder_tokens": f"{found['tokens_per_run']:,}", "ladder_family": len(others),
            "ladder_residual": f"parameters against MHA's {rungs['baseline']['params']:,}: {residual}",
            "ladder_widening": widening or "no widened rung",
            "ladder_result": "; ".join(f"{n}, expected {_expectation(judged['expected'][n])} — "
                                       f"{bold(judged['verdicts'][n])}" for n in others),
            "ladder_mde_note": _mde_range(list(judged["comparisons"].values())),
            "ladder_cost": _cost(judged, others)}


def _alpha(alpha: str) -> str:
    return f"{float(alpha) * 100:g}%"


def _recovered_cell(values: list[float | None], seeds: list[int]) -> str:
    """R over seeds: mean ± sd (per seed), and the seeds where it is undefined (nothing to recover)."""
    defined = [v for v in values if v is not None]
    cell = f"{mean_sd(defined, 2)} ({', '.join(f'{v:.2f}' for v in defined)})" if defined else ""
    undefined = [str(s) for s, v in zip(seeds, values) if v is None]
    if undefined:
        cell += ("; " if cell else "") + f"undefined for seed {', '.join(undefined)} (converted not above the ceiling)"
    return cell


def _uptraining(found: dict, judged: dict) -> dict:
    """Section 4.4's uptraining: losses per arm and α, R(α) per initialisation, the tests of the paper's claims."""
    alphas, seeds, steps = list(found["steps"]), found["seeds"], found["steps"]
    header = ["arm", "start (α = 0)"] + [f"α = {_alpha(a)} ({steps[a]} step{'s' * (steps[a] != 1)})" for a in alphas]
    loss_rows = [[label, mean_sd(judged["starts"][arm])] + [mean_sd(judged["losses"][arm][a]) for a in alphas]
                 for arm, label in uptraining.ARMS.items()]
    r_rows = [[label] + [_recovered_cell(judged["recovered"][init][a], seeds) for a in alphas]
              for init, label in uptraining.INITS.items()]
    tests, adjusted, verdicts = judged["tests"], judged["adjusted"], judged["verdicts"]
    labels = {"mean < first": "mean-pool − first head (loss)", "first < random": "first head − random (loss)",
              "recovered": f"R({_alpha(str(uptraining.PAPER_ALPHA))}) of mean-pool − {uptraining.RECOVERED}"}
    test_rows = [[labels[name], "R undefined for a seed: cannot test" if t is None else t.format(p=adjusted[name]),
                  "—" if t is None else _mde(t), "below 0" if name != "recovered" else "above 0",
                  bold(verdicts[name])] for name, t in tests.items()]
    test_rows += [[label, c.format(), _mde(c), "—", "reported, not judged"] for label, c in (
        ("mean-pool − MHA continued (what is left to the ceiling)", judged["vs_ceiling"]),
        ("mean-pool − GQA-2 from scratch (equal total tokens)", judged["vs_scratch"]))]
    n = len(seeds)
    return {"uptraining_losses": table(header, loss_rows),
            "uptraining_recovered": table(["initialisation"] + [f"R({_alpha(a)})" for a in alphas], r_rows),
            "uptraining_tests": table(["at α = " + _alpha(str(uptraining.PAPER_ALPHA)), "Δ [95% CI], p",
                                       "MDE", "expected", "verdict"], test_rows),
            "uptrain_lr": uptraining.UPTRAIN_LR, "uptrain_seeds": seeds, "uptrain_kv": uptraining.N_KV,
            "uptrain_warmup": found["warmup"], "uptrain_alphas": ", ".join(_alpha(a) for a in alphas),
            "recovered": uptraining.RECOVERED, "paper_alpha": _alpha(str(uptraining.PAPER_ALPHA)),
            "uptraining_mean_first": bold(verdicts["mean < first"]),
            "uptraining_first_random": bold(verdicts["first < random"]),
            "uptraining_recovered_verdict": bold(verdicts["recovered"]),
            "uptraining_note": ("With one seed nothing can be tested: every verdict is inconclusive." if n < 2 else
                                f"At {n} seeds a paired test has {n - 1} degree{'s' * (n > 2)} of freedom: only a "
                                "difference above its MDE can reach significance, and what the seeds cannot decide "
                                "reads inconclusive.")}


def _spans(windows: list[int | None]) -> str:
    """Per-layer windows in short, runs of one value counted: "16 ×3, global", "1,024 ×9, global ×3"."""
    groups = [(w, len(list(run))) for w, run in itertools.groupby(windows)]
    names = [("global" if w is None else f"{w:,}", n) for w, n in groups]
    return ", ".join(text if n == 1 else f"{text} ×{n}" for text, n in names)


def _interval(summary: tuple[float, tuple[float, float]], spec: str = ".3f") -> str:
    """'mean [low, high]' of a (mean, bootstrap interval) pair, each number formatted by `spec`."""
    mean, (low, high) = summary
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"


def _windows(budget: Budget, found: dict, judged: dict) -> dict:
    """Section 4.5: the variants and their formulas, loss, position bands, the shuffled-prefix control, planted-fact
    retrieval and the Pareto table, and the phrases of its verdicts (the closing verdict's sentence included)."""
    info, T, distances = found["variants"], found["block"], found["distances"]
    name = {role: v["label"] for role, v in info.items()}
    finals, tests, verdicts = judged["finals"], judged["tests"], judged["verdicts"]
    variant_rows = [[name[r], _spans(v["windows"]), "unbounded" if v["reach"] is None else v["reach"],
                     f"{v['kv_bytes_per_token']:,.0f}", _spans(v["windows_124m"]), f"{v['kv_gib']:,.2f}"]
                    for r, v in info.items()]
    loss_rows = [[name[r], mean_sd(finals[r]), ", ".join(f"{x:.3f}" for x in finals[r]),
                  f"{judged['tokens_per_sec'][r]:,.0f}"]
                 + (["—", "—"] if r == "full" else [judged["vs_full"][r].format(), _mde(judged["vs_full"][r])])
                 for r in info]
    bands = [tuple(map(int, band.split("-"))) for band in next(iter(judged["bands"].values()))]
    curve_rows = [[name[r]] + [_interval(per[band]) for band in per] for r, per in judged["bands"].items()]
    kept = list(next(iter(judged["control"].values())))
    control_rows = [[name[r]] + [_interval(per[d], "+.4f") for d in kept]
                    + [", ".join(f"{float(d) * T:g}" for d in judged["uses"][r]) or "none"]
                    for r, per in judged["control"].items()]
    retrieval_rows = [[name[r]] + [f"{_interval(per[str(d)]['gain'], '+.4f')}, top-1 {per[str(d)]['top1']:.2f}"
                                   + (" (beyond its reach)" if d in judged["beyond"][r] else "") for d in distances]
                      for r, per in judged["retrieval"].items()]
    dominated = judged["dominated_by"]
    pareto_rows = [[name[r], mean_sd(finals[r]), f"{info[r]['kv_gib']:,.2f}", f"{judged['tokens_per_sec'][r]:,.0f}",
                    ", ".join(name[x] for x in dominated[r]) or "none", "**yes**" if not dominated[r] else "no"]
                   for r in info]
    mdes = [m for m in (c.minimum_detectable_effect() for c in [*judged["vs_full"].values(), *tests.values()])
            if m is not None]
    recommended = ", ".join(name[r] for r in judged["recommended"])
    far = judged["far"]
    gains = {r: _interval(judged["retrieval"][r][str(far)]["gain"], "+.4f") for r in ("full", "hybrid")}
    small, hybrid, growing = name["small"], name["hybrid"], name["growing"]
    target = f"{windows.TARGET_CONTEXT // 1024}k"
    return {
        "windows_block": T, "windows_batch": budget.windows_batch, "windows_steps": budget.windows_steps,
        "windows_seeds": list(budget.windows_seeds), "windows_eval_batches": budget.windows_eval_batches,
        "windows_tokens": f"{budget.windows_steps * budget.windows_batch * T:,}", "windows_scale": found["scale"],
        "windows_target": f"{target} × batch {windows.TARGET_BATCH}",
        "windows_small": small, "windows_hybrid": hybrid, "windows_growing": growing,
        "windows_large": name["large"], "windows_distances": ", ".join(map(str, distances)),
        "windows_trials": len(next(iter(found["runs"].values()))[0]["retrieval"][str(far)]["gains"]),
        "windows_timing_tie": f"{windows.TIMING_TIE:.0%}", "windows_exact": windows.EXACT,
        "windows_variants_table": table(["variant", "windows per layer", "reach Σ(w−1)",
                                         f"KV bytes/token (block {T}, bf16)", f"124M at {target}: windows per layer",
                                         f"KV GiB, 124M, {target} × {windows.TARGET_BATCH}, bf16"], variant_rows),
        "windows_loss_table": table(["variant", "final val loss (mean ± sd)", "per seed", "tokens/s (median run)",
                                     "vs full attention: Δ [95% CI], p (paired)", "MDE"], loss_rows),
        "windows_curves": table(["variant"] + [f"positions {a}–{b - 1}" for a, b in bands], curve_rows),
        "windows_control": table(["variant"] + [f"text kept {float(d) * T:g} back" for d in kept]
                                 + ["uses text this far back (CI above 0)"], control_rows),
        "windows_retrieval": table(["variant"] + [f"B {d} back: gain in log p(B), nats [95% CI]" for d in distances],
                                   retrieval_rows),
        "windows_pareto": table(["variant", "val loss", f"KV GiB at {target} × {windows.TARGET_BATCH} (124M, bf16)",
                                 "tokens/s", "dominated by", "recommended"], pareto_rows),
        "windows_beyond_verdict": held(judged["unseen_beyond_reach"]),
        "windows_far": far, "windows_full_gain": gains["full"], "windows_hybrid_gain": gains["hybrid"],
        "windows_global_verdict": bold(judged["global_retrieves"]),
        "windows_growing_test": tests["growing", "small"].format(p=judged["adjusted"]["growing", "small"]),
        "windows_growing_verdict": bold(verdicts["growing", "small"]),
        "windows_hybrid_test": tests["hybrid", "small"].format(p=judged["adjusted"]["hybrid", "small"]),
        "windows_hybrid_verdict": bold(verdicts["hybrid", "small"]),
        "windows_equivalence_test": tests["hybrid", "full"].format(),
        "windows_equivalence_verdict": bold(verdicts["hybrid", "full"]),
        "windows_recommended": recommended,
        "windows_dominated": "; ".join(f"{name[r]} by {', '.join(name[x] for x in by)}"
                                       for r, by in dominated.items() if by) or "none",
        "windows_mde_note": (f"At this budget a paired comparison of losses detects (80% power) differences of "
                             f"{min(mdes):.3f}–{max(mdes):.3f} nats and no smaller." if mdes else
                             "No loss comparison could be tested (no variance between seeds, or one seed)."),
        "verdict_windows": (f"trained at block {T}, a fact beyond a window's reach was not retrieved, exactly — "
                            f"{held(judged['unseen_beyond_reach'])}; full attention and the hybrid retrieved one "
                            f"{far} back — {bold(judged['global_retrieves'])}; windows growing with depth beat the "
                            f"uniform window of the same cache — {bold(verdicts['growing', 'small'])}; recommended "
                            f"on loss, KV at {target} and tokens/s: {recommended}"),
    }


def _lm_phrase(judged: dict, name: str) -> str:
    c = judged["comparisons"][name]
    return f"{c.format(p=judged['adjusted'][name])} against the baseline"


def _recall_threshold(judged: dict) -> str:
    """Where recall held and where it failed, in key/value channels per position."""
    threshold = judged["threshold"]
    if threshold["fails_at"] is None:
        return f"every width recalled, down to {threshold['recalls_down_to']} key/value channels per position"
    return (f"every width down to {threshold['recalls_down_to']} key/value channels per position recalled; "
            f"{threshold['fails_at']} did not")


def _recall_verdict(judged: dict) -> str:
    """Section 3.1's verdicts for the closing bullet."""
    controls = judged["controls"]
    where = "its controls failed, so the probe cannot judge" if not controls["ok"] else _recall_threshold(judged)
    return (f"{where}; recall depends on that width — {bold(judged['verdict'])}; GQA-4 and GQA-2 recall as MHA — "
            f"{bold(judged['gqa'])} (section 3.1)")


def _verdict(f: dict, j: dict) -> dict:
    """The closing paragraph's phrases: each one restates a section's computed judgement."""
    lm, copy, passkey_j = j["lm"], j["copy"], j["passkey"]
    res = copy["resolution"]["verdicts"]
    ladder, up = j["ladder"], j["uptraining"]
    r_mean = [r for r in up["recovered"]["mean"][str(uptraining.PAPER_ALPHA)] if r is not None]
    return {
        "verdict_copy": (f"learned sooner with more frequencies — {bold(res['frequencies'])}, and with a lower base — "
                         f"{bold(res['base'])}; no slower than learned positions at head_dim ≥ 16 — "
                         f"{bold(res['no_slower'])}; trained at positions [0, {copying.TASK.length}) and read at "
                         f"[{copying.SHIFT}, {copying.SHIFT + copying.TASK.length}), it kept its accuracy where "
                         f"learned positions lost theirs — {bold(copy['shift']['verdict'])}; induction at a random "
                         f"offset formed — {bold(copy['induction']['verdict'])}"),
        "verdict_rope_kept": _kept(copy["lengths"]["rope"]),
        "verdict_refused": "refused" if copy["lengths"]["refused"] else "did not refuse",
        "verdict_copy_window": (f"it failed to learn the copy in {copy['kernel']['failed']} of "
                                f"{copy['kernel']['seeds']} seeds, and the attention kernel changed no seed's outcome "
                                f"— {bold(copy['kernel']['verdicts']['kernel'])}; no slower than RoPE alone — "
                                f"{bold(copy['kernel']['verdicts']['window'])}"),
        "verdict_lm_rope": f"{_lm_phrase(lm, 'rope')}; RoPE better — {bold(lm['verdicts']['rope'])}",
        "verdict_recall": _recall_verdict(j["recall"]),
        "verdict_lm_gqa": f"{_lm_phrase(lm, 'gqa2')}; GQA-2 costs — {bold(lm['verdicts']['gqa2'])}",
        "verdict_ladder": "; ".join(f"{n}, {_expectation(ladder['expected'][n])} — {bold(v)}"
                                    for n, v in ladder["verdicts"].items()),
        "verdict_uptraining": (f"R({_alpha(str(uptraining.PAPER_ALPHA))}) of mean-pool "
                               + (f"{statistics.mean(r_mean):.2f}" if r_mean else "undefined")
                               + f", most of the loss recovered (above {uptraining.RECOVERED}) — "
                               f"{bold(up['verdicts']['recovered'])}; mean-pool below first head — "
                               f"{bold(up['verdicts']['mean < first'])}; first head below random — "
                               f"{bold(up['verdicts']['first < random'])}"),
        "verdict_passkey": "confirmed" if passkey_j["falls"] and passkey_j["full"] else "did not confirm",
        "verdict_passkey_beyond": "at chance" if passkey_j["falls"] else "not at chance",
        "verdict_passkey_full": "retrieving at every distance" if passkey_j["full"] else "not retrieving everywhere",
        "verdict_lm_window": (f"{_lm_phrase(lm, 'window')}; costs little (within {lm_quality.MARGIN} nats) — "
                              f"{bold(lm['verdicts']['window'])}"),
        "verdict_windowed_kept": _kept(copy["lengths"]["windowed"]),
        "verdict_extrapolation": "held" if j["extrapolation"]["window_kept"] else "did not hold",
        "verdict_lm_combined": _lm_phrase(lm, "rope+gqa2+window"),
        "verdict_throughput": _cost(lm, [n for n in LM_VARIANTS if n != "baseline"]),
        "verdict_ladder_throughput": _cost(ladder, [n for n in ladder["verdicts"]]),
    }


def _ladder_rung(found: dict, share: int) -> str | None:
    """The ladder rung (as is) with 1/`share` of the key/value heads, or None when the ladder has none."""
    return next((n for n, r in found["rungs"].items()
                 if not r["widened"] and r["n_kv"] * share == found["n_head"]), None)


def _judged(comparison: Comparison, p: float | None, claim: str, verdict: str) -> str:
    """'claim: Δ [CI], p — **verdict**': one quality verdict with the numbers that decided it."""
    return f"{claim}: {comparison.format(p=p)} — {bold(verdict)}"


def _choice(found: dict, judged: dict) -> dict:
    """The closing table "which variant for which job" at the 124M shape: parameters, KV GiB by formula (section 1),
    decode time at the longest measured context (section 2), training throughput against full attention at the small
    shape (sections 4, 4.4, 4.5) and the quality verdicts with the numbers that decided them; and what this budget
    cannot tell, from the minimum detectable effects of every loss comparison."""
    params = {(r["pos"], r["kv"], r["window"]): r["params"] for r in found["size"]}
    kv = {r["name"]: r["gib"] for r in found["kv_memory"]}
    decode = found["decode"]
    longest = max(next(iter(decode.values())), key=int)
    lm, ladder, win = judged["lm"], judged["ladder"], judged["windows"]
    copy, passkey_j = judged["copy"], judged["passkey"]

    def lm_claim(name: str, claim: str) -> str:
        return _judged(lm["comparisons"][name], lm["adjusted"][name], f"{claim} (4)", lm["verdicts"][name])

    def rung_claim(rung: str | None) -> str:
        """The ladder's verdicts for `rung` as is and widened, and section 4's for its GQA-2 where that is the rung."""
        if rung is None:
            return "not in this budget's ladder"
        heads = f"{found['ladder']['rungs'][rung]['n_kv']} of {found['ladder']['n_head']} K/V heads"
        text = "; ".join(_judged(ladder["comparisons"][n], ladder["adjusted"][n],
                                 f"{n} ({heads}) vs MHA, {_expectation(ladder['expected'][n])} (4.4)",
                                 ladder["verdicts"][n]) for n in (rung, f"{rung}+mlp") if n in ladder["verdicts"])
        return text + (f"; {lm_claim('gqa2', 'gqa2 costs')}" if rung == "gqa2" else "")

    def speed(rung: str | None) -> str:
        return "—" if rung is None else f"{ladder['throughput_change'][rung]:+.0%} ({rung}, 4.4)"

    half, quarter = _ladder_rung(found["ladder"], 2), _ladder_rung(found["ladder"], 4)
    hybrid_speed = win["tokens_per_sec"]["hybrid"] / win["tokens_per_sec"]["full"] - 1
    small_speed = win["tokens_per_sec"]["small"] / win["tokens_per_sec"]["full"] - 1
    rows = [  # job, variant, size key, KV row, decode row, training cost, quality
        ("GPT-2 as released: its checkpoints, exact outputs, contexts ≤ 1,024", "MHA, learned positions",
         ("learned", None, None), "MHA", "MHA", "the reference", "the reference"),
        ("contexts past the training length; relative positions", "RoPE, MHA", ("rope", None, None), "MHA", "MHA",
         f"{lm['throughput_change']['rope']:+.0%} (4)",
         f"{lm_claim('rope', 'lower loss')}; position shift kept (3.3) — {bold(copy['shift']['verdict'])}; NTK-aware "
         f"below raw past the training length (4.3) — {bold(judged['context_use']['verdict'])}"),
        ("serving at long context or large batch, quality kept", "GQA-4 (a third of the heads)", ("rope", 4, None),
         "GQA-4", "GQA-4", speed(half),
         f"{rung_claim(half)}; GQA recalls as MHA (3.1) — {bold(judged['recall']['gqa'])}"),
        ("the same, a smaller cache", "GQA-2 (a sixth)", ("rope", 2, None), "GQA-2", "GQA-2", speed(quarter),
         rung_claim(quarter) if quarter != half else "the ladder's rungs: the row above"),
        ("the smallest global cache", "MQA (one head)", ("rope", 1, None), "MQA", "MQA", speed("mqa"),
         rung_claim("mqa" if "mqa" in ladder["verdicts"] else None)),
        ("streaming at fixed memory, where only nearby text matters", "uniform window", ("rope", None, 1024),
         "window 1024", "window 256", f"{lm['throughput_change']['window']:+.0%} (4); {small_speed:+.0%} (4.5)",
         f"{lm_claim('window', 'costs little')}; nothing beyond its reach is retrieved (3.2, 4.5) — "
         f"{held(passkey_j['falls'] and judged['windows']['unseen_beyond_reach'])}; small window vs full attention "
         f"(4.5): {win['vs_full']['small'].format()}"),
        ("long context that must still retrieve distant facts", "hybrid 3 local : 1 global", ("rope", None, None),
         "hybrid 3:1, w 1024", "hybrid 3:1, w 256", f"{hybrid_speed:+.0%} (4.5)",
         _judged(win["tests"]["hybrid", "full"], None, "equivalent to full attention (4.5)",
                 win["verdicts"]["hybrid", "full"])
         + f"; retrieves beyond the local reach (4.5) — {bold(win['global_retrieves'])}"),
    ]
    mha = decode["MHA"][longest]["ms"]
    cells = []
    for job, variant, key, kv_row, decode_row, cost, quality in rows:
        d = decode[decode_row][longest]["ms"]
        measured = "" if decode_row == kv_row or decode_row in variant else f" ({decode_row})"
        gib = " / ".join(f"{kv[kv_row][f'{t}x1']:,.2f}" for t in size.KV_CONTEXTS)
        cells.append([job, variant, f"{params[key] / 1e6:,.1f} M", gib, f"{d:.1f} ms ({d / mha:.2f}×){measured}",
                      cost, quality])
    comparisons = [*lm["comparisons"].values(), *ladder["comparisons"].values(), *win["vs_full"].values(),
                   *win["tests"].values()]
    mdes = [m for m in (c.minimum_detectable_effect() for c in comparisons) if m is not None]
    detectable = (f"the smallest loss difference any comparison here could detect (80% power) was {min(mdes):.3f} "
                  f"nats, the largest {max(mdes):.3f}" if mdes else "no loss comparison could be tested")
    contexts = " / ".join(f"{t // 1024}k" for t in size.KV_CONTEXTS)
    return {
        "choice_table": table(["job", "variant (124M shape)", "parameters", f"KV GiB at {contexts} (batch 1, bf16)",
                               f"decode per token at {int(longest):,} (vs MHA)", "training tokens/s vs full attention",
                               "quality verdicts (Δ nats [95% CI], p — verdict; section)"], cells),
        "choice_detectable": detectable,
    }


def render(budget: Budget, found: dict, judged: dict, header: dict) -> str:
    """The document: `found` and `judged` hold each section's findings and judgements (keys as `run.analyze` fills
    them), `header` the run's command, date, machine, wall time, code key and reuse line."""
    values = {
        **header, "budget_name": budget.name, "budget_note": budget.note, "probe_seeds": list(budget.probe_seeds),
        "seeds": list(budget.seeds), "first_seed": budget.seeds[0], "n_layer": budget.n_layer,
        "n_embd": budget.n_embd, "n_head": budget.n_head, "block_size": budget.block_size, "window": budget.window,
        "batch_size": budget.batch_size, "steps": budget.steps, "probe_eval": budget.probe_eval,
        "decode_repeats": budget.decode_repeats,
        "probe_layers": PROBE.n_layer, "probe_width": PROBE.n_embd, "probe_heads": PROBE.n_head,
        "probe_batch": PROBE.batch_size, "probe_lr": PROBE.learning_rate, "probe_window": PROBE_WINDOW,
        "reach": passkey.REACH,
        **_size(found["size"], judged["size"]),
        **_kv_memory(found["kv_memory"]),
        **_speed(found["attention"], found["decode"]),
        **_recall(budget, found["recall"], judged["recall"], found["recall_baselines"]),
        **_passkey(budget, found["passkey"], judged["passkey"]),
        **_copying(budget, found["copy"], judged["copy"]),
        **_lm(budget, found["lm"], judged["lm"]),
        **_context(found["context"], judged["context"]),
        **_extrapolation(budget, found["extrapolation"], judged["extrapolation"]),
        **_context_use(budget, found["context_use"], judged["context_use"]),
        **_ladder(found["ladder"], judged["ladder"]),
        **_uptraining(found["uptraining"], judged["uptraining"]),
        **_windows(budget, found["windows"], judged["windows"]),
        **_verdict(found, judged),
        **_choice(found, judged),
    }
    return TEMPLATE.read_text().format_map(values)
