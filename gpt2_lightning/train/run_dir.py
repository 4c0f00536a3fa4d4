"""One run per directory, and `last.ckpt` always that run's newest state: the policy `fit` applies before it
trains, and the checks every Lightning command applies to the checkpoint it will load.

- `RunLock`: one `fit` at a time per checkpoint directory; the lock of a killed run is taken over.
- `prepare_fit`: the lock, the completion or removal of an interrupted sharded save, the refusal of a fresh run
  where one already left checkpoints, the data-parallel size check and the vetting of what will be loaded.
- `vet_checkpoint_to_load`: a sharded index read with the restricted unpickler, a single file's integrity, a
  sharded checkpoint only under FSDP, and a vocabulary that holds GPT-2's token ids.
- `resume_without_init_from`: a resume takes its architecture from its checkpoint, not from `model.init_from`.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy

from gpt2_lightning.checkpoints.lightning import check_lightning_checkpoint, read_hyperparameters
from gpt2_lightning.errors import CheckpointError, RunError
from gpt2_lightning.files import process_alive
from gpt2_lightning.tokenizer import EOT_ID
from gpt2_lightning.train.checkpoint_io import recover_sharded_checkpoint
from gpt2_lightning.train.lightning_compat import launch_rank, parallel_sizes

LAST = "last.ckpt"  # every run of a directory keeps its newest state here


def is_launching_process() -> bool:
    """Global rank 0 before the ranks are launched: the process the user started (node 0, rank 0)."""
    return os.environ.get("NODE_RANK", "0") == "0" and launch_rank() in (None, 0)


class RunLock:
    """One `fit` at a time per checkpoint directory: `<dir>/.fit.lock` holds the host and pid of the running one.

    A context manager: the lock is taken on entry and released on exit, however the run ends.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / ".fit.lock"
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._acquire()
        except OSError as err:
            raise RunError(f"cannot write to {self.path.parent} ({err.strerror or err}); choose a writable "
                           "--trainer.default_root_dir") from err

    def _acquire(self) -> None:
        me = f"{socket.gethostname()} {os.getpid()}"
        mine = self.path.with_name(f"{self.path.name}.{os.getpid()}")  # written whole, then linked into place:
        mine.write_text(me)  # the lock never exists half-written, so one that does not parse is not ours
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                except FileExistsError:
                    if self._holder_is_gone():
                        self.path.unlink(missing_ok=True)  # its run was killed: take over
                        continue
                    raise
                self.held = True
                return
        except FileExistsError:
            raise RunError(
                f"another fit ({self._holder()}) is running in {self.path.parent}: two runs there would interleave "
                f"their logs and checkpoints. Wait for it, or use another --trainer.default_root_dir (if that run is "
                f"gone, delete {self.path})"
            ) from None
        finally:
            mine.unlink(missing_ok=True)
        raise RunError(f"could not take {self.path}: other runs keep claiming it; try again")

    def _read(self) -> tuple[str, str] | None:
        """(host, pid) of the holder, or None when the lock is not one this package wrote."""
        try:
            host, sep, pid = self.path.read_text(encoding="utf-8").partition(" ")
        except (OSError, UnicodeDecodeError):
            return None
        return (host, pid) if sep and host and pid.isdigit() else None

    def _holder_is_gone(self) -> bool:
        holder = self._read()
        if holder is None:
            raise RunError(f"{self.path} is not a lock gpt2-lightning wrote (empty or unreadable); if no fit is "
                           f"running in {self.path.parent}, delete it")
        host, pid = holder
        return host == socket.gethostname() and not process_alive(int(pid))

    def _holder(self) -> str:
        host, pid = self._read() or ("?", "?")
        return f"pid {pid}" + ("" if host == socket.gethostname() else f" on {host}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def checkpoint_to_load(ckpt_path: str | None, last: Path) -> Path | None:
    """The one checkpoint a command loads: `ckpt_path`, with `last` meaning the run directory's last.ckpt (None:
    nothing there yet, a fresh start). The command hands Lightning this path, never "last": Lightning alone would
    restore the newest `last*.ckpt` by modification time, a planted or forked `last-v1.ckpt` included, which is
    not the file that was vetted."""
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        return Path(ckpt_path)
    if last.exists():
        return last
    others = sorted(p.name for p in last.parent.glob("last*.ckpt"))
    if others:
        raise RunError(f"{last.parent} holds {', '.join(others)} but no {last.name}: pass the checkpoint to resume "
                       "from as --ckpt_path PATH (or rename it to last.ckpt)")
    return None


def check_parallel_size(trainer: L.Trainer) -> None:
    """ModelParallelStrategy splits data_parallel_size × tensor_parallel_size ways: that product must be the run's
    device count (Lightning's "auto" would quietly turn the remainder into tensor parallelism)."""
    strategy = trainer.strategy
    if not isinstance(strategy, ModelParallelStrategy):
        return
    dp, tp = parallel_sizes(strategy)
    world = trainer.num_devices * trainer.num_nodes
    if "auto" not in (dp, tp) and dp * tp != world:
        raise RunError(
            f"the strategy splits data_parallel_size={dp} × tensor_parallel_size={tp} = {dp * tp} ways, but "
            f"the run has {world} devices (trainer.devices × trainer.num_nodes); set "
            f"--trainer.strategy.init_args.data_parallel_size {world // tp if world % tp == 0 else world}"
        )


def vet_checkpoint_to_load(path: Path | None, trainer: L.Trainer, vocab_size: int) -> None:
    """Refuse, before Lightning loads anything, what would fail or run code later: a model whose vocabulary cannot
    hold GPT-2's token ids, a tampered or damaged checkpoint, a sharded checkpoint outside FSDP."""
    if vocab_size < EOT_ID + 1:
        raise RunError(f"model.config.vocab_size={vocab_size} cannot hold the GPT-2 token ids the data is encoded "
                       f"with (0 … {EOT_ID}); set it >= {EOT_ID + 1}")
    if path is None or not path.exists():
        return  # Lightning reports a missing explicit path; `last` with nothing there starts fresh
    check_lightning_checkpoint(path)
    if path.is_dir() and not isinstance(trainer.strategy, ModelParallelStrategy):
        raise RunError(
            f"{path} is a sharded (FSDP) checkpoint; resume it with --config configs/fsdp.yaml on the same "
            "number of devices, or gather it (gpt2-lightning convert --checkpoint ... --out DIR) and start "
            "a new run from it with model.init_from=DIR"
        )


def prepare_fit(
    trainer: L.Trainer, last: Path, ckpt_path: str | None, vocab_size: int, resources: ExitStack
) -> Path | None:
    """Everything `fit` settles about its run directory before training; the lock is held until `resources`
    closes (the launching process only: the ranks it starts share its directory). Returns the checkpoint to
    resume from, vetted (None: a fresh run)."""
    check_parallel_size(trainer)
    if is_launching_process():
        resources.enter_context(RunLock(last.parent))
        recover_sharded_checkpoint(last)
    if ckpt_path is None and any(last.parent.glob("last*.ckpt")):
        raise RunError(
            f"{last.parent} already holds a run's checkpoints: pass --ckpt_path last to continue that run, or "
            "another --trainer.default_root_dir for a new one"
        )
    path = checkpoint_to_load(ckpt_path, last)
    vet_checkpoint_to_load(path, trainer, vocab_size)
    return path


def resume_without_init_from(model_config, path: Path) -> bool:
    """A resume takes every weight from its checkpoint, so `model.init_from` is not read (its source may be gone):
    the architecture it gave is the checkpoint's, copied into `model_config` (the parsed `model` section), which
    config.yaml then records with init_from null. False, and nothing changed, when the checkpoint is unreadable:
    the vetting before fit names what is wrong with it."""
    try:
        saved = read_hyperparameters(path)["config"]
    except (CheckpointError, KeyError):
        return False
    record_architecture(model_config, saved)
    model_config.init_from = None
    return True


def record_architecture(model_config, architecture: dict) -> None:
    """Make the parsed `model` section say the architecture that runs (config.yaml is written from it): after a
    fine-tune's `init_from` or a resume, the source's, not the config's defaults."""
    for key, value in architecture.items():
        model_config.config[key] = value
