"""The analysis's figures, each drawn from a section's findings into `<img>/<name>.png` (matplotlib, the `analysis`
extra, imported when a figure is drawn)."""

from __future__ import annotations

import statistics
from pathlib import Path

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.probe_runs import LEARNED, PROBE
from gpt2_lightning.analysis.sections import copying, passkey, recall


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention_scaling(points: dict, path: Path) -> None:
    """Forward time and peak memory against T, one line per attention kind (log–log)."""
    plt = _pyplot()
    lengths = sorted(points, key=int)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in points[lengths[0]]:
        ts = [int(T) for T in lengths]
        ax_t.plot(ts, [points[T][kind]["ms"] for T in lengths], marker="o", label=kind)
        ax_m.plot(ts, [points[T][kind]["peak_mb"] for T in lengths], marker="o", label=kind)
    for ax, label in ((ax_t, "forward time (ms)"), (ax_m, "peak memory above inputs (MB)")):
        ax.set_xscale("log", base=2), ax.set_yscale("log"), ax.set_xlabel("sequence length T")
        ax.set_ylabel(label), ax.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    fig.suptitle("Attention forward, 1 × 12 heads × 64 (GPT-2 small heads)")
    _save(fig, path)


def recall_probe(budget: Budget, found: dict[str, list[dict]], baselines: dict[str, dict], path: Path) -> None:
    """Recall accuracy against pairs (mean ± sd over seeds) and against key–query distance at the most pairs, with
    what models that look up nothing score (`recall.no_lookup_baselines`) drawn as dotted lines."""
    plt = _pyplot()
    pairs, edges = recall.TASK.train_pairs, recall.EDGES
    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(10, 4))
    for name, per_seed in found.items():
        by_pairs = [[r["by_pairs"][str(p)] for r in per_seed] for p in pairs]
        ax_p.errorbar(pairs, [statistics.mean(v) for v in by_pairs],
                      yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in by_pairs],
                      marker="o", capsize=3, label=name)
        mids = [(edges[b] + edges[b + 1]) / 2 for b in range(len(edges) - 1)]
        ax_d.plot(mids, [statistics.mean(r["by_distance"][str(b)] for r in per_seed) for b in range(len(mids))],
                  marker="o", label=name)
    mids = [(edges[b] + edges[b + 1]) / 2 for b in range(len(edges) - 1)]
    for (name, baseline), color in zip(baselines.items(), ("grey", "black")):
        ax_p.plot(pairs, [baseline["by_pairs"][str(p)] for p in pairs], color=color, linestyle=":",
                  label=f"no lookup: {name}")
        ax_d.plot(mids, [baseline["by_distance"][str(b)] for b in range(len(mids))], color=color, linestyle=":",
                  label=f"no lookup: {name}")
    for ax, label in ((ax_p, "key–value pairs"), (ax_d, f"key–query distance ({recall.MOST} pairs)")):
        ax.set_xlabel(label), ax.set_ylabel("recall accuracy"), ax.grid(alpha=0.3)
    ax_p.legend()
    fig.suptitle(f"Associative recall, {PROBE.n_layer} layers × {PROBE.n_embd}, {PROBE.n_head} query heads, RoPE; "
                 f"{len(budget.probe_seeds)} seeds")
    _save(fig, path)


def passkey_probe(budget: Budget, judged: dict, path: Path) -> None:
    """Retrieval accuracy against distance per variant, with the window's reach and chance marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, mean in judged["mean"].items():
        ax.plot(passkey.DISTANCES, [mean[d] for d in passkey.DISTANCES], marker="o", label=name)
    ax.axvline(passkey.REACH + 0.5, color="red", linestyle="--", label=f"reach L·(w−1) = {passkey.REACH}")
    ax.axhline(passkey.CHANCE, color="grey", linestyle=":", label="chance")
    ax.set_xlabel("distance from passkey to query"), ax.set_ylabel("accuracy"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(f"Passkey retrieval, {PROBE.n_layer} layers, RoPE; {len(budget.probe_seeds)} seeds")
    _save(fig, path)


def copy_probe(found: dict[str, list[dict]], path: Path) -> None:
    """Learning curves of every run, and seed-mean accuracy against evaluation length."""
    plt = _pyplot()
    fig, (ax_c, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(found, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name, per_seed in found.items():
        for i, r in enumerate(per_seed):
            ax_c.plot(*zip(*r["curve"]), color=colors[name], alpha=0.7, label=name if i == 0 else None)
    ax_c.axhline(LEARNED, color="grey", linestyle=":"), ax_c.set_xlabel("optimizer step")
    ax_c.set_ylabel("copy accuracy"), ax_c.grid(alpha=0.3), ax_c.legend(fontsize=8)
    ax_c.set_title(f"Learning to copy (segment {copying.TASK.segment}, length {copying.TASK.length})")
    for name in copying.LENGTH_VARIANTS:
        points = [(f, [r["lengths"][str(f)] for r in found[name]]) for f in copying.LENGTH_FACTORS]
        points = [(f, v) for f, v in points if all(isinstance(x, float) for x in v)]
        ax_l.plot([f for f, _ in points], [statistics.mean(v) for _, v in points], marker="o", color=colors[name],
                  label=name)
    ax_l.set_xscale("log", base=2), ax_l.set_xlabel("evaluation length / training length")
    ax_l.set_ylabel("copy accuracy"), ax_l.grid(alpha=0.3), ax_l.legend(fontsize=8)
    ax_l.set_title("Length generalisation")
    _save(fig, path)


def validation_loss(budget: Budget, found: dict, path: Path) -> None:
    """Every language-model run's validation curve, with the unigram loss as the no-context floor."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (name, curves) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], found["curves"].items()):
        for i, curve in enumerate(curves):
            ax.plot(*zip(*curve), color=color, alpha=0.7, label=name if i == 0 else None)
    ax.axhline(found["unigram"], color="grey", linestyle=":", label=f"unigram loss {found['unigram']:.2f}")
    ax.set_xlabel("optimizer step"), ax.set_ylabel("validation loss (nats/token)"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(f"Validation loss, {len(budget.seeds)} seeds per variant")
    _save(fig, path)
