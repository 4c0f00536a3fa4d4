"""`analyze`: every section (or those asked for) in order — measure, judge, plot — then the document, written
atomically."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

import gpt2_lightning.analysis.plots as plots
from gpt2_lightning.analysis.budgets import BUDGETS
from gpt2_lightning.analysis.lm_runs import train_variants
from gpt2_lightning.analysis.report import render
from gpt2_lightning.analysis.run_cache import RunCache, code_key
from gpt2_lightning.analysis.sections import (
    context,
    context_use,
    copying,
    extrapolation,
    lm_quality,
    passkey,
    recall,
    size,
    speed,
    uptraining,
    windows,
)
from gpt2_lightning.errors import UsageError
from gpt2_lightning.files import write_atomically


def _hardware() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
            f"Python {sys.version.split()[0]}, torch {torch.__version__}")


def _reuse(cache: RunCache) -> str:
    """The header's account of the run cache: how many runs were reused, and what they had cost."""
    total = cache.reused + cache.measured
    if not cache.reused:
        return f"all {total} runs measured in this call"
    return (f"{cache.reused} of {total} runs reused from an earlier call into `{cache.directory}` by the same code "
            f"(they took {cache.reused_seconds / 60:.1f} minutes when measured)")


SECTIONS = ("size", "speed", "recall", "passkey", "copy", "lm", "ladder", "uptraining", "windows")
"""What `--sections` can name: "lm" is section 4 with 4.1–4.3 (the variants' runs and what is measured on them)."""


def analyze(budget_name: str = "small", out: str | os.PathLike = "docs", runs: str | os.PathLike = "runs/analysis",
            sections: list[str] | None = None) -> Path | None:
    """Run every section and write `<out>/analysis.md` (+ `<out>/img/*.png`); runs' measurements and weights go
    under `<runs>/<budget>/`, and a later call with the same budget and code reuses every run already measured.
    `sections`: only these (names in SECTIONS), their runs cached and no document written (None returned): a
    `medium` analysis can be measured section by section, then written by a call without `sections`."""
    if budget_name not in BUDGETS:
        raise UsageError(f"unknown budget {budget_name!r}: choose one of {', '.join(BUDGETS)}")
    unknown = sorted(set(sections or ()) - set(SECTIONS))
    if unknown:
        raise UsageError(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    chosen = set(SECTIONS if sections is None else sections)
    budget = BUDGETS[budget_name]
    out = Path(out)
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    cache = RunCache(Path(runs) / budget_name)
    started = time.time()
    found, judged = {}, {}

    if "size" in chosen:
        found["size"] = size.measure()
        judged["size"] = size.judge(found["size"])
        found["kv_memory"] = size.kv_memory()
    if "speed" in chosen:
        found["attention"] = speed.attention_scaling(budget)
        found["decode"] = speed.decode_speed(budget.decode_contexts, budget.decode_repeats)
        plots.attention_scaling(found["attention"], img / "attention_scaling.png")
    if "recall" in chosen:
        found["recall"], found["recall_baselines"] = recall.measure(budget, cache), recall.no_lookup_baselines()
        judged["recall"] = recall.judge(found["recall"], found["recall_baselines"])
        plots.recall_probe(found["recall"], judged["recall"], found["recall_baselines"], img / "probe_recall.png")
    if "passkey" in chosen:
        found["passkey"] = passkey.measure(budget, cache)
        judged["passkey"] = passkey.judge(budget, found["passkey"])
        plots.passkey_probe(budget, judged["passkey"], img / "probe_passkey.png")
    if "copy" in chosen:
        found["copy"] = copying.measure(budget, cache)
        judged["copy"] = copying.judge(found["copy"], budget)
        plots.copy_probe(found["copy"], judged["copy"], img / "probe_copy.png")
    if chosen & {"lm", "ladder", "uptraining"}:
        results = train_variants(budget, cache)
    if "lm" in chosen:
        found["lm"], data, val_tokens = lm_quality.measure(budget, results)
        judged["lm"] = lm_quality.judge(found["lm"])
        plots.validation_loss(budget, found["lm"], img / "val_loss.png")
        found["context"] = context.measure(budget, results, data, val_tokens)
        judged["context"] = context.judge(found["context"])
        found["extrapolation"] = extrapolation.measure(budget, results)
        judged["extrapolation"] = extrapolation.judge(found["extrapolation"])
        found["context_use"] = context_use.measure(budget, results)
        judged["context_use"] = context_use.judge(found["context_use"])
    if "ladder" in chosen:
        found["ladder"] = lm_quality.measure_ladder(budget, cache, results)
        judged["ladder"] = lm_quality.judge_ladder(found["ladder"])
    if "uptraining" in chosen:
        found["uptraining"] = uptraining.measure(budget, results, cache)
        judged["uptraining"] = uptraining.judge(found["uptraining"])
    if "windows" in chosen:
        found["windows"] = windows.measure(budget, cache)
        judged["windows"] = windows.judge(found["windows"])
        plots.windows_bind(found["windows"], judged["windows"], img / "windows_bind.png")
    if chosen != set(SECTIONS):
        return None

    header = {"command": f"gpt2-lightning analyze --budget {budget_name} --out {out} --runs {Path(runs)}",
              "date": time.strftime("%Y-%m-%d"), "hardware": _hardware(),
              "minutes": f"{(time.time() - started) / 60:.1f}", "code": code_key()[:12], "reuse": _reuse(cache)}
    path = out / "analysis.md"
    document = render(budget, found, judged, header)
    write_atomically(path, lambda tmp: tmp.write_text(document))
    return path
