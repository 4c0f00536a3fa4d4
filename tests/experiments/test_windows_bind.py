"""Section 4.5's pieces (issue 23, item 4): the Pareto front and what dominates what, the planted-fact sampler, the
reach of per-layer windows, the KV GiB of the Pareto table, and each budget's distances against its reaches."""

import pytest
import torch

from gpt2_lightning.analysis import held_out_text
from gpt2_lightning.analysis.budgets import BUDGETS
from gpt2_lightning.analysis.sections import windows
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

BASE = [5.00, 5.10, 5.20, 5.05, 5.15]  # seeds differ a lot; variants move with them (the same data order)
JITTER = [0.01, -0.01, 0.0, 0.005, -0.005]


def row(losses, kv_gib, tokens_per_sec):
    return {"losses": losses, "kv_gib": kv_gib, "tokens_per_sec": [tokens_per_sec] * len(losses)}


def test_pareto_names_what_dominates_each_row_and_keeps_ties_and_trade_offs():
    tied = [x + j for x, j in zip(BASE, JITTER)]  # no significant difference from BASE
    rows = {
        "small cache": row(BASE, 1.0, 100.0),
        "twin": row(BASE, 1.0, 100.0),  # identical: neither dominates the other
        "fast": row(tied, 4.0, 150.0),  # a larger cache bought with speed: a trade-off, not dominated
        "worse": row([x + 0.2 - j for x, j in zip(BASE, JITTER)], 4.0, 150.0),  # fast's cache and speed, higher loss
        "noisy timing": row(tied, 2.0, 95.0),  # within TIMING_TIE of 100 tokens/s: a tie there, a larger cache
    }
    assert windows.pareto(rows) == {"small cache": [], "twin": [], "fast": [], "worse": ["fast"],
                                    "noisy timing": ["small cache", "twin"]}
    # beaten on all three: lower loss, smaller cache, more than TIMING_TIE faster
    rows["beaten"] = row([x + 0.2 + j for x, j in zip(BASE, JITTER)], 8.0, 50.0)
    assert set(windows.pareto(rows)["beaten"]) == {"small cache", "twin", "fast", "worse", "noisy timing"}


def test_a_loss_difference_the_seeds_cannot_test_is_a_tie():
    one_seed = {"a": row([5.0], 1.0, 100.0), "b": row([4.0], 1.0, 100.0)}  # one seed: untestable, however large
    assert windows.pareto(one_seed) == {"a": [], "b": []}
    clear = {"a": row([x + j for x, j in zip(BASE, JITTER)], 1.0, 100.0), "b": row([x - 0.3 for x in BASE], 1.0, 100.0)}
    assert windows.pareto(clear) == {"a": ["b"], "b": []}


def test_the_planted_fact_lies_at_the_stated_distance_and_the_decoy_differs_only_in_its_first_token():
    T, vocab = 40, 64
    inputs = torch.randint(0, vocab // 4, (6, T), generator=torch.Generator().manual_seed(0))  # leaves room
    distances = [1, 7, 30, T - 2]
    planted, decoys, answers = windows.plant_facts(inputs, distances, vocab, torch.Generator().manual_seed(1))
    assert planted.shape == decoys.shape == (len(distances), 6, T)
    for k, d in enumerate(distances):
        for i in range(6):
            a, b, other = planted[k, i, -1], answers[i], decoys[k, i, T - 2 - d]
            assert planted[k, i, T - 1 - d] == b and planted[k, i, T - 2 - d] == a and decoys[k, i, -1] == a
            tokens = torch.stack([a, b, other])
            assert len(set(tokens.tolist())) == 3 and vocab // 4 <= tokens.min() and tokens.max() < vocab - 1
            assert not torch.isin(tokens, inputs[i]).any()  # absent from the window
            changed = (planted[k, i] != inputs[i]).nonzero().flatten().tolist()
            assert changed == sorted({T - 2 - d, T - 1 - d, T - 1})
            assert (decoys[k, i] != planted[k, i]).nonzero().flatten().tolist() == [T - 2 - d]
    with pytest.raises(ValueError, match="does not fit"):
        windows.plant_facts(inputs, [T - 1], vocab, torch.Generator())


def _model(sliding_window, T=48, vocab=64):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=T, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope",
                         sliding_window=sliding_window)).eval()


