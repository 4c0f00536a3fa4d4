"""Section 3.3's instruments and verdicts: the shifted evaluation really reads positions [start, start + T), the
forced dense mask really replaces the banded kernel (and is undone), the random-offset induction task's targets are
what it says, and the judgements on hand-made findings — censored runs stay censored, failed controls make a
verdict inconclusive."""

import dataclasses

import pytest
import torch

import gpt2_lightning.attention as attention_module
from gpt2_lightning.analysis.budgets import BUDGETS
from gpt2_lightning.analysis.probes import RandomOffsetInduction
from gpt2_lightning.analysis.sections import copying
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.lm_loss import IGNORE_INDEX
from gpt2_lightning.model import GPT

STEPS = 300
BUDGET = dataclasses.replace(BUDGETS["small"], copy_steps=STEPS)  # the no-slower margin: 10% of it, 30 steps


def _model(pos_encoding: str, block_size: int = 64, **fields) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=block_size, n_layer=2, n_head=4, n_embd=32,
                       pos_encoding=pos_encoding, **fields)
    return GPT(config).eval()


@torch.no_grad()
def test_rope_logits_on_a_shifted_sequence_equal_the_unshifted_ones():
    """RoPE's scores depend on offsets only: the whole sequence moved by 64 (past block_size, which RoPE runs past)
    gives the same logits, with full attention and with a window."""
    ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(1))
    for fields in ({}, {"sliding_window": 8}):
        model = _model("rope", block_size=32, **fields)
        torch.testing.assert_close(copying.Shifted(model, 64)(ids), model(ids), atol=1e-5, rtol=0)


@torch.no_grad()
def test_the_shifted_view_reads_learned_position_rows_start_to_start_plus_T():
    """A learned model whose rows [40, 56) are copies of rows [0, 16) gives, shifted by 40, exactly its unshifted
    logits; change row 55 and only the last position moves (causal). Shifting so far that the sequence ends past
    block_size is refused."""
    model = _model("learned")
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    wpe = model.transformer.wpe.weight
    assert not torch.allclose(copying.Shifted(model, 40)(ids), model(ids))  # different rows, different logits
    wpe[40:56] = wpe[0:16]
    torch.testing.assert_close(copying.Shifted(model, 40)(ids), model(ids), atol=0, rtol=0)
    wpe[55] += 1.0
    moved = (copying.Shifted(model, 40)(ids) - model(ids)).abs().amax(dim=(0, 2))
    assert moved[:-1].max() == 0 and moved[-1] > 0
    with pytest.raises(ValueError, match="longer than block_size=64"):
        copying.Shifted(model, 49)(ids)


