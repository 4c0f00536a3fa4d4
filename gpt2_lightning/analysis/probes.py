"""Synthetic probes: small tasks that isolate what one attention mechanism can and cannot do.

Each task draws batches of `(inputs, targets)`, (B, T) int64 each, where a target is -100 (ignored by the
loss) wherever the answer is not determined by the sequence, so the loss and the accuracy measure exactly
the ability the task is about:

- `AssociativeRecall` (multi-query associative recall, Zoology's MQAR): key–value pairs, then the keys again
  in another order, each query's answer its value and never shown. Recall has to store every pair in the keys
  and values of attention — what grouped-query attention shrinks.
- `Passkey`: one passkey token in filler, then query tokens whose answer is the passkey; the distance from
  the passkey to a query is what a sliding window limits (L·(w−1) positions through L layers).
- `RepeatedSegments`: segments of random tokens, each followed by a copy; predicting the copy needs an
  induction head (find the earlier occurrence, read what followed it). The copy distance is fixed, so the
  task is the same at any total length — what length generalisation asks of position encodings.

Models are trained through `GPT2LightningModule` and a Lightning `Trainer`, as `fit` trains them
(`gpt2_lightning.analysis.experiment.train_quietly`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from gpt2_lightning.analysis.experiment import train_quietly
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import UsageError
from gpt2_lightning.lm_loss import IGNORE_INDEX
from gpt2_lightning.model import GPT
from gpt2_lightning.train.module import GPT2LightningModule

Batch = tuple[torch.Tensor, torch.Tensor]


def _random_tokens(shape: tuple[int, ...], low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator)


def _distinct(batch: int, count: int, population: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct integers in [0, population) per row, (batch, count)."""
    return torch.rand(batch, population, generator=generator).argsort(dim=1)[:, :count]


