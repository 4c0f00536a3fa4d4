"""Section 1's KV-memory table (issue 23, item 6): every variant's formula equals an allocated cache, and the ratios
the document states follow from it."""

from gpt2_lightning.analysis.sections import size


def test_kv_memory_by_formula_equals_the_allocated_cache_and_hybrids_pay_only_for_global_layers():
    rows = {r["name"]: r for r in size.kv_memory(checked_context=300)}
    assert all(r["formula_equals_allocated"] for r in rows.values())
    mha, hybrid = rows["MHA"]["gib"], rows["hybrid 3:1, w 1024"]["gib"]
    assert mha["32768x1"] == 1.125  # 12 layers × 2 × 32k × 768 × 2 bytes
    assert 0.25 < hybrid["32768x1"] / mha["32768x1"] < 0.3  # 3 of 12 layers global, plus 9 × 1024 slots
    assert rows["window 1024"]["gib"]["131072x32"] == rows["window 1024"]["gib"]["8192x32"]  # flat in context
    assert rows["GQA-4 + hybrid 3:1"]["gib"]["32768x32"] * 3 == hybrid["32768x32"]