def test_reach_is_the_sum_over_layers_of_w_minus_1_and_bounds_what_the_last_position_sees():
    """As tests/unit/test_variants.py::test_each_layer_reaches_exactly_its_own_window: windows (3, 6) let the last
    logits see (3 − 1) + (6 − 1) = 7 positions back and no further."""
    assert windows.reach([3, 6]) == 7 and windows.reach([16] * 4) == 4 * 15 and windows.reach([16, None]) is None
    model, x = _model([3, 6]), torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(2))
    last = model(x)[0, -1]
    for back, seen in ((7, True), (8, False)):
        changed = x.clone()
        changed[0, -1 - back] = (changed[0, -1 - back] + 1) % 64
        assert ((model(changed)[0, -1] - last).abs().max() > 1e-4) == seen, back


def test_retrieval_gain_is_exactly_zero_once_the_facts_first_token_is_beyond_the_reach():
    """Through `evaluate`: windows (3, 3) reach 4 back, so a fact with B 3 back (A 4 back) can move log p(B) against
    its decoy — even in an untrained model — and one with B 4 back (A 5 back) cannot, at all; full attention is
    moved at every distance."""
    T = 48
    inputs = torch.randint(0, 16, (4, T + 1), generator=torch.Generator().manual_seed(3))
    distances = [3, 4, 20]
    planted, decoys, answers = windows.plant_facts(inputs[:, :-1], distances, 64, torch.Generator().manual_seed(4))
    text = windows.HeldOut(inputs[:, :-1], inputs[:, 1:], distances, planted, decoys, answers)
    local = windows.evaluate(_model(3), text)["retrieval"]
    assert [windows.out_of_reach(d, windows.reach([3, 3])) for d in distances] == [False, True, True]
    assert max(abs(g) for g in local["3"]["gains"]) > windows.EXACT
    assert max(abs(g) for d in ("4", "20") for g in local[d]["gains"]) < windows.EXACT
    full = windows.evaluate(_model(None), text)["retrieval"]
    assert min(max(abs(g) for g in full[str(d)]["gains"]) for d in distances) > windows.EXACT


def test_kv_gib_is_the_library_formula_for_the_124m_shape_with_the_windows_scaled_and_stretched():
    hybrid = windows.at_124m([16, 16, 16, None], 64)
    assert hybrid.layer_windows == [1024] * 9 + [None] * 3
    assert windows.kv_gib(hybrid) == hybrid.kv_cache_bytes(32768, 32, 2) / 2**30
    # written out: K and V × batch 32 × 12 heads × 64 × (9 local slots of 1024 + 3 global of 32768) × 2 bytes
    assert windows.kv_gib(hybrid) == 2 * 32 * 12 * 64 * (9 * 1024 + 3 * 32768) * 2 / 2**30 == 9.84375
    assert windows.kv_gib(windows.at_124m([None] * 4, 64)) == 36.0
    growing = windows.at_124m(windows.growing(16, 4), 64)
    assert growing.layer_windows == [w * 64 for w in (4, 9, 17, 34) for _ in range(3)]  # still growing with depth
    assert windows.kv_gib(growing) == windows.kv_gib(windows.at_124m([16] * 4, 64))  # the same cache as uniform 16


@pytest.mark.parametrize("name", BUDGETS)
def test_each_budget_places_its_facts_and_control_around_its_reaches(name):
    """The distances fall inside every window's reach, between the two uniform windows' and beyond both; the
    growing schedule has the small window's reach; the control's shortest kept text (T/8) lies beyond the small
    window's reach and its longest (T/2) beyond the large one's."""
    budget = BUDGETS[name]
    T, table = budget.windows_block, windows.variants(budget)
    small, large = (windows.reach(GPTConfig(n_layer=budget.n_layer, sliding_window=table[r]).layer_windows)
                    for r in ("small", "large"))
    near, between, far = windows.fact_distances(T, (small, large))
    assert near + 1 <= small < between and between + 1 <= large < far <= T - 2  # A, d + 1 back, within or not
    assert windows.reach(windows.growing(budget.windows_sizes[0], budget.n_layer)) == small
    assert small < T * min(held_out_text.DISTANCES) and large < T * max(held_out_text.DISTANCES)
