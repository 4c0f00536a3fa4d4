"""The analysis document: the sections' findings and judgements formatted into tables and phrases, then filled into
the prose of `templates/analysis.md`. Nothing here measures or decides; a phrase only says what a judgement is."""

from __future__ import annotations

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
    contexts = list(next(iter(decode.values())))
    decode_rows = [[name] + [f"{c[x]['tokens_per_sec']:.1f} tok/s, {c[x]['cache_mib']:.0f} MiB" for x in contexts]
                   for name, c in decode.items()]
    return {"attention_table": table(["T", *ATTENTION_KINDS], rows), "longest": longest,
            "speedup": f"{speedup:.1f}", "speed_verdict": held(speedup > 1),
            "decode_table": table(["variant (124M shape, RoPE, fp32 cache)"] + [f"context {c}" for c in contexts],
                                  decode_rows)}


def _recall(budget: Budget, found: dict, judged: dict, baselines: dict) -> dict:
    buckets = range(len(recall.EDGES) - 1)
    rows = [[f"no lookup: {name}"] + [number(b["by_pairs"][str(p)], 3) for p in recall.TASK.train_pairs]
            + [number(b["by_distance"][str(k)], 3) for k in buckets] + ["—", "—"] for name, b in baselines.items()]
    for name, per_seed in found.items():
        row = [name] + [mean_sd([r["by_pairs"][str(p)] for r in per_seed]) for p in recall.TASK.train_pairs]
        row += [mean_sd([r["by_distance"][str(b)] for r in per_seed]) for b in buckets]
        if name == "MHA":
            row += ["—", "—"]
        else:
            row += [judged["comparisons"][name].format(p=judged["adjusted"][name]), _mde(judged["comparisons"][name])]
        rows.append(row)
    header = (["variant"] + [f"{p} pairs" for p in recall.TASK.train_pairs]
              + [f"distance {recall.EDGES[b]}–{recall.EDGES[b + 1] - 1}" for b in buckets]
              + [f"vs MHA at {recall.MOST} pairs: Δ [95% CI], Holm p", "MDE"])
    cost = judged["cost"]
    floor = baselines["value elimination"]["by_pairs"][str(recall.MOST)]
    result = (f"at {recall.MOST} pairs MHA recalled {mean_sd(judged['at_most']['MHA'])}, against {floor:.3f} for a "
              "model that looks nothing up and answers with a stored value not yet given (computed from the probe's "
              "sampler; 1/64 'chance' is the wrong reference); "
              + ("sharing key/value heads first cost recall significantly at " + cost if cost else
                 "no shared-head variant was significantly below MHA")
              + f"; the means {'do' if judged['monotone'] else 'do not'} fall monotonically from MHA to MQA")
    caveat = "" if judged["learned"] else (
        f" MHA itself stayed below {LEARNED:.0%} recall in {budget.recall_steps} steps: the models are still learning "
        "the task, so this budget ranks how fast they learn it more than what they can store, and cannot decide.")
    return {"recall_table": table(header, rows), "recall_result": result, "recall_verdict": bold(judged["verdict"]),
            "recall_caveat": caveat, "recall_keys": recall.TASK.n_keys, "recall_values": recall.TASK.n_values,
            "recall_pairs": list(recall.TASK.train_pairs), "recall_steps": budget.recall_steps}


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


