"""Section 3.1's protocol (issue 22, item 4) on hand-made findings: Wilson intervals, the width below which recall
fails, censored steps to 95%, the controls without which the probe cannot judge, and a learning rate chosen on the
validation stream, never on the final evaluation."""

import pytest

from gpt2_lightning.analysis.sections import recall
from gpt2_lightning.analysis.statistics import wilson

FLOOR = 0.1  # a made-up no-lookup baseline at the most pairs: a variant recalls from FLOOR + MARGIN = 0.6
BASELINES = {"value elimination": {"by_pairs": {str(recall.MOST): FLOOR}}}
RATE = "0.003"


def _run(reached_at: int | None = None, right: int = 990, asked: int = 1000, last: int = 1500,
         beyond: int = 100) -> dict:
    """A run whose validation accuracy jumps to 0.99 at `reached_at` (None: stays at 0.5 to `last`, censored), whose
    final evaluation got `right` of `asked`, and `beyond` of 1000 right on the keys beyond the window's reach."""
    end = last if reached_at is None else reached_at + recall.HOLD * 50  # stopped once it held LEVEL
    curve = [(s, 0.99 if reached_at is not None and s >= reached_at else 0.5) for s in range(50, end + 1, 50)]
    return {"curve": curve, "by_pairs": {str(recall.MOST): [right, asked]},
            "beyond": {"right": beyond, "asked": 1000, "baseline": {"seen value": 1000 * FLOOR,
                                                                    "value elimination": 1000 * FLOOR}}}


def _found(runs: dict[str, list[dict]], control: list[dict]) -> dict:
    return {"sweep": {name: {RATE: per_seed[0]} for name, per_seed in runs.items()},
            "chosen": {name: RATE for name in runs}, "runs": runs,
            "control": {"learning_rate": float(RATE), "runs": control}}


def _ladder(recalling: int) -> dict[str, list[dict]]:
    """The first `recalling` widths of the ladder recall (reach 95% by step 200–300, 990 of 1000 right); the
    narrower ones never reach it and answer 300 of 1000."""
    return {v.name: ([_run(200 + 50 * s) for s in range(3)] if i < recalling else [_run(None, right=300)] * 3)
            for i, v in enumerate(recall.LADDER)}


WINDOW_FAILS = [_run(None, right=300, beyond=110)] * 3


