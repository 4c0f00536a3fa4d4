"""`GPT2DataModule`: prepared token shards read as (block_size + 1)-token windows, by index, resumably.

`prepare_data` (local rank 0 of each node) tokenizes the source once into `data.cache_dir` (`token_cache`);
`setup` opens it on every rank. The training split [0, v) and the validation split [v, n) of the token stream
are cut into windows of block_size + 1 tokens at stride block_size (the last target of one window is the first
input of the next), numbered 0 … W-1.

Training: epoch e visits the windows in the order of a seeded pseudo-random permutation of 0 … W-1 (a Feistel
network: any position's window is computed from the position alone, so memory does not grow with the corpus).
Position p of the epoch belongs to global batch p // (batch_size × world_size); rank r takes the r-th
batch_size positions of each global batch, so ranks are disjoint and have the same number of batches, K per
epoch (the remainder, fewer than batch_size × world_size × accumulate_grad_batches windows, waits for a later
epoch's order). DataLoader worker w of N yields batches w, w + N, … of its rank, which the loader's round-robin
puts back in order. The whole data state is one integer: batches consumed (global step × accumulation), read
from the trainer when iteration starts, so resuming at batch 10^7 costs what starting does.

Validation: the validation windows in order, dealt the same way to ranks and workers; a pass reads only them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gpt2_lightning.checkpoints.lightning import read_metadata
from gpt2_lightning.corpus import OPENWEBTEXT, OPENWEBTEXT_PARQUET_REVISION, Corpus
from gpt2_lightning.errors import CheckpointError, DataError
from gpt2_lightning.token_cache import TokenCache, cache_path, check_source, check_val_size, prepare

_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constants for multiplicative hashing
_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)


def _round_keys(key: int, rounds: int) -> list[np.uint64]:
    """Per-round keys: splitmix64 of the key and the round number, in Python integers."""
    keys = []
    for r in range(1, rounds + 1):
        x = (key * _GOLDEN + r * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        keys.append(np.uint64(x ^ (x >> 31)))
    return keys


def permute(positions: np.ndarray, n: int, key: int, rounds: int = 6) -> np.ndarray:
    """The images of `positions` under a pseudo-random permutation of 0 … n-1 chosen by `key`.

    A balanced Feistel network on the smallest even number of bits covering n (round function: the top bits of
    a 64-bit multiplicative hash) permutes 0 … 4n-1 at most; applying it again to values >= n ("cycle walking")
    makes it a permutation of 0 … n-1. O(1) memory per position, no table.
    """
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask, shift, top = np.uint64((1 << half) - 1), np.uint64(half), np.uint64(64 - half)
    keys = _round_keys(key, rounds)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for k in keys:
            left, right = right, left ^ (((right ^ k) * _MULTIPLIER) >> top)
        return (left << shift) | right

    x = feistel(np.asarray(positions, dtype=np.uint64))
    outside = np.flatnonzero(x >= n)
    while outside.size:
        x[outside] = feistel(x[outside])
        outside = outside[x[outside] >= n]
    return x.astype(np.int64)


class TokenWindows(IterableDataset):
    """One rank's (input, target) batches of (batch_size, block_size) token windows of one split.

    `start_batch`: batches of this rank consumed before iteration starts (training only: it picks the epoch and
    the batch within it). Each iteration yields the rest of one epoch; `len()` is a whole epoch's batch count.
    """

    def __init__(
        self,
        cache: TokenCache,
        first_token: int,
        n_tokens: int,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        seed: int = 0,
        batch_multiple: int = 1,
    ) -> None:
        self.cache, self.first_token, self.block_size, self.batch_size = cache, first_token, block_size, batch_size
        self.rank, self.world_size, self.train, self.seed = rank, world_size, train, seed
        self.n_windows = max(0, (n_tokens - 1) // block_size)
        per_rank = self.n_windows // (batch_size * world_size)
        self.batches_per_epoch = per_rank // batch_multiple * batch_multiple  # epochs end on an optimizer step
        self.start_batch = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Batch `index` of this rank in `epoch`: (batch_size, block_size + 1) uint16 token windows."""
        positions = (index * self.world_size + self.rank) * self.batch_size + np.arange(self.batch_size)
        windows = permute(positions, self.n_windows, self.seed * 1_000_003 + epoch) if self.train else positions
        return self.cache.read(self.first_token + windows * self.block_size, self.block_size + 1)

    def __iter__(self) -> Iterator[np.ndarray]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, first = divmod(self.start_batch, self.batches_per_epoch) if self.train else (0, 0)
        for index in range(first + worker, self.batches_per_epoch, n_workers):
            yield self.batch(epoch, index)