@dataclasses.dataclass(frozen=True)
class AssociativeRecall:
    """k1 v1 … kN vN, then the N keys again in a random order, each query's target its value (N = `pairs`): the
    multi-query associative recall (MQAR) of Zoology (Arora et al. 2023, `zoology/data/multiquery_ar.py`), scaled
    to CPU budgets — a small vocabulary, the queries back to back instead of spread over filler.

    As in Zoology, an answer is never in the input: after a query comes the next query, not its value, so a model
    that looks nothing up cannot narrow its guess by eliminating values already answered (the earlier probe showed
    the answers, and its models learned that heuristic instead of recall). Keys are distinct tokens [0, n_keys);
    values are drawn i.i.d. from [n_keys, n_keys + n_values) (one may repeat); a sequence is 3N inputs long.
    `distances` gives, per query, how far back its key stood.
    """

    n_keys: int = 64
    n_values: int = 64
    train_pairs: tuple[int, ...] = (4, 8, 16)

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values

    @property
    def max_length(self) -> int:
        return 3 * max(self.train_pairs)

    def sample(self, batch: int, generator: torch.Generator,
               pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, distances): distances (batch, pairs) of each query from its key, in positions."""
        keys = _distinct(batch, pairs, self.n_keys, generator)
        values = _random_tokens((batch, pairs), self.n_keys, self.vocab_size, generator)
        order = torch.rand(batch, pairs, generator=generator).argsort(dim=1)
        inputs = torch.empty(batch, 3 * pairs, dtype=torch.long)
        inputs[:, 0 : 2 * pairs : 2], inputs[:, 1 : 2 * pairs : 2] = keys, values
        inputs[:, 2 * pairs :] = keys.gather(1, order)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, 2 * pairs :] = values.gather(1, order)
        query_at = 2 * pairs + torch.arange(pairs)
        return inputs, targets, query_at - 2 * order

    def batch(self, batch: int, generator: torch.Generator) -> Batch:
        pairs = self.train_pairs[int(torch.randint(len(self.train_pairs), (), generator=generator))]
        return self.sample(batch, generator, pairs)[:2]


@dataclasses.dataclass(frozen=True)
class Passkey:
    """Filler tokens, one passkey, then `queries` query tokens after it whose answer is the passkey.

    Filler is [0, n_filler), passkeys [n_filler, n_filler + n_keys), the query token the last id. Training
    puts the passkey anywhere and the queries anywhere after it; `at_distance` builds sequences with one
    query, at the end, exactly `distance` positions after the passkey.
    """

    length: int = 96
    n_filler: int = 32
    n_keys: int = 32
    queries: int = 4

    @property
    def vocab_size(self) -> int:
        return self.n_filler + self.n_keys + 1

    @property
    def max_length(self) -> int:
        return self.length

    @property
    def query(self) -> int:
        return self.vocab_size - 1

    def _filled(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = _random_tokens((batch, self.length), 0, self.n_filler, generator)
        keys = _random_tokens((batch,), self.n_filler, self.n_filler + self.n_keys, generator)
        return inputs, keys

    def batch(self, batch: int, generator: torch.Generator) -> Batch:
        inputs, keys = self._filled(batch, generator)
        rows = torch.arange(batch)
        at = _random_tokens((batch,), 0, self.length - 1, generator)
        inputs[rows, at] = keys
        after = torch.rand(batch, self.queries, generator=generator)  # query positions in (at, length)
        query_at = at[:, None] + 1 + (after * (self.length - 1 - at)[:, None]).long()
        targets = torch.full_like(inputs, IGNORE_INDEX)
        inputs[rows[:, None], query_at] = self.query
        targets[rows[:, None], query_at] = keys[:, None]
        return inputs, targets

    def at_distance(self, batch: int, generator: torch.Generator, distance: int) -> Batch:
        if not 1 <= distance <= self.length - 1:
            raise UsageError(f"a passkey distance must be in [1, {self.length - 1}], got {distance}")
        inputs, keys = self._filled(batch, generator)
        inputs[:, -1 - distance], inputs[:, -1] = keys, self.query
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = keys
        return inputs, targets


class _SequenceTask:
    """What the copy tasks share: sequences of `length` tokens over `vocab` ids (the fields of each dataclass)."""

    length: int
    vocab: int

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def max_length(self) -> int:
        return self.length


@dataclasses.dataclass(frozen=True)
class RepeatedSegments(_SequenceTask):
    """Segments of `segment` random tokens, each followed by its copy, `length` tokens in all.

    Targets are set where the next token is a copied one that an induction head can find: every token of
    a copy but its first (which nothing in the sequence announces).
    """

    length: int = 64
    segment: int = 8
    vocab: int = 128

    def sample(self, batch: int, generator: torch.Generator, length: int) -> Batch:
        period = 2 * self.segment
        n = -(-(length + 1) // period)
        fresh = _random_tokens((batch, n, self.segment), 0, self.vocab, generator)
        seq = torch.cat([fresh, fresh], dim=2).flatten(1)[:, : length + 1]
        offset = torch.arange(1, length + 1) % period  # where each target sits in its segment pair
        determined = offset > self.segment
        targets = torch.where(determined, seq[:, 1:], torch.full_like(seq[:, 1:], IGNORE_INDEX))
        return seq[:, :-1].contiguous(), targets

    def batch(self, batch: int, generator: torch.Generator) -> Batch:
        return self.sample(batch, generator, self.length)


@dataclasses.dataclass(frozen=True)
class RandomOffsetInduction(_SequenceTask):
    """`length` tokens, all distinct within a sequence but for one segment of `segment` tokens copied from a random
    earlier place to a random later one: the copy's distance differs from sequence to sequence.

    Targets are set inside the copy, at every input but its last: the next token is the one that followed the
    current token's only earlier occurrence. No fixed offset finds it; an induction head (Olsson et al. 2022) does,
    by content: match the current token to where it occurred before and read what came next.
    """

    length: int = 64
    segment: int = 20
    vocab: int = 128

    def __post_init__(self) -> None:
        if not 2 <= self.segment <= self.length // 2 or self.vocab <= self.length:
            raise UsageError(f"RandomOffsetInduction needs 2 <= segment <= length / 2 and vocab > length, got "
                             f"segment={self.segment}, length={self.length}, vocab={self.vocab}")

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, distances): distances (batch,), how far back each sequence's copy sits."""
        s, n = self.segment, self.length
        seq = _distinct(batch, n + 1, self.vocab, generator)  # n inputs and the token after the last
        source = (torch.rand(batch, generator=generator) * (n - 2 * s + 1)).long()  # in [0, n - 2s]
        copy = source + s + (torch.rand(batch, generator=generator) * (n - 2 * s - source + 1)).long()  # ≤ n - s
        within = torch.arange(s)
        rows = torch.arange(batch)[:, None]
        seq[rows, copy[:, None] + within] = seq[rows, source[:, None] + within]
        inputs, targets = seq[:, :-1].clone(), torch.full((batch, n), IGNORE_INDEX)
        scored = copy[:, None] + within[:-1]  # the copy's inputs but its last, whose next token is fresh
        targets[rows, scored] = seq[rows, scored + 1]
        return inputs, targets, copy - source

    def batch(self, batch: int, generator: torch.Generator) -> Batch:
        return self.sample(batch, generator)[:2]


class _Batches(IterableDataset):
    """An endless stream of one task's batches from a seeded generator."""

    def __init__(self, draw: Callable[[int, torch.Generator], Batch], batch_size: int, seed: int) -> None:
        self.draw, self.batch_size, self.seed = draw, batch_size, seed

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield self.draw(self.batch_size, generator)


class ProbeData(L.LightningDataModule):
    """A task as a DataModule: training batches drawn afresh (no epochs, no held-out split: the space of
    sequences is far larger than what a run sees, and evaluation draws from another seed)."""

    def __init__(self, task, batch_size: int, seed: int) -> None:
        super().__init__()
        self.task, self.batch_size, self.seed = task, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Batches(self.task.batch, self.batch_size, self.seed), batch_size=None)


