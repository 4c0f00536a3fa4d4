"""`gpt2-lightning analyze` on the tiny budget end to end, and verdicts derived from numbers: paired and Holm-adjusted,
inconclusive where the data cannot decide, censored runs never counted as finished. (The statistics themselves:
test_statistics.py; the run cache: test_run_cache.py.)"""

import re

from gpt2_lightning.analysis.sections import copying, lm_quality, recall
from gpt2_lightning.cli import main

SECTIONS = ["Size and compute", "Measured speed and memory", "Probes: each mechanism in isolation",
            "Language-model quality", "Challenges", "Verdict", "At GPU scale"]


def test_analyze_tiny_writes_every_section_with_expectation_and_result(tmp_path, capsys):
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "docs"), "--runs", str(tmp_path / "runs")])
    doc = (tmp_path / "docs" / "analysis.md").read_text()
    for n, title in enumerate(SECTIONS, 1):
        assert f"## {n}. {title}" in doc
    assert "gpt2-lightning analyze --budget tiny" in doc and "wall time" in doc
    runs = int(re.search(r"all (\d+) runs measured in this call", doc).group(1))
    assert runs > 30  # every probe and language-model run of the budget
    for png in ("attention_scaling.png", "probe_recall.png", "probe_passkey.png", "probe_copy.png", "val_loss.png"):
        assert (tmp_path / "docs" / "img" / png).read_bytes()[:4] == b"\x89PNG"
    # every measured section states its expectation and its computed verdict
    measured = re.split(r"\n##+ ", doc)
    for part in measured:
        title = part.splitlines()[0]
        if title.startswith(("1.", "2.", "3.1", "3.2", "3.3", "3.4", "4.", "4.1", "4.2", "4.3")):
            assert "**Expected.**" in part and re.search(r"\*\*(held|did not hold|inconclusive)\*\*", part), title
    assert not re.search(r"p = 0(?![.\d])", doc)  # no p = 0: a bound ("p < 0.0001") or "cannot test"
    assert "| learned, MHA, full | 124,439,808 |" in doc
    # learned positions refuse past block_size, in the probe and on text; RoPE runs
    assert re.search(r"\| baseline \| \d\.\d+ ± \d\.\d+ \| refused: \*a sequence of 128 tokens is longer", doc)
    assert re.search(r"\| rope \|" + r" \d\.\d+ ± \d\.\d+ \|" * 4, doc)
    for name in ("baseline", "rope", "gqa2", "window", "rope+gqa2+window"):
        assert re.search(rf"\| {re.escape(name)} \| \d+\.\d+ ± \d+\.\d+ \|", doc), name
    assert "unigram loss" in doc and "mha_to_gqa(baseline, 2), no training" in doc
    # 8 copy steps never reach 90%: censored ("≥ 8"), not counted as finishing at step 8
    assert re.search(r"\| baseline \| ≥ 8, ≥ 8 \| not reached \|", doc)
    # a second call reuses every run it measured (no training: the same numbers), and says so
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "again"), "--runs", str(tmp_path / "runs")])
    again = (tmp_path / "again" / "analysis.md").read_text()
    assert f"{runs} of {runs} runs reused from an earlier call" in again
    section = doc.index("## 3."), doc.index("## 5.")
    assert again[again.index("## 3."):again.index("## 5.")] == doc[section[0]:section[1]]


def _lm_findings(finals: dict[str, list[float]]) -> dict:
    return {"finals": finals, "unigram": 6.0, "tokens_per_sec": {n: [1000.0] * len(v) for n, v in finals.items()}}


def test_lm_verdicts_are_paired_holm_adjusted_and_inconclusive_when_the_data_cannot_decide():
    base = [5.00, 5.10, 5.20, 5.05, 5.15]  # seeds differ a lot; the variants move with them (shared data order)
    jitter = (0.01, -0.01, 0.0, 0.005, -0.005)
    clear = _lm_findings({"baseline": base, "rope": [x - 0.10 + d for x, d in zip(base, jitter)],
                          "gqa2": [x + 0.08 - d for x, d in zip(base, jitter)],
                          "window": [x + d for x, d in zip(base, (0.002, -0.003, 0.001, -0.001, 0.002))],
                          "rope+gqa2+window": base})
    judged = lm_quality.judge(clear)
    assert judged["verdicts"] == {"rope": "held", "gqa2": "held", "window": "held"}
    # Welch over the same numbers would see the seed spread and decide nothing
    noisy = _lm_findings({"baseline": base, "rope": [5.3, 4.9, 5.0, 5.2, 4.95], "gqa2": [5.2, 5.0, 5.3, 4.9, 5.1],
                          "window": [5.25, 4.9, 5.2, 5.0, 5.1], "rope+gqa2+window": base})
    assert set(lm_quality.judge(noisy)["verdicts"].values()) == {"inconclusive"}  # the window included: no TOST win


def test_lm_verdict_without_variance_is_inconclusive_never_p_zero():
    flat = _lm_findings({n: [5.0, 5.0, 5.0] for n in ("baseline", "rope", "gqa2", "window", "rope+gqa2+window")})
    judged = lm_quality.judge(flat)
    assert set(judged["verdicts"].values()) == {"inconclusive"}
    assert "no variance: cannot test" in str(judged["comparisons"]["rope"])


def _recall_findings(accuracies: dict[str, list[float]]) -> dict:
    return {name: [{"by_pairs": {str(recall.MOST): a}} for a in values] for name, values in accuracies.items()}


def test_recall_verdict_is_inconclusive_while_mha_has_not_learned_the_task():
    falling = {"MHA": [0.95, 0.97, 0.96], "GQA-4": [0.90, 0.93, 0.91], "GQA-2": [0.70, 0.74, 0.71],
               "MQA": [0.40, 0.45, 0.41]}
    assert recall.judge(_recall_findings(falling))["verdict"] == "held"
    unlearned = {name: [a - 0.5 for a in values] for name, values in falling.items()}
    assert recall.judge(_recall_findings(unlearned))["verdict"] == "inconclusive"


def _copy_run(reached_at: int | None, steps: int = 300) -> dict:
    curve = [(s, 1.0 if reached_at is not None and s >= reached_at else 0.5) for s in range(10, steps + 1, 10)]
    return {"curve": curve, "lengths": {}}


def test_copy_runs_that_never_learned_are_censored_and_cannot_make_a_variant_look_fast():
    """Counting a censored run as finishing at 300 would give 'baseline' a mean of 300 and RoPE a 'significant' lead;
    censored, the baseline has no median and the log-rank test decides from who reached the level and when."""
    found = {name: [_copy_run(None)] * 3 for name in copying.VARIANTS}
    found["rope"] = [_copy_run(None)] * 3
    judged = copying.judge_copying(found)
    assert judged["times"]["baseline"] == [(300, False)] * 3 and judged["medians"]["baseline"] is None
    assert judged["verdict"] == "inconclusive" and not judged["tests"]["rope"].testable
    found["rope"] = [_copy_run(50), _copy_run(60), _copy_run(70)]
    judged = copying.judge_copying(found)
    assert judged["medians"]["rope"] == 60 and judged["tests"]["rope"].diff < 0
