"""`gpt2-lightning analyze` on the tiny budget end to end, the statistics, and verdicts derived from numbers."""

import pickle
import re

import pytest

from gpt2_lightning.analysis import Comparison, cached, welch
from gpt2_lightning.cli import main

SECTIONS = ["Size and compute", "Measured speed and memory", "Probes: each mechanism in isolation",
            "Language-model quality", "Challenges", "Verdict", "At GPU scale"]


def test_analyze_tiny_writes_every_section_with_expectation_and_result(tmp_path, capsys):
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "docs"), "--runs", str(tmp_path / "runs")])
    doc = (tmp_path / "docs" / "analysis.md").read_text()
    for n, title in enumerate(SECTIONS, 1):
        assert f"## {n}. {title}" in doc
    assert "gpt2-lightning analyze --budget tiny" in doc and "wall time" in doc
    for png in ("attention_scaling.png", "probe_recall.png", "probe_passkey.png", "probe_copy.png", "val_loss.png"):
        assert (tmp_path / "docs" / "img" / png).read_bytes()[:4] == b"\x89PNG"
    # every measured section states its expectation and whether the measurement bore it out
    measured = re.split(r"\n##+ ", doc)
    for part in measured:
        title = part.splitlines()[0]
        if title.startswith(("1.", "2.", "3.1", "3.2", "3.3", "3.4", "4.", "4.1", "4.2", "4.3")) or title.startswith(
                ("Associative", "Retrieval", "Copying", "Length", "Using", "GQA from")):
            assert "**Expected.**" in part and re.search(r"\*\*(held|did not hold)\*\*", part), title
    assert "| learned, MHA, full | 124,439,808 |" in doc
    # learned positions refuse past block_size, in the probe and on text; RoPE runs
    assert re.search(r"\| baseline \| \d\.\d+ ± \d\.\d+ \| refused: \*a sequence of 128 tokens is longer", doc)
    assert re.search(r"\| rope \|" + r" \d\.\d+ ± \d\.\d+ \|" * 4, doc)
    for name in ("baseline", "rope", "gqa2", "window", "rope+gqa2+window"):
        assert re.search(rf"\| {re.escape(name)} \| \d+\.\d+ ± \d+\.\d+ \|", doc), name
    assert "unigram loss" in doc and "mha_to_gqa(baseline, 2), no training" in doc
    # a second call reuses every run it measured (no training: the same numbers)
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "again"), "--runs", str(tmp_path / "runs")])
    again = (tmp_path / "again" / "analysis.md").read_text()
    section = doc.index("## 3."), doc.index("## 5.")
    assert re.sub(r"\d+,\d+ \|", "", again[again.index("## 3."):again.index("## 5.")]) == re.sub(
        r"\d+,\d+ \|", "", doc[section[0]:section[1]])  # throughput columns aside


def test_welch_separates_distinct_groups_and_not_overlapping_ones():
    apart = welch([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert apart.significant and apart.diff == pytest.approx(-1.0) and apart.low < -1.0 < apart.high < 0
    overlapping = welch([1.0, 1.5, 0.5], [1.1, 0.6, 1.6])
    assert not overlapping.significant and overlapping.low < 0 < overlapping.high
    assert str(Comparison(0.5, 0.1, 0.9, 0.01)) == "+0.500 [+0.100, +0.900], p = 0.01"


def test_verdict_follows_the_numbers():
    from gpt2_lightning.analysis import BUDGETS, _verdict

    def found(p: float, recall_cost: str | None) -> dict:
        c = Comparison(-0.2, -0.3, -0.1, p)
        return {"lm": {"comparisons": {n: c for n in ("rope", "gqa2", "window", "rope+gqa2+window")}},
                "recall": {"cost": recall_cost}, "passkey": {"falls": True, "full": True, "reach": 30},
                "copy": {"copy": c, "rope_kept": True, "refused": True, "windowed_kept": True},
                "gqa": {"held": True}, "extrapolation": {"window_ok": True}}

    significant = _verdict(BUDGETS["tiny"], found(0.001, "MQA"))
    not_significant = _verdict(BUDGETS["tiny"], found(0.4, None))
    assert "significantly lower than the baseline's" in significant
    assert "first cost recall significantly at MQA" in significant
    assert "not significantly different" in not_significant and "no level of key/value sharing" in not_significant


def test_analyze_run_cache_is_data_only_and_a_damaged_or_foreign_entry_is_measured_again(tmp_path):
    """analyze keeps each run's measurements as JSON (weights as safetensors): nothing it reads back can run code,
    and an entry it cannot use is recomputed rather than trusted."""
    calls = []

    def measure():
        calls.append(1)
        return {"loss": 1.5}

    assert cached(tmp_path, "run", {"steps": 4}, measure) == {"loss": 1.5}
    assert cached(tmp_path, "run", {"steps": 4}, measure) == {"loss": 1.5} and len(calls) == 1  # reused
    assert cached(tmp_path, "run", {"steps": 8}, measure) == {"loss": 1.5} and len(calls) == 2  # another spec
    (tmp_path / "run.json").write_bytes(pickle.dumps({"spec": {"steps": 8}}))  # not JSON: measured again
    assert cached(tmp_path, "run", {"steps": 8}, measure) == {"loss": 1.5} and len(calls) == 3
