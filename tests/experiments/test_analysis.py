"""`gpt2-lightning analyze` on the tiny budget end to end, and verdicts derived from numbers: paired and Holm-adjusted,
inconclusive where the data cannot decide, censored runs never counted as finished. (The statistics themselves:
test_statistics.py; the run cache: test_run_cache.py.)"""

import contextlib
import inspect
import re

import pytest

import gpt2_lightning.analysis.plots
import gpt2_lightning.analysis.report
import gpt2_lightning.analysis.statistics
from gpt2_lightning.analysis import analyze
from gpt2_lightning.analysis.run_cache import RENDERING, RunCache
from gpt2_lightning.analysis.sections import lm_quality
from gpt2_lightning.cli import main
from gpt2_lightning.errors import UsageError

SECTIONS = ["Size and compute", "Measured speed and memory", "Probes: each mechanism in isolation",
            "Language-model quality", "Challenges", "Verdict", "At GPU scale"]


def _refused(*args, **kwargs):
    raise AssertionError("a cached run's measurement called a renderer, which the run cache's code key leaves out")


@contextlib.contextmanager
def renderers_refused():
    """Every function of the renderers (statistics, report, plots) raises while inside: its code object is swapped,
    so that names a section imported with `from … import` are fenced too."""
    modules = (gpt2_lightning.analysis.statistics, gpt2_lightning.analysis.report, gpt2_lightning.analysis.plots)
    swapped = {fn: fn.__code__ for m in modules for fn in vars(m).values()
               if inspect.isfunction(fn) and fn.__module__ == m.__name__ and not fn.__closure__}
    try:
        for fn in swapped:
            fn.__code__ = _refused.__code__
        yield
    finally:
        for fn, code in swapped.items():
            fn.__code__ = code


def test_the_fence_covers_every_renderer_the_code_key_leaves_out():
    assert {"analysis/statistics.py", "analysis/report.py", "analysis/plots.py", "analysis/run.py"} == RENDERING
    with renderers_refused(), pytest.raises(AssertionError, match="called a renderer"):
        gpt2_lightning.analysis.statistics.holm([0.01, 0.02])
    assert gpt2_lightning.analysis.statistics.holm([0.01]) == [0.01]


def test_analyze_tiny_writes_every_section_with_expectation_and_result(tmp_path, capsys, monkeypatch):
    # a cached run is reused while the renderers change (they are not in its code key): its measurement must not
    # call one, or an edit to a statistic would leave stale numbers in the cache
    measure = RunCache.run

    def fenced(self, key, spec, compute, weights=None):
        def guarded():
            with renderers_refused():
                return compute()
        guarded.__module__ = getattr(compute, "__module__", None)
        return measure(self, key, spec, guarded, weights)

    monkeypatch.setattr(RunCache, "run", fenced)
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
    assert re.search(r"\| learned, head_dim 8 \| \d\.\d+ ± \d\.\d+ \| refused: \*a sequence of 128 tokens is "
                     r"longer", doc)
    assert re.search(r"\| rope θ=10000, head_dim 8 \|" + r" \d\.\d+ ± \d\.\d+ \|" * 4, doc)
    for name in ("baseline", "rope", "gqa2", "window", "rope+gqa2+window"):
        assert re.search(rf"\| {re.escape(name)} \| \d+\.\d+ ± \d+\.\d+ \|", doc), name
    assert "unigram loss" in doc
    # the GQA ladder (tiny: 4 heads, so n_kv 2 and 1, as is and widened) and uptraining's arms at every α
    for rung in ("baseline", "gqa2", "gqa2+mlp", "mqa", "mqa+mlp"):
        assert re.search(rf"\| {re.escape(rung)} \| \d \| \d+ \| [\d,]+ \([+-][\d,]+\) \|", doc), rung
    assert re.search(r"\| converted, first head \| \d\.\d+ ± \d\.\d+ \|( \d\.\d+ ± \d\.\d+ \|){4}", doc)
    # 8 copy steps never reach 90%: censored ("≥ 8"), not counted as finishing at step 8
    assert re.search(r"\| learned, head_dim 8 \| 8 \| — \| — \| ≥ 8 \| not reached \| — \|", doc)
    # the closing table: every job's row with its exact sizes, its decode ratio and computed verdicts; and the limits
    choice = doc[doc.index("### Which variant for which job"):doc.index("### What this budget cannot tell")]
    assert re.search(r"\| long context that must still retrieve distant facts \| hybrid 3 local : 1 global \| 123\.7 M "
                     r"\| 0\.10 / 0\.31 / 1\.15 \| [\d.]+ ms \([\d.]+×\) \(hybrid 3:1, w 256\) \|", choice)
    assert len(re.findall(r"— \*\*(held|did not hold|inconclusive)\*\*", choice)) >= 10
    assert re.search(r"could detect \(80% power\) was \d\.\d{3} nats, the largest \d\.\d{3}", doc)
    # a second call reuses every run it measured (no training: the same numbers), and says so
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "again"), "--runs", str(tmp_path / "runs")])
    again = (tmp_path / "again" / "analysis.md").read_text()
    assert f"{runs} of {runs} runs reused from an earlier call" in again
    section = doc.index("## 3."), doc.index("## 5.")
    assert again[again.index("## 3."):again.index("## 5.")] == doc[section[0]:section[1]]


def _lm_findings(finals: dict[str, list[float]]) -> dict:
    return {"finals": finals, "unigram": 6.0, "tokens_per_sec": {n: [1000.0] * len(v) for n, v in finals.items()},
            "flops_per_token": {n: 1e6 for n in finals}}


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


def test_sections_measure_a_subset_into_the_cache_and_write_no_document(tmp_path, capsys):
    """`--sections`: a medium analysis measured section by section; unknown names refused in one line."""
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "docs"), "--runs", str(tmp_path / "runs"),
          "--sections", "size"])
    assert "measured size into" in capsys.readouterr().out
    assert not (tmp_path / "docs" / "analysis.md").exists()
    with pytest.raises(UsageError, match="unknown section.*copies.*choose from size, speed"):
        analyze("tiny", tmp_path / "docs", tmp_path / "runs", ["size", "copies"])