@dataclasses.dataclass(frozen=True)
class ProbeModel:
    """The size every probe trains: small enough for minutes on 2 CPU cores, wide enough for 8 heads."""

    n_layer: int = 2
    n_head: int = 8
    n_embd: int = 64
    batch_size: int = 32
    learning_rate: float = 3e-3
    init: str = "gpt2"  # "gpt2": the library's own initialisation; "pytorch": see `pytorch_initialised`

    def config(self, task, **fields) -> GPTConfig:
        return GPTConfig(vocab_size=task.vocab_size, block_size=task.max_length, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, **fields)


def pytorch_initialised(model: GPT) -> GPT:
    """`model` with its output layer untied from the token embedding and every layer initialised as PyTorch
    initialises it by default (embeddings N(0, 1), linear layers uniform in ±1/sqrt(fan_in)), as Zoology's models
    are. Why: from GPT-2's N(0, 0.02) with the tied head, the 2-layer probe model stayed at the no-lookup baseline
    of associative recall for 3,000 steps even at 2 pairs (a pilot of section 3.1, every learning rate from 1e-3 to
    3e-2); with either change alone it was still at or near it after 700 steps; with both it learned 4 pairs in 200–300
    steps. A lookup composes two attention layers, and from GPT-2's small tied start that composition forms later
    than a CPU budget reaches."""
    model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
    for layer in model.modules():
        if hasattr(layer, "reset_parameters"):  # Linear, Embedding, LayerNorm
            layer.reset_parameters()
    return model


EVAL_SEED_OFFSET = 10_000  # evaluation batches come from seed + this: never a training batch
VALIDATION_SEED_OFFSET = 20_000  # validation batches (choosing a learning rate, stopping early): seed + this


def eval_generator(seed: int) -> torch.Generator:
    """The stream a run's evaluation sequences come from: not one a training run with a small seed draws from."""
    return torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed)


def validation_generator(seed: int) -> torch.Generator:
    """The stream a run's validation sequences come from: neither a training nor an evaluation stream, so a choice
    made on it (a learning rate, when to stop) is judged on sequences it never saw."""
    return torch.Generator().manual_seed(VALIDATION_SEED_OFFSET + seed)


@torch.no_grad()
def accuracy(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target correctness of greedy predictions, at the positions whose target is set (1-D bool)."""
    was_training = model.training
    model.eval()
    predicted = model(inputs).argmax(-1)
    model.train(was_training)
    scored = targets != IGNORE_INDEX
    return predicted[scored] == targets[scored]


class AccuracyCurve(L.Callback):
    """Accuracy on a fixed evaluation batch every `every` optimizer steps, during training; with `stop_at`, training
    stops once the accuracy has stayed at or above it for `hold` evaluations in a row (converged: more steps would
    only spend the budget)."""

    def __init__(self, batch: Batch, every: int, stop_at: float | None = None, hold: int = 2) -> None:
        self.batch, self.every, self.stop_at, self.hold, self.points = batch, every, stop_at, hold, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.points.append((trainer.global_step, accuracy(module.model, *self.batch).float().mean().item()))
            recent = self.points[-self.hold:]
            if self.stop_at is not None and len(recent) == self.hold and all(a >= self.stop_at for _, a in recent):
                trainer.should_stop = True


def train_probe(
    task, config: GPTConfig, probe: ProbeModel, steps: int, seed: int, callbacks: list[L.Callback] = ()
) -> GPT:
    """Train a freshly initialised model (seed `seed`, initialised as `probe.init` says) on `task` for `steps`
    optimizer steps (fewer when a callback stops it)."""
    if probe.init not in ("gpt2", "pytorch"):
        raise UsageError(f"ProbeModel.init must be 'gpt2' or 'pytorch', got {probe.init!r}")
    torch.manual_seed(seed)
    module = GPT2LightningModule(config, learning_rate=probe.learning_rate, min_learning_rate=probe.learning_rate / 10,
                                 warmup_steps=max(1, steps // 20), weight_decay=0.0)
    if probe.init == "pytorch":
        pytorch_initialised(module.model)
    train_quietly(module, ProbeData(task, probe.batch_size, seed), steps, callbacks=list(callbacks))
    return module.model.eval()


def steps_to(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first step whose accuracy reached `level` (None: never, within the run)."""
    return next((step for step, acc in curve if acc >= level), None)


def time_to(curve: list[tuple[int, float]], level: float) -> tuple[int, bool]:
    """(steps, reached): the first step at `level`, or the last evaluated step with reached False — a censored
    time (the run went that long without reaching it), never a finish."""
    step = steps_to(curve, level)
    return (step, True) if step is not None else (curve[-1][0], False)