def test_attention_kernel_forces_the_dense_mask_and_restores_the_choice(monkeypatch):
    """At T >= 2w `attention` takes the banded kernel; inside `attention_kernel(dense=True)` it takes the dense mask,
    with the same output; afterwards (even after an error) the banded kernel is back."""
    q, k, v = (torch.randn(1, 2, 64, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    banded = attention_module.attention(q, k, v, window=16)
    calls = []
    real = attention_module.banded_attention
    monkeypatch.setattr(attention_module, "banded_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with copying.attention_kernel(dense=True):
        dense = attention_module.attention(q, k, v, window=16)
    assert not calls
    torch.testing.assert_close(dense, banded, atol=1e-6, rtol=1e-5)
    with copying.attention_kernel(dense=False):
        attention_module.attention(q, k, v, window=16)
    assert len(calls) == 1
    with pytest.raises(RuntimeError), copying.attention_kernel(dense=True):
        raise RuntimeError
    assert attention_module.BANDED_MIN_WINDOWS == 2


def test_random_offset_induction_targets_follow_the_only_earlier_occurrence():
    task = RandomOffsetInduction(length=40, segment=6, vocab=60)
    inputs, targets, distances = task.sample(64, torch.Generator().manual_seed(3))
    assert inputs.shape == targets.shape == (64, 40)
    assert len(set(distances.tolist())) > 5  # the copy sits at many offsets, not one
    for row, target, distance in zip(inputs.tolist(), targets.tolist(), distances.tolist()):
        scored = [t for t, y in enumerate(target) if y != IGNORE_INDEX]
        assert len(scored) == task.segment - 1 and scored == list(range(scored[0], scored[0] + task.segment - 1))
        for t in scored:
            earlier = [j for j in range(t) if row[j] == row[t]]
            assert earlier == [t - distance]  # one earlier occurrence, `distance` back
            assert target[t] == row[earlier[0] + 1] == row[t + 1]
        repeated = [t for t in range(40) if row[t] in row[:t]]  # only the copy repeats anything
        assert repeated == list(range(scored[0], scored[0] + task.segment))


# ---- judgements on hand-made findings ----------------------------------------------------------------------------


def _run(reached_at: int | None, in_place: float = 1.0, shifted: float = 1.0, steps: int = STEPS) -> dict:
    curve = [(s, 1.0 if reached_at is not None and s >= reached_at else 0.5) for s in range(5, steps + 1, 5)]
    return {"curve": curve, "in_place": in_place, "shifted": shifted, "lengths": {str(f): 1.0 for f in (1, 2, 4, 8)}}


def _found(seeds: int = 5, **runs: list[dict]) -> dict:
    """Findings where every model learns at step 50 in every seed, but for `runs` (variant name → runs)."""
    copy = {v.name: [_run(50) for _ in range(seeds)] for v in copying.COPY_VARIANTS}
    induction = {v.name: [_run(100) for _ in range(seeds)] for v in copying.INDUCTION_PAIR.values()}
    for name, values in runs.items():
        (induction if name.startswith("induction ") else copy)[name.removeprefix("induction ")] = values
    return {"copy": copy, "induction": induction}


def _judge(found: dict) -> dict:
    return copying.judge(found, BUDGET)


ROPE_8, ROPE_32 = copying.ROPE_AT[8, 1e4].name, copying.ROPE_AT[32, 1e4].name


def test_never_reached_is_censored_and_decides_nothing():
    """Every run censored at the last step: no median, no log-rank test, every resolution verdict inconclusive."""
    found = _found()
    for v in copying.RESOLUTION:
        found["copy"][v.name] = [_run(None)] * 5
    res = _judge(found)["resolution"]
    assert res["times"][ROPE_8] == [(STEPS, False)] * 5 and res["medians"][ROPE_8] is None
    assert not res["tests"]["frequencies"].testable and not res["all_learned"]
    assert set(res["verdicts"].values()) == {"inconclusive"}


def test_more_frequencies_and_a_lower_base_learn_sooner_when_the_runs_say_so():
    slow = [_run(None), _run(None), _run(280), _run(None), _run(290)]  # 3 of 5 censored: counted as never, not 300
    fast = [_run(s) for s in (40, 45, 50, 55, 60)]
    res = _judge(_found(**{ROPE_8: slow, ROPE_32: fast, copying.ROPE_AT[8, 100.0].name: fast}))["resolution"]
    assert res["verdicts"]["frequencies"] == res["verdicts"]["base"] == "held"
    assert res["medians"][ROPE_8] is None and res["tests"]["frequencies"].diff < 0
    res = _judge(_found(**{ROPE_8: fast, ROPE_32: slow}))["resolution"]
    assert res["verdicts"]["frequencies"] == "did not hold"


def test_no_slower_needs_every_run_learned_and_a_lag_significantly_under_the_margin():
    learned = {hd: copying.LEARNED_AT[hd].name for hd in (16, 32)}
    rope = {hd: copying.ROPE_AT[hd, 1e4].name for hd in (16, 32)}
    base = [_run(s) for s in (50, 60, 70, 80, 90)]
    close = [_run(s) for s in (55, 60, 80, 85, 95)]  # lags 5, 0, 10, 5, 5 steps: well under 30 (10% of 300)
    found = _found(**{learned[16]: base, learned[32]: base, rope[16]: close, rope[32]: close})
    assert _judge(found)["resolution"]["verdicts"]["no_slower"] == "held"
    found["copy"][rope[32]] = close[:4] + [_run(None)]  # one censored run: non-inferiority cannot be shown
    assert _judge(found)["resolution"]["verdicts"]["no_slower"] == "inconclusive"
    lagging = [_run(s) for s in (200, 220, 240, 260, 280)]  # every learned run first: significantly slower
    found["copy"][rope[32]] = lagging
    judged = _judge(found)["resolution"]
    assert judged["catch_up"] == {16: "held", 32: "did not hold"} and judged["verdicts"]["no_slower"] == "did not hold"


def test_shift_verdict_needs_both_controls_learned_in_place():
    learned, rope = copying.SHIFT_PAIR["learned"].name, copying.SHIFT_PAIR["rope"].name
    dropped = [_run(50, shifted=s) for s in (0.05, 0.1, 0.02, 0.08, 0.04)]
    found = _found(**{learned: dropped})
    shift = _judge(found)["shift"]
    assert shift["verdict"] == "held" and shift["rope_gap"] == 0 and shift["learned_verdict"] == "held"
    found["copy"][rope] = [_run(50, shifted=0.7)] * 5  # RoPE did not transfer
    assert _judge(found)["shift"]["verdict"] == "did not hold"
    found["copy"][rope] = [_run(None, in_place=0.5, shifted=0.5)] * 5  # never learned the task where it trained
    assert _judge(found)["shift"]["verdict"] == "inconclusive"
    kept = [_run(50, shifted=s) for s in (0.99, 1.0, 0.995, 1.0, 0.99)]  # learned positions transferred too
    assert _judge(_found(**{learned: kept}))["shift"]["verdict"] == "did not hold"


def test_kernel_verdict_follows_per_seed_outcomes():
    banded, dense = (v.name for v in copying.KERNELS.values())
    seeds = [_run(200), _run(None), _run(None), _run(150), _run(None)]
    kernel = _judge(_found(**{banded: seeds, dense: list(seeds)}))["kernel"]
    assert kernel["verdicts"]["kernel"] == "held" and kernel["failed"] == 3 and kernel["curve_gap"] == 0
    assert kernel["verdicts"]["window"] == "did not hold"  # RoPE alone learned at 50 in every seed
    other = [_run(200), _run(None), _run(250), _run(150), _run(None)]  # one seed differs: not significant
    kernel = _judge(_found(**{banded: seeds, dense: other}))["kernel"]
    assert kernel["verdicts"]["kernel"] == "inconclusive" and kernel["curve_gap"] == 0.5


def test_induction_that_did_not_form_is_inconclusive_never_did_not_hold():
    names = {k: "induction " + v.name for k, v in copying.INDUCTION_PAIR.items()}
    unformed = _judge(_found(**{names["learned"]: [_run(None)] * 5, names["rope"]: [_run(None)] * 5}))["induction"]
    assert unformed["verdict"] == "inconclusive" and unformed["formed"] == {"learned": False, "rope": False}
    half = _judge(_found(**{names["learned"]: [_run(None)] * 5}))["induction"]
    assert half["verdict"] == "inconclusive" and half["formed"] == {"learned": False, "rope": True}
    assert _judge(_found())["induction"]["verdict"] == "held"


def test_variants_split_the_same_width_into_heads_of_the_stated_size():
    for v in copying.RESOLUTION:
        config = v.config(copying.TASK)
        assert config.head_dim == v.head_dim and config.n_embd == 64
        assert config.rope_theta == (v.rope_theta if v.pos_encoding == "rope" else GPTConfig.rope_theta)
    shifted = copying.SHIFT_PAIR["learned"].config(copying.TASK)
    assert shifted.block_size == 2 * copying.TASK.length and copying.SHIFT == copying.TASK.length
    assert len({v.key for v in copying.COPY_VARIANTS}) == len(copying.COPY_VARIANTS)
    assert dataclasses.replace(copying.WINDOWED, dense=True) in copying.KERNELS.values()


def test_length_generalisation_is_inconclusive_for_a_model_that_never_learned_the_copy():
    """A flat 0.37 at every length is not 'kept': the model never had the accuracy (the earlier analysis's 0.755)."""
    def runs(accuracies: dict[int, float]) -> list[dict]:
        return [{**_run(50), "lengths": {str(f): a for f, a in accuracies.items()}}] * 5

    flat_unlearned = runs({1: 0.37, 2: 0.36, 4: 0.36, 8: 0.36})
    falling = runs({1: 1.0, 2: 0.6, 4: 0.45, 8: 0.27})
    lengths = _judge(_found(**{copying.WINDOWED.name: flat_unlearned, ROPE_8: falling}))["lengths"]
    assert lengths == {"refused": [], "windowed": "inconclusive", "rope": "did not hold"}
    kept = runs({1: 0.99, 2: 0.98, 4: 0.97, 8: 0.96})
    assert _judge(_found(**{copying.WINDOWED.name: kept}))["lengths"]["windowed"] == "held"
