"""Training data: documents → GPT-2 tokens → packed windows of block_size + 1 tokens, resumable.

Sources:
- `builtin`: the ~80 documents of Python's own `pydoc_data.topics` (~465 KB of English): every install has it,
  offline; the quickstart's and the tests' corpus.
- `files`: local `.txt` (a file is a document), `.jsonl` (a line is a document, its `text_column`) and `.parquet`
  (a row is a document) files, given as paths or globs.
- `hf`: a Hugging Face dataset, streamed. The default is OpenWebText in its script-free Parquet form at a pinned
  revision (`Skylion007/openwebtext` is a loading-script dataset, which current `datasets` refuses).

The stream is deterministic: document j is held out for validation when j % val_every == 0; the rest go
round-robin to the ranks (document j → rank j % world_size). Each rank concatenates its documents, each ended
by `<|endoftext|>`, and cuts windows of block_size + 1 tokens with stride block_size; the training stream
cycles over epochs (documents reshuffled per epoch with the seed) so every rank always has the same number
of batches (no DDP hang). With dataloader workers, worker k of W yields batches k, k + W, ... of its rank's
stream, which the DataLoader's round-robin puts back in order.

Resume: the position is the number of training batches this rank has consumed (global step × gradient
accumulation), saved in the Lightning checkpoint with the world size and batch shape; a resumed stream
fast-forwards its own shard to exactly there, so no window is seen twice or skipped.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer

OPENWEBTEXT = "Skylion007/openwebtext"
OPENWEBTEXT_PARQUET_REVISION = "refs/convert/parquet"  # the Hub's Parquet conversion of the dataset


class DataError(ValueError):
    """A data source that is missing, unreachable or empty; the message says what to pass instead."""


def builtin_documents() -> list[str]:
    """The topics of Python's help system, in a fixed order."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def file_documents(patterns: list[str], text_column: str) -> Iterator[str]:
    """Documents of local .txt / .jsonl / .parquet files, in sorted path order."""
    paths = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern), recursive=True)})
    if not paths:
        raise DataError(
            f"no files match {patterns}; give existing .txt/.jsonl/.parquet paths or globs in data.paths, "
            "or use data.source=builtin"
        )
    for path in paths:
        suffix = Path(path).suffix
        if suffix == ".txt":
            yield Path(path).read_text(encoding="utf-8")
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        record = json.loads(line)
                        if text_column not in record:
                            raise DataError(f"{path}:{line_no} has no {text_column!r} field; set data.text_column")
                        yield record[text_column]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if text_column not in table.column_names:
                raise DataError(f"{path} has no column {text_column!r} (it has {table.column_names}); set data.text_column")
            yield from table.column(text_column).to_pylist()
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .txt, .jsonl or .parquet")


def hf_documents(name: str, split: str, text_column: str, revision: str | None) -> Iterator[str]:
    """Documents of a streamed Hugging Face dataset."""
    import datasets

    try:
        stream = datasets.load_dataset(name, split=split, streaming=True, revision=revision)
        for record in stream:
            yield record[text_column]
    except KeyError as err:
        raise DataError(f"dataset {name!r} has no column {text_column!r}; set data.text_column") from err
    except Exception as err:
        raise DataError(
            f"could not stream {name!r} (split {split!r}, revision {revision!r}) from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). Where the Hub is unreachable, train on local files "
            "(data.source=files, data.paths=[...]) or the offline corpus (data.source=builtin)."
        ) from err


class PackedWindows(IterableDataset):
    """(block_size + 1)-token windows of one rank's share of the documents, as (input, target) pairs."""

    def __init__(
        self,
        documents: Callable[[], Iterable[str]],  # a fresh pass over all documents per call
        block_size: int,
        batch_size: int,
        rank: int,
        world_size: int,
        val_every: int,
        train: bool,
        seed: int,
        start_batch: int = 0,
        max_batches: int | None = None,
    ) -> None:
        self.documents, self.block_size, self.batch_size = documents, block_size, batch_size
        self.rank, self.world_size, self.val_every, self.train = rank, world_size, val_every, train
        self.seed, self.start_batch, self.max_batches = seed, start_batch, max_batches

    def _my_documents(self, epoch: int) -> Iterable[str]:
        """This split's documents (j % val_every == 0 is validation), dealt round-robin to the ranks."""
        split = (doc for j, doc in enumerate(self.documents()) if (j % self.val_every == 0) != self.train)
        mine = (doc for i, doc in enumerate(split) if i % self.world_size == self.rank)
        if self.train and epoch > 0:  # a new order per epoch, the same on every run
            mine = list(mine)
            random.Random(self.seed * 1_000_003 + epoch).shuffle(mine)
        return mine

    def _windows(self) -> Iterator[list[int]]:
        """This rank's windows, forever (the validation stream also cycles, so every rank has enough)."""
        encode = get_tokenizer().encode_ordinary
        buffer: list[int] = []
        span = self.block_size + 1
        for epoch in itertools.count():
            produced = False
            for doc in self._my_documents(epoch):
                buffer.extend(encode(doc))
                buffer.append(EOT_ID)
                while len(buffer) >= span:
                    produced = True
                    yield buffer[:span]
                    del buffer[: self.block_size]  # stride block_size: the last target is the next input
            if not produced:  # a stream with no window at all would loop forever
                return

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        windows = self._windows()
        first = next(windows, None)
        if first is None:
            raise DataError(_empty_message(self.train, self.block_size))
        for index, batch in enumerate(batched(itertools.chain([first], windows), self.batch_size)):
            if self.max_batches is not None and index >= self.max_batches:
                return
            if index < self.start_batch or (index - self.start_batch) % n_workers != worker:
                continue
            for window in batch:
                tokens = torch.tensor(window, dtype=torch.long)
                yield tokens[:-1], tokens[1:]


