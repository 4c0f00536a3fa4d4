"""`gpt2-lightning analyze` end to end on the tiny budget: the document and plots, every section filled."""

import re

from gpt2_lightning.cli import main


def test_analyze_tiny_writes_every_section_and_plot(tmp_path, capsys):
    main(["analyze", "--budget", "tiny", "--out", str(tmp_path / "docs"), "--runs", str(tmp_path / "runs")])
    doc = (tmp_path / "docs" / "analysis.md").read_text()
    for n, title in enumerate(["Size and compute", "Measured speed and memory", "Quality at equal budget",
                               "Length extrapolation", "GQA from pretrained weights", "Challenges", "Verdict"], 1):
        assert f"## {n}. {title}" in doc
    assert "gpt2-lightning analyze --budget tiny" in doc and "wall time" in doc
    for png in ("attention_scaling.png", "val_loss.png"):
        assert (tmp_path / "docs" / "img" / png).read_bytes()[:4] == b"\x89PNG"
    # section 1: 24 variants with GPT-2's exact parameter count for the baseline
    assert "| learned, MHA, full | 124,439,808 |" in doc and "| rope, MQA, w1024 |" in doc
    # section 3: every trained variant with a finite loss; section 4: learned positions refuse 2×, RoPE runs
    for name in ("baseline", "rope", "gqa4", "window", "rope+gqa4+window"):
        assert re.search(rf"\| {re.escape(name)} \| \d+\.\d+ ± \d+\.\d+ \|", doc), name
    assert re.search(r"\| baseline \| \d+\.\d+ \| error: \*a sequence of 64 tokens is longer than block_size=32", doc)
    assert re.search(r"\| rope \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+ \|", doc)
    assert "mha_to_gqa(baseline, 4), no training" in doc
