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


def recall_probe(found: dict, judged: dict, baselines: dict[str, dict], path: Path) -> None:
    """Section 3.1 in three panels, each variant at its chosen learning rate: accuracy at the most pairs against the
    key/value width per position (pooled over seeds, Wilson 95% bars; the windowed control on the queries beyond its
    reach); accuracy against pairs; the validation curves. What models that look nothing up score
    (`recall.no_lookup_baselines`) is drawn dotted, the recall rule's bar (baseline + margin) dashed."""
    plt = _pyplot()
    most, pairs = recall.MOST, recall.TASK.train_pairs
    fig, (ax_w, ax_p, ax_c) = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = dict(zip((v.name for v in recall.LADDER), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    widths = [v.width for v in recall.LADDER]
    shares = [right / asked for right, asked in (judged["pooled"][v.name] for v in recall.LADDER)]
    bars = [[s - judged["intervals"][v.name][0] for s, v in zip(shares, recall.LADDER)],
            [judged["intervals"][v.name][1] - s for s, v in zip(shares, recall.LADDER)]]
    ax_w.errorbar(widths, shares, yerr=bars, marker="o", capsize=3, color="black", label="full attention")
    for right, asked in ((r["beyond"]["right"], r["beyond"]["asked"]) for r in found["control"]["runs"]):
        ax_w.plot([recall.MHA.width], [right / asked], marker="x", color="red", linestyle="none")
    ax_w.plot([], [], marker="x", color="red", linestyle="none",
              label=f"window {recall.WINDOW}, keys beyond its reach (per seed)")
    ax_w.axhline(judged["floor"] + recall.MARGIN, color="grey", linestyle="--", label="recalls above this")
    ax_w.set_xscale("log", base=2), ax_w.set_xticks(widths, [str(w) for w in widths])
    ax_w.set_xlabel("key/value channels per position (n_kv × head_dim)")
    ax_w.set_ylabel(f"accuracy at {most} pairs")
    for v in recall.LADDER:
        runs = found["runs"][v.name]
        ax_p.plot(pairs, [sum(r["by_pairs"][str(p)][0] for r in runs) / sum(r["by_pairs"][str(p)][1] for r in runs)
                          for p in pairs], marker="o", color=colors[v.name], label=v.name)
        for i, r in enumerate(runs):
            ax_c.plot(*zip(*r["curve"]), color=colors[v.name], alpha=0.7, label=v.name if i == 0 else None)
    for (name, baseline), color in zip(baselines.items(), ("grey", "black")):
        ax_w.axhline(baseline["by_pairs"][str(most)], color=color, linestyle=":", label=f"no lookup: {name}")
        ax_p.plot(pairs, [baseline["by_pairs"][str(p)] for p in pairs], color=color, linestyle=":",
                  label=f"no lookup: {name}")
    ax_p.set_xticks(pairs), ax_p.set_xlabel("key–value pairs"), ax_p.set_ylabel("accuracy (evaluation stream)")
    ax_c.axhline(recall.LEVEL, color="grey", linestyle=":"), ax_c.set_xlabel("optimizer step")
    ax_c.set_ylabel(f"validation accuracy at {most} pairs")
    for ax in (ax_w, ax_p, ax_c):
        ax.set_ylim(-0.02, 1.02), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(f"Associative recall (MQAR), {PROBE.n_layer} layers × {PROBE.n_embd}, RoPE; seeds pooled, "
                 "each variant at its chosen learning rate")
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


def copy_probe(found: dict, judged: dict, path: Path) -> None:
    """Section 3.3–3.4's figure: steps to learn the copy against head_dim per encoding (each seed, censored runs
    hollow, and the Kaplan–Meier median); RoPE + window's learning curves under the banded kernel and the dense
    mask, seed for seed; seed-mean accuracy against evaluation length."""
    plt = _pyplot()
    copy, res = found["copy"], judged["resolution"]
    fig, (ax_s, ax_k, ax_l) = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    encodings = {"learned": copying.LEARNED_AT, **{f"rope θ={b:g}": {hd: copying.ROPE_AT[hd, b] for hd in
                                                                     copying.HEAD_DIMS} for b in copying.BASES}}
    for offset, ((label, at), color) in enumerate(zip(encodings.items(), colors)):
        shift = 2 ** ((offset - 1) / 12)  # the encodings side by side at each head_dim
        points = [(hd * shift, step, reached) for hd, v in at.items() for step, reached in res["times"][v.name]]
        x, y, reached = zip(*points)
        ax_s.scatter(x, y, facecolors=[color if r else "none" for r in reached], edgecolors=color, s=18, label=label)
        medians = [(hd * shift, res["medians"][v.name]) for hd, v in at.items() if res["medians"][v.name] is not None]
        if medians:
            ax_s.plot(*zip(*medians), color=color, marker="_", label=f"{label} (KM median)")
    ax_s.set_xscale("log", base=2), ax_s.set_xticks(copying.HEAD_DIMS, [str(h) for h in copying.HEAD_DIMS])
    ax_s.set_xlabel("head_dim (width 64: 64 / head_dim heads)"), ax_s.set_ylabel(f"steps to {LEARNED:.0%}")
    ax_s.grid(alpha=0.3), ax_s.legend(fontsize=8), ax_s.set_title("Fixed-offset copy: resolution (hollow: censored)")
    for (kernel, v), style in zip(copying.KERNELS.items(), ("-", "--")):
        for i, r in enumerate(copy[v.name]):
            ax_k.plot(*zip(*r["curve"]), color=colors[i % len(colors)], linestyle=style,
                      label=kernel if i == 0 else None)
    ax_k.axhline(LEARNED, color="grey", linestyle=":"), ax_k.set_xlabel("optimizer step")
    ax_k.set_ylabel("copy accuracy"), ax_k.grid(alpha=0.3), ax_k.legend(fontsize=7)
    ax_k.set_title("RoPE + window, head_dim 8: banded kernel (—) vs dense mask (--)")
    for v, color in zip(copying.LENGTH_VARIANTS, colors):
        points = [(f, [r["lengths"][str(f)] for r in copy[v.name]]) for f in copying.LENGTH_FACTORS]
        points = [(f, x) for f, x in points if all(isinstance(a, float) for a in x)]
        ax_l.plot([f for f, _ in points], [statistics.mean(x) for _, x in points], marker="o", color=color,
                  label=v.name)
    ax_l.set_xscale("log", base=2), ax_l.set_xticks(copying.LENGTH_FACTORS, [f"{f}×" for f in copying.LENGTH_FACTORS])
    ax_l.set_xlabel("evaluation length / training length"), ax_l.set_ylabel("copy accuracy"), ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8), ax_l.set_title("Length generalisation")
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


def windows_bind(found: dict, judged: dict, path: Path) -> None:
    """Section 4.5: loss per position band and planted-fact retrieval against distance (seed means, 95% bootstrap
    intervals over windows), each window's reach dashed in its colour; and validation loss against the 124M's KV
    GiB at 32k, the recommended (non-dominated) variants filled."""
    plt = _pyplot()
    info, distances = found["variants"], found["distances"]
    fig, (ax_t, ax_r, ax_p) = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = dict(zip(info, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for role, v in info.items():
        bands = judged["bands"][role]
        mids = [sum(map(int, band.split("-"))) / 2 for band in bands]
        ax_t.plot(mids, [mean for mean, _ in bands.values()], marker="o", color=colors[role], label=v["label"])
        gains = [judged["retrieval"][role][str(d)]["gain"] for d in distances]
        errors = [[mean - low for mean, (low, _) in gains], [high - mean for mean, (_, high) in gains]]
        ax_r.errorbar(distances, [mean for mean, _ in gains], yerr=errors, marker="o", capsize=3, color=colors[role],
                      label=v["label"])
        if v["reach"] is not None:
            for ax in (ax_t, ax_r):
                ax.axvline(v["reach"], color=colors[role], linestyle="--", alpha=0.5)
        recommended = role in judged["recommended"]
        ax_p.scatter(v["kv_gib"], statistics.mean(judged["finals"][role]), s=60, color=colors[role],
                     facecolors=colors[role] if recommended else "none", label=v["label"])
    ax_t.set_xscale("log", base=2), ax_t.set_xlabel("position (band middle; dashed: reach Σ(w−1))")
    ax_t.set_ylabel("loss (nats/token)"), ax_t.grid(alpha=0.3), ax_t.legend(fontsize=8)
    ax_t.set_title(f"Loss by position, block {found['block']}")
    ax_r.axhline(0, color="grey", linestyle=":"), ax_r.set_xlabel("distance from the query back to B")
    ax_r.set_ylabel("gain in log p(B) from the planted fact (nats)"), ax_r.grid(alpha=0.3)
    ax_r.set_title("Planted-fact retrieval")
    ax_p.set_xlabel("KV GiB, 124M at 32k × 32, bf16"), ax_p.set_ylabel("validation loss (seed mean)")
    ax_p.grid(alpha=0.3), ax_p.set_title("Loss against cache (filled: recommended)")
    _save(fig, path)
