"""Synthetic probes: small tasks that isolate what one attention mechanism can and cannot do.

Each task draws batches of `(inputs, targets)`, (B, T) int64 each, where a target is -100 (ignored by the
loss) wherever the answer is not determined by the sequence, so the loss and the accuracy measure exactly
the ability the task is about:

- `AssociativeRecall` (multi-query associative recall, as in the Zoology work): key–value pairs, then the
  keys again in another order; each query's answer is its value. Recall has to store every pair in the
  keys and values of attention — what grouped-query attention shrinks.
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
    """v1 k1 … vN kN, then the N keys in a random order, each followed by its value (N = `pairs`).

    Each value comes before its key, so a layer can bind it to the key's position (a previous-token head) and
    a later layer retrieve it by matching the query to the key — the store-and-look-up that attention's keys
    and values do, which Zoology's key-first order makes harder to learn without changing what is stored.
    Keys are tokens [0, n_keys), values [n_keys, n_keys + n_values); a sequence is 4N − 1 inputs long.
    Targets are set at the queries only; `distances` gives, per query, how far back its key stood.
    """

    n_keys: int = 64
    n_values: int = 64
    train_pairs: tuple[int, ...] = (4, 8, 16, 24, 32)

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values

    @property
    def max_length(self) -> int:
        return 4 * max(self.train_pairs) - 1

    def sample(self, batch: int, generator: torch.Generator,
               pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, distances): distances (batch, pairs) of each query from its key, in positions."""
        keys = _distinct(batch, pairs, self.n_keys, generator)
        values = _random_tokens((batch, pairs), self.n_keys, self.vocab_size, generator)
        order = torch.rand(batch, pairs, generator=generator).argsort(dim=1)
        seq = torch.empty(batch, 4 * pairs, dtype=torch.long)
        seq[:, 0 : 2 * pairs : 2], seq[:, 1 : 2 * pairs : 2] = values, keys
        seq[:, 2 * pairs :: 2], seq[:, 2 * pairs + 1 :: 2] = keys.gather(1, order), values.gather(1, order)
        inputs, targets = seq[:, :-1], torch.full((batch, 4 * pairs - 1), IGNORE_INDEX)
        targets[:, 2 * pairs :: 2] = seq[:, 2 * pairs + 1 :: 2]
        query_at = 2 * pairs + 2 * torch.arange(pairs)
        return inputs, targets, query_at - (2 * order + 1)

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


@dataclasses.dataclass(frozen=True)
class RepeatedSegments:
    """Segments of `segment` random tokens, each followed by its copy, `length` tokens in all.

    Targets are set where the next token is a copied one that an induction head can find: every token of
    a copy but its first (which nothing in the sequence announces).
    """

    length: int = 64
    segment: int = 8
    vocab: int = 128

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def max_length(self) -> int:
        return self.length

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

    def config(self, task, **fields) -> GPTConfig:
        return GPTConfig(vocab_size=task.vocab_size, block_size=task.max_length, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, **fields)


EVAL_SEED_OFFSET = 10_000  # evaluation batches come from seed + this: never a training batch


def eval_generator(seed: int) -> torch.Generator:
    """The stream a run's evaluation sequences come from: not one a training run with a small seed draws from."""
    return torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed)


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
    """Accuracy on a fixed evaluation batch every `every` optimizer steps, during training."""

    def __init__(self, batch: Batch, every: int) -> None:
        self.batch, self.every, self.points = batch, every, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.points.append((trainer.global_step, accuracy(module.model, *self.batch).float().mean().item()))


def train_probe(
    task, config: GPTConfig, probe: ProbeModel, steps: int, seed: int, callbacks: list[L.Callback] = ()
) -> GPT:
    """Train a freshly initialised model (seed `seed`) on `task` for `steps` optimizer steps."""
    torch.manual_seed(seed)
    module = GPT2LightningModule(config, learning_rate=probe.learning_rate, min_learning_rate=probe.learning_rate / 10,
                                 warmup_steps=max(1, steps // 20), weight_decay=0.0)
    train_quietly(module, ProbeData(task, probe.batch_size, seed), steps, callbacks=list(callbacks))
    return module.model.eval()


def steps_to(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first step whose accuracy reached `level` (None: never, within the run)."""
    return next((step for step, acc in curve if acc >= level), None)