@pytest.mark.parametrize(("right", "asked", "low", "high"),
                         [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                          (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_newcombes_worked_examples(right, asked, low, high):
    """Newcombe (1998), Statistics in Medicine 17:857–872, Table I: the score method's intervals."""
    assert wilson(right, asked) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_keeps_a_width_at_all_right_and_refuses_impossible_counts():
    low, high = wilson(29, 29)
    assert high == 1.0 and low == pytest.approx(0.8830, abs=5e-5)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_recall_is_judged_on_the_interval_not_the_point_estimate():
    """0.65 clears FLOOR + MARGIN = 0.6 as a point, but 13 of 20 leaves a lower bound of 0.43: not shown to recall;
    650 of 1,000 is."""
    assert not recall.recalls(13, 20, FLOOR)
    assert recall.recalls(650, 1000, FLOOR)


def test_the_width_below_which_recall_fails_from_hand_made_states():
    r, f, m = "recalls", "fails", "mixed"
    assert recall.width_threshold({64: r, 32: r, 16: r, 8: f, 4: f, 2: f}) == {
        "recalls_down_to": 16, "fails_at": 8, "monotone": True}
    assert recall.width_threshold({64: r, 32: r, 16: m, 8: f}) == {
        "recalls_down_to": 32, "fails_at": 16, "monotone": True}
    assert recall.width_threshold({64: r, 32: f, 16: r, 8: f})["monotone"] is False
    assert recall.width_threshold({64: r, 32: r, 2: r}) == {"recalls_down_to": 2, "fails_at": None, "monotone": True}
    assert recall.width_threshold({64: f, 32: f}) == {"recalls_down_to": None, "fails_at": 64, "monotone": True}


def test_a_ladder_that_fails_below_gqa_2_holds_and_one_that_always_recalls_does_not():
    judged = recall.judge(_found(_ladder(3), WINDOW_FAILS), BASELINES)
    assert judged["controls"]["ok"] and judged["threshold"]["recalls_down_to"] == 16
    assert judged["threshold"]["fails_at"] == 8 and judged["states_by_width"][8] == "fails"
    assert judged["verdict"] == "held" and judged["gqa"] == "held"
    judged = recall.judge(_found(_ladder(len(recall.LADDER)), WINDOW_FAILS), BASELINES)
    assert judged["threshold"]["fails_at"] is None and judged["verdict"] == "did not hold"
    judged = recall.judge(_found(_ladder(2), WINDOW_FAILS), BASELINES)  # GQA-2 fails: Ainslie's claim does not hold
    assert judged["verdict"] == "held" and judged["gqa"] == "did not hold"


def test_a_run_that_never_reached_95_percent_is_censored_not_finished():
    never = _run(None, last=1500)
    assert recall.time_to_level(never) == (1500, False)
    assert recall.time_to_level(_run(250)) == (250, True)
    judged = recall.judge(_found(_ladder(3), WINDOW_FAILS), BASELINES)
    narrow = recall.LADDER[-1].name
    assert judged["times"][narrow] == [(1500, False)] * 3 and judged["medians"][narrow] is None
    assert judged["tests"][narrow].observed_a == 0  # at risk until 1500, never counted as reaching there
    assert judged["medians"][recall.MHA.name] == 250


def test_a_window_that_recalls_beyond_its_reach_makes_every_verdict_inconclusive():
    leaking = [_run(None, right=300, beyond=110), _run(None, right=300, beyond=950), _run(None, right=300)]
    judged = recall.judge(_found(_ladder(3), leaking), BASELINES)
    assert judged["window_flags"] == [False, True, False] and not judged["controls"]["window_fails"]
    assert judged["verdict"] == judged["gqa"] == "inconclusive"
    assert set(judged["slower"].values()) == {"inconclusive"}


def test_full_attention_that_does_not_recall_makes_the_verdict_inconclusive():
    judged = recall.judge(_found(_ladder(0), WINDOW_FAILS), BASELINES)
    assert not judged["controls"]["full_passes"] and judged["threshold"]["fails_at"] == recall.MHA.width
    assert judged["verdict"] == "inconclusive"


def test_the_learning_rate_is_chosen_on_validation_never_on_the_final_evaluation():
    """0.001 reached 95% on validation but evaluates badly; 0.01 never converged on validation but evaluates
    perfectly: a choice on the evaluation would take 0.01."""
    by_rate = {"0.001": _run(300, right=100), "0.01": _run(None, right=1000)}
    assert recall.choose_learning_rate(by_rate) == "0.001"
    assert recall.choose_learning_rate({"0.001": _run(600), "0.003": _run(300), "0.01": _run(450)}) == "0.003"
    low, high = _run(None), _run(None)
    high["curve"][-1] = (1500, 0.8)
    assert recall.choose_learning_rate({"0.001": low, "0.003": high}) == "0.003"


def test_a_width_still_learning_when_its_steps_ran_out_leaves_the_threshold_undecided():
    """MQA's runs never reached 95% but were still climbing (0.3 → 0.5 over their last quarter): the budget ended,
    not the width — inconclusive, where the same runs flat at 0.5 make the verdict held."""
    runs = _ladder(3)
    rising = _run(None, right=300)
    rising["curve"] = [(s, 0.3 if s <= 1100 else 0.5) for s, _ in rising["curve"]]
    assert recall.still_learning(rising) and not recall.still_learning(_run(None)) and not recall.still_learning(
        _run(300))
    runs[recall.LADDER[3].name] = [rising, _run(None, right=300), _run(None, right=300)]
    judged = recall.judge(_found(runs, WINDOW_FAILS), BASELINES)
    assert judged["states_by_width"][8] == "still learning" and judged["verdict"] == "inconclusive"
