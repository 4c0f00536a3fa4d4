"""The synthetic probes: every target is the answer the sequence determines, and a model can learn one."""

import torch

from gpt2_lightning.analysis.probes import (
    AccuracyCurve,
    AssociativeRecall,
    Passkey,
    ProbeModel,
    RepeatedSegments,
    accuracy,
    steps_to,
    train_probe,
)
from gpt2_lightning.lm_loss import IGNORE_INDEX


def test_associative_recall_targets_are_the_values_bound_to_the_queried_keys():
    task = AssociativeRecall(n_keys=16, n_values=16)
    inputs, targets, distances = task.sample(8, torch.Generator().manual_seed(0), pairs=6)
    assert inputs.shape == targets.shape == (8, 3 * 6) and distances.shape == (8, 6)
    for row in range(8):
        queries = (targets[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert queries == list(range(12, 18))  # the keys again, back to back after the pairs
        for j, q in enumerate(queries):
            key = int(inputs[row, q])
            assert key < task.n_keys
            at = inputs[row, :12].tolist().index(key)  # the pair's key; its value stands just after it
            assert at % 2 == 0 and targets[row, q] == inputs[row, at + 1] >= task.n_keys
            assert distances[row, j] == q - at
        assert len(set(inputs[row, 0:12:2].tolist())) == 6  # distinct keys: one right answer per query
        assert (inputs[row, 12:] < task.n_keys).all()  # Zoology's MQAR: no answer is ever shown


def test_passkey_queries_answer_the_passkey_at_the_stated_distance():
    task = Passkey(length=40, n_filler=8, n_keys=8, queries=3)
    inputs, targets = task.batch(16, torch.Generator().manual_seed(0))
    for row in range(16):
        key_at = ((inputs[row] >= task.n_filler) & (inputs[row] < task.query)).nonzero().flatten()
        assert len(key_at) == 1
        for q in (targets[row] != IGNORE_INDEX).nonzero().flatten().tolist():
            assert q > key_at and inputs[row, q] == task.query and targets[row, q] == inputs[row, key_at]
    inputs, targets = task.at_distance(4, torch.Generator().manual_seed(1), distance=17)
    assert (inputs[:, -1] == task.query).all() and (targets[:, -1] == inputs[:, -1 - 17]).all()
    assert ((targets[:, :-1] == IGNORE_INDEX).all())


def test_repeated_segments_targets_copy_from_one_segment_back():
    task = RepeatedSegments(length=48, segment=6, vocab=50)
    inputs, targets = task.sample(4, torch.Generator().manual_seed(0), length=96)
    set_at = (targets[0] != IGNORE_INDEX).nonzero().flatten()
    # in every pair of segments, the copy's tokens after its first: 5 of each 12 positions
    assert len(set_at) == 96 // 12 * 5
    for t in set_at.tolist():
        nxt = t + 1  # the token a target predicts sits at t + 1; its source one segment earlier
        assert targets[0, t] == (inputs[0, nxt - 6] if nxt - 6 < 96 else None)


def test_a_probe_trains_through_the_module_and_learns_retrieval():
    """Full attention learns the passkey task in a few hundred steps (chance is 1/16)."""
    task = Passkey(length=48, n_filler=16, n_keys=16, queries=4)
    probe = ProbeModel(n_layer=2, n_head=4, n_embd=32, batch_size=32)
    evaluation = task.at_distance(128, torch.Generator().manual_seed(99), distance=40)
    curve = AccuracyCurve(evaluation, every=50)
    model = train_probe(task, probe.config(task, pos_encoding="rope"), probe, steps=250, seed=0, callbacks=[curve])
    assert accuracy(model, *evaluation).float().mean() > 0.8
    assert [step for step, _ in curve.points] == [50, 100, 150, 200, 250]
    assert steps_to(curve.points, 0.8) is not None and steps_to(curve.points, 1.01) is None