def inputs_and_targets(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T + 1) token windows → inputs and next-token targets, (B, T) int64 each."""
    tokens = torch.from_numpy(windows.astype(np.int64))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _as_is(batch: np.ndarray) -> np.ndarray:
    return batch


class PositionedLoader(DataLoader):
    """A DataLoader of (input, target) batches that sets its dataset's `start_batch` from `position()` whenever
    iteration starts.

    Lightning starts iterating at each epoch and at a resume; the position is the trainer's, so it is exact in
    both cases and the dataset copies sent to worker processes carry it. The loader draws its worker seeds from
    a generator of its own: starting an iteration must not advance the global torch RNG, which dropout uses and
    a checkpoint restores (an epoch or validation pass would otherwise shift every later dropout mask).
    Workers send the uint16 windows as they are (one small pickle per batch, not two int64 tensors through shared
    memory, which measured slower per batch: docs/performance.md); widening to int64 happens here, in the
    consuming process.
    """

    def __init__(self, dataset: TokenWindows, position: Callable[[], int], **kwargs) -> None:
        super().__init__(dataset, batch_size=None, collate_fn=_as_is, generator=torch.Generator(), **kwargs)
        self.position = position

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.start_batch = self.position()
        return map(inputs_and_targets, super().__iter__())


class GPT2DataModule(L.LightningDataModule):
    """GPT-2 token windows from a builtin, local-file or Hugging Face source, tokenized once and read by index."""

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
        val_size: float = 0.0005,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        seed: int = 1337,
    ) -> None:
        """
        Args:
            source: "builtin" (offline corpus), "files" (data.paths) or "hf" (data.dataset, streamed once).
            paths: .txt / .jsonl / .parquet files, globs or directories, for source=files.
            dataset, revision, split: the Hugging Face dataset for source=hf.
            text_column: the field holding the text (jsonl, parquet, hf).
            block_size: tokens per training sequence (linked to the model's block_size by the CLI).
            batch_size: sequences per batch, per device.
            val_size: the validation split, the tail of the corpus: a fraction of its tokens (< 1) or a token count
                (>= 1), taken as whole documents where there are many.
            num_workers: DataLoader worker processes per rank.
            num_proc: processes that tokenize when preparing (default: every available CPU).
            cache_dir: where prepared data goes (default: $GPT2_LIGHTNING_DATA, else ~/.cache/gpt2-lightning/data);
                on several nodes, a shared filesystem or one local copy per node.
            seed: the per-epoch order of the training windows.
        """
        super().__init__()
        for name, value in (("block_size", block_size), ("batch_size", batch_size)):
            if value < 1:
                raise DataError(f"data.{name} must be >= 1, got {value}")
        if num_workers < 0 or (num_proc is not None and num_proc < 1):
            raise DataError(f"data.num_workers must be >= 0 and data.num_proc >= 1, got {num_workers}, {num_proc}")
        check_val_size(val_size)
        self.corpus = Corpus(source, [paths] if isinstance(paths, str) else paths, dataset, revision, split,
                             text_column)
        self.block_size, self.batch_size, self.val_size = block_size, batch_size, val_size
        self.num_workers, self.num_proc, self.cache_dir, self.seed = num_workers, num_proc, cache_dir, seed
        self.start_batch = 0  # the position without a trainer (benchmarks, tests); with one, the trainer's
        self.cache: TokenCache | None = None
        self.resume_from: str | os.PathLike | None = None  # the checkpoint `fit` resumes (its data is never replaced)
        self.train_windows: TokenWindows | None = None
        self.val_windows: TokenWindows | None = None

    # ---- preparing and opening -------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        prepare(self.corpus, self.cache_dir, self.num_proc, self.val_size, resuming=self._resumed_data_id())

    def _resumed_data_id(self) -> str | None:
        """The prepared-data id the checkpoint being resumed (`resume_from`, set by the command) trained on."""
        if self.resume_from is None:
            return None
        try:
            state = read_metadata(Path(self.resume_from)).get(type(self).__qualname__) or {}
        except CheckpointError:
            return None  # the command vetted it; Lightning's own load names what is wrong
        return (state.get("fingerprint") or {}).get("prepared data")

    def setup(self, stage: str | None = None) -> None:
        self.cache = TokenCache(cache_path(self.corpus, self.cache_dir))
        check_source(self.cache.manifest, self.corpus, self.cache.path)
        val_start, _ = self.cache.validation_start(self.val_size)
        rank, world, accumulate = self._rank_world_accumulate()
        self.train_windows = TokenWindows(self.cache, 0, val_start, self.block_size, self.batch_size, rank, world,
                                          train=True, seed=self.seed, batch_multiple=accumulate)
        self.val_windows = TokenWindows(self.cache, val_start, self.cache.n_tokens - val_start, self.block_size,
                                        self.batch_size, rank, world, train=False)
        for name, windows, fix in (("training", self.train_windows, "lower data.val_size or add text"),
                                   ("validation", self.val_windows, "raise data.val_size")):
            if len(windows) == 0:
                need = self.batch_size * world * (accumulate if windows.train else 1)
                raise DataError(
                    f"the {name} split of {self.cache.path} has {windows.n_windows:,} windows of block_size + 1 = "
                    f"{self.block_size + 1} tokens, fewer than one batch on every rank needs ({need:,} = batch_size × "
                    f"world size{' × accumulate_grad_batches' if windows.train else ''}): {fix}, or use a smaller "
                    "block_size / batch_size")

    def _rank_world_accumulate(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 1
        return trainer.global_rank, trainer.world_size, trainer.accumulate_grad_batches

    # ---- loaders ---------------------------------------------------------------------------------------------

    def _position(self) -> int:
        """Training batches this rank has consumed: optimizer steps × gradient accumulation (epochs end on a step)."""
        trainer = self.trainer
        if trainer is None:
            return self.start_batch
        return trainer.global_step * trainer.accumulate_grad_batches

    def _loader(self, windows: TokenWindows | None, position: Callable[[], int]) -> DataLoader:
        if windows is None:
            raise DataError("GPT2DataModule.setup() must run before its dataloaders are asked for")
        return PositionedLoader(windows, position, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_windows, self._position)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_windows, lambda: 0)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_windows, lambda: 0)  # the held-out split

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_windows, lambda: 0)

    # ---- resuming --------------------------------------------------------------------------------------------

    def fingerprint(self) -> dict:
        """Everything that decides which window comes at which position; a resume must match it all."""
        _, world, accumulate = self._rank_world_accumulate()
        return {
            "prepared data": self.cache.id if self.cache is not None else None,
            "data.val_size": self.val_size,
            "data.block_size": self.block_size,
            "data.batch_size": self.batch_size,
            "data.seed": self.seed,
            "world size (trainer.devices × trainer.num_nodes)": world,
            "trainer.accumulate_grad_batches": accumulate,
        }

    def state_dict(self) -> dict:
        return {"consumed_batches": self._position(), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.state.fn != "fit":
            return  # validate / test / predict read the validation split from its start, whatever the position
        if "fingerprint" not in state:
            raise DataError(
                "this checkpoint's data position was written by the streaming data path of an earlier "
                "gpt2-lightning and cannot be resumed exactly; start a new run from its weights "
                "(model.init_from=<the .ckpt>)")
        now = self.fingerprint()
        changed = [f"{key}: checkpoint {was!r}, now {now.get(key)!r}" for key, was in state["fingerprint"].items()
                   if now.get(key) != was]
        if changed:
            raise DataError(
                "cannot resume the data stream exactly, settings that decide it changed (" + "; ".join(changed) + "). "
                "Resume with the run's own data settings and device count (its config.yaml sits next to the logs), "
                "or start a new run from its weights (model.init_from=<the .ckpt>).")
        # nothing to restore: with a trainer the position is its global step (state["consumed_batches"] records it)