def _copying(budget: Budget, found: dict, judged: dict, lengths: dict) -> dict:
    times, tests = judged["times"], judged["tests"]
    rows = [[name, ", ".join(_steps_text(*t) for t in times[name]),
             "not reached" if judged["medians"][name] is None else number(judged["medians"][name], 0),
             "—" if name == "baseline" else tests[name].format() + (
                 "" if judged["adjusted"][name] is None else f" (Holm {format_p(judged['adjusted'][name])})")]
            for name in copying.VARIANTS]
    length_rows = []
    for name in copying.LENGTH_VARIANTS:
        cells = [name]
        for f in copying.LENGTH_FACTORS:
            values = [r["lengths"][str(f)] for r in found[name]]
            cells.append(mean_sd(values) if all(isinstance(x, float) for x in values) else f"refused: *{values[0]}*")
        length_rows.append(cells)
    refused = lengths["refused"]
    return {
        "copy_table": table(["variant", f"steps to {LEARNED:.0%} per seed", "Kaplan–Meier median",
                             "vs baseline: medians, log-rank p"], rows),
        "copy_segment": copying.TASK.segment, "copy_vocab": copying.TASK.vocab, "copy_length": copying.TASK.length,
        "copy_every": copying.every(budget), "copy_steps": budget.copy_steps, "learned": f"{LEARNED:.0%}",
        "copy_all": f"{'every run reached' if judged['all_learned'] else 'not every run reached'} {LEARNED:.0%}",
        "copy_rope": tests["rope"].format(), "copy_verdict": bold(judged["verdict"]),
        "length_table": table(["variant"] + [f"{f}× ({f * copying.TASK.length})" for f in copying.LENGTH_FACTORS],
                              length_rows),
        "length_refused": ("refused " + ", ".join(f"{f}×" for f in refused) + " with the error shown" if refused
                           else "did not refuse"),
        "length_refused_verdict": held(bool(refused)),
        "length_window": (f"stayed within {copying.HOLDS} of its 1× accuracy at every length"
                          if lengths["windowed_kept"] else f"lost more than {copying.HOLDS}"),
        "length_window_verdict": held(lengths["windowed_kept"]),
        "length_rope": "also held" if lengths["rope_kept"] else "lost accuracy at longer lengths, as allowed for"}


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
                     ", ".join(f"{x:.3f}" for x in finals[name]),
                     "—" if name == "baseline" else comparisons[name].format(p=judged["adjusted"][name]),
                     "—" if name == "baseline" else _mde(comparisons[name])])
    mdes = [c.minimum_detectable_effect() for c in comparisons.values()]
    mdes = [m for m in mdes if m is not None]
    mde_note = (f"At this budget a paired comparison detects (80% power) differences of {min(mdes):.3f}–"
                f"{max(mdes):.3f} nats and no smaller; a smaller effect reads as inconclusive." if mdes else
                "No comparison could be tested (no variance between seeds): every verdict is inconclusive.")
    below = judged["below_unigram"]
    verdicts = judged["verdicts"]
    return {"lm_table": table(["variant", "final val loss (mean ± sd)", "val ppl",
                               "tokens/s (median run, vs baseline)", "per seed",
                               "vs baseline: Δ [95% CI], Holm p (paired)", "MDE"], rows),
            "lm_rope_verdict": bold(verdicts["rope"]), "lm_gqa_verdict": bold(verdicts["gqa2"]),
            "lm_window_verdict": bold(verdicts["window"]), "lm_mde_note": mde_note,
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


def _uptraining(budget: Budget, found: dict, uptrained_held: bool) -> dict:
    rows = [[f"MHA baseline ({budget.steps} steps)", f"{found['mha']:.3f}"],
            ["mha_to_gqa(baseline, 2), no training", f"{found['converted']:.3f}"],
            [f"… + {budget.uptrain_steps} uptraining steps", f"{found['uptrained']:.3f}"],
            [f"GQA-2 from scratch, {budget.uptrain_steps} steps", f"{found['scratch']:.3f}"]]
    return {"uptraining_table": table(["model", "validation loss"], rows), "uptrain_lr": uptraining.UPTRAIN_LR,
            "conversion_change": f"{found['converted'] - found['mha']:+.3f}",
            "uptrained_vs_scratch": f"{found['uptrained'] - found['scratch']:+.3f}",
            "uptraining_verdict": held(uptrained_held)}


def _lm_phrase(judged: dict, name: str) -> str:
    c = judged["comparisons"][name]
    return f"{c.format(p=judged['adjusted'][name])} against the baseline"


def _verdict(f: dict, j: dict) -> dict:
    """The closing paragraph's phrases: each one restates a section's computed judgement."""
    lm, copy, passkey_j = j["lm"], j["copy"], j["passkey"]
    throughput = ", ".join(f"{name} {change:+.0%}" for name, change in lm["throughput_change"].items()
                           if name != "baseline")
    return {
        "verdict_copy": f"the expectation {bold(copy['verdict'])}",
        "verdict_rope_kept": "kept" if j["lengths"]["rope_kept"] else "lost",
        "verdict_refused": "refused" if j["lengths"]["refused"] else "did not refuse",
        "verdict_lm_rope": f"{_lm_phrase(lm, 'rope')}; RoPE better — {bold(lm['verdicts']['rope'])}",
        "verdict_recall": (f"the expected fall from MHA to MQA {bold(j['recall']['verdict'])}"
                           + (f", a significant cost first at {j['recall']['cost']}" if j["recall"]["cost"] else "")),
        "verdict_lm_gqa": f"{_lm_phrase(lm, 'gqa2')}; GQA-2 costs — {bold(lm['verdicts']['gqa2'])}",
        "verdict_uptrained": "beat" if j["uptraining"] else "did not beat",
        "verdict_passkey": "confirmed" if passkey_j["falls"] and passkey_j["full"] else "did not confirm",
        "verdict_passkey_beyond": "at chance" if passkey_j["falls"] else "not at chance",
        "verdict_passkey_full": "retrieving at every distance" if passkey_j["full"] else "not retrieving everywhere",
        "verdict_lm_window": (f"{_lm_phrase(lm, 'window')}; costs little (within {lm_quality.MARGIN} nats) — "
                              f"{bold(lm['verdicts']['window'])}"),
        "verdict_windowed_kept": "held" if j["lengths"]["windowed_kept"] else "did not hold",
        "verdict_extrapolation": "held" if j["extrapolation"]["window_kept"] else "did not hold",
        "verdict_lm_combined": _lm_phrase(lm, "rope+gqa2+window"),
        "verdict_throughput": throughput,
    }


def render(budget: Budget, found: dict, judged: dict, header: dict) -> str:
    """The document: `found` and `judged` hold each section's findings and judgements (keys as `run.analyze` fills
    them), `header` the run's command, date, machine, wall time, code key and reuse line."""
    values = {
        **header, "budget_name": budget.name, "budget_note": budget.note, "probe_seeds": list(budget.probe_seeds),
        "seeds": list(budget.seeds), "first_seed": budget.seeds[0], "n_layer": budget.n_layer,
        "n_embd": budget.n_embd, "n_head": budget.n_head, "block_size": budget.block_size, "window": budget.window,
        "batch_size": budget.batch_size, "steps": budget.steps, "probe_eval": budget.probe_eval,
        "probe_layers": PROBE.n_layer, "probe_width": PROBE.n_embd, "probe_heads": PROBE.n_head,
        "probe_batch": PROBE.batch_size, "probe_lr": PROBE.learning_rate, "probe_window": PROBE_WINDOW,
        "reach": passkey.REACH,
        **_size(found["size"], judged["size"]),
        **_kv_memory(found["kv_memory"]),
        **_speed(found["attention"], found["decode"]),
        **_recall(budget, found["recall"], judged["recall"], found["recall_baselines"]),
        **_passkey(budget, found["passkey"], judged["passkey"]),
        **_copying(budget, found["copy"], judged["copy"], judged["lengths"]),
        **_lm(budget, found["lm"], judged["lm"]),
        **_context(found["context"], judged["context"]),
        **_extrapolation(budget, found["extrapolation"], judged["extrapolation"]),
        **_context_use(budget, found["context_use"], judged["context_use"]),
        **_uptraining(budget, found["uptraining"], judged["uptraining"]),
        **_verdict(found, judged),
    }
    return TEMPLATE.read_text().format_map(values)