def batched(iterable, n: int) -> Iterator[tuple]:
    """Consecutive tuples of n items (itertools.batched arrived only in Python 3.12)."""
    iterator = iter(iterable)
    while chunk := tuple(itertools.islice(iterator, n)):
        yield chunk


def _empty_message(train: bool, block_size: int) -> str:
    split = "training" if train else "validation"
    return (
        f"the {split} split of this rank yields no window of block_size + 1 = {block_size + 1} tokens: the corpus is "
        "empty or too small for this block_size, world size and val_every. Pass more text (data.paths), a "
        "smaller block_size, or data.source=builtin."
    )


class GPT2DataModule(L.LightningDataModule):
    """Streams packed GPT-2 token windows from a builtin, local-file or Hugging Face source, resumably."""

    def __init__(
        self,
        source: str = "builtin",
        paths: list[str] | str | None = None,
        dataset: str = OPENWEBTEXT,
        revision: str | None = OPENWEBTEXT_PARQUET_REVISION,
        split: str = "train",
        text_column: str = "text",
        block_size: int = 1024,
        batch_size: int = 8,
        val_every: int = 20,
        val_batches: int = 4,
        num_workers: int = 0,
        seed: int = 1337,
    ) -> None:
        """
        Args:
            source: "builtin" (offline corpus), "files" (data.paths) or "hf" (data.dataset, streamed).
            paths: a file or glob, or a list of them, for source=files.
            dataset, revision, split: the Hugging Face dataset for source=hf.
            text_column: the field holding the text (jsonl, parquet, hf).
            block_size: tokens per training sequence (linked to the model's block_size by the CLI).
            batch_size: sequences per batch, per device.
            val_every: document j is validation data when j % val_every == 0.
            val_batches: batches per validation run and rank (the validation stream cycles to fill them).
            num_workers: DataLoader worker processes.
            seed: the per-epoch document order.
        """
        super().__init__()
        if source not in ("builtin", "files", "hf"):
            raise DataError(f"data.source must be 'builtin', 'files' or 'hf', got {source!r}")
        if source == "files" and not paths:
            raise DataError("data.source=files needs data.paths: a list of .txt/.jsonl/.parquet files or globs")
        for name, value in (("block_size", block_size), ("batch_size", batch_size), ("val_every", val_every),
                            ("val_batches", val_batches)):
            if value < 1:
                raise DataError(f"data.{name} must be >= 1, got {value}")
        if val_every < 2:
            raise DataError("data.val_every must be >= 2, or every document would be validation data")
        self.paths = [paths] if isinstance(paths, str) else paths
        self.source, self.dataset, self.revision = source, dataset, revision
        self.split, self.text_column = split, text_column
        self.block_size, self.batch_size, self.val_every, self.val_batches = block_size, batch_size, val_every, val_batches
        self.num_workers, self.seed = num_workers, seed
        self.start_batch = 0  # training batches this rank consumed before a resume

    def documents(self) -> Iterator[str]:
        if self.source == "builtin":
            return iter(builtin_documents())
        if self.source == "files":
            return file_documents(list(self.paths), self.text_column)
        return hf_documents(self.dataset, self.split, self.text_column, self.revision)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, train: bool) -> DataLoader:
        rank, world = self._rank_and_world()
        windows = PackedWindows(
            self.documents, self.block_size, self.batch_size, rank, world, self.val_every, train, self.seed,
            start_batch=self.start_batch if train else 0, max_batches=None if train else self.val_batches,
        )
        return DataLoader(windows, batch_size=self.batch_size, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(train=False)  # the held-out documents

    def predict_dataloader(self) -> DataLoader:
        return self._loader(train=False)

    def consumed_batches(self) -> int:
        """Training batches this rank has consumed: optimizer steps × gradient accumulation."""
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches

    def state_dict(self) -> dict:
        _, world = self._rank_and_world()
        return {
            "consumed_batches": self.consumed_batches(),
            "world_size": world,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "source": self.source,
            "num_workers": self.num_workers,  # informational: any worker count resumes the same sequence
        }

    def load_state_dict(self, state: dict) -> None:
        _, world = self._rank_and_world()
        mismatched = [
            f"{key} {state[key]!r} → {now!r}"
            for key, now in (("world_size", world), ("batch_size", self.batch_size), ("block_size", self.block_size),
                             ("source", self.source))
            if state.get(key) != now
        ]
        if mismatched:
            raise DataError(
                "cannot resume the data stream exactly: the checkpoint's data position was recorded with different "
                "settings (" + "; ".join(mismatched) + "). Resume with the same number of devices and data "
                "settings, or start a new run from its weights (model.init_from / gpt2-lightning convert)."
            )
        self.start_batch = state["consumed_batches"]
