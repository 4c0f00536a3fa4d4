"""What a run shows: progress in optimizer steps, plain log lines where there is no terminal, Lightning's noise
filtered, TensorBoard cards of the run's own metrics, and at the end a sample and a summary with the next commands.

- `StepProgressBar` (a terminal) and `ConsoleLog` (a file, a pipe, a batch job): progress in optimizer steps of
  the whole run, so totals are true across epochs and resumes, with tokens/s.
- `quiet_lightning`: advertisements and warnings no user can act on kept out of the console.
- `TensorBoard`: the default logger, without Lightning's placeholder `hp_metric` and `epoch` cards.
- `print_sample`: a short continuation of <|endoftext|> from the trained weights, up to the next <|endoftext|>.
- `RunSummary`: what the run reached and where its files are, then the commands that read or continue it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.model import GPT
from gpt2_lightning.tokenizer import EOT_ID, text_pieces
from gpt2_lightning.train.lightning_compat import progress_bar_due
from gpt2_lightning.train.parallel import is_sharded


def _tokens_per_sec(trainer: L.Trainer) -> float | None:
    """The latest tokens/s over all ranks (`callbacks.TokenThroughput`; None until its window has filled)."""
    rate = trainer.callback_metrics.get("train/tokens_per_sec")
    return None if rate is None else float(rate)


def _eta(trainer: L.Trainer, tokens_per_step: int) -> str:
    rate = _tokens_per_sec(trainer)
    if rate is None or trainer.max_steps <= 0:
        return "—"
    seconds = int((trainer.max_steps - trainer.global_step) * tokens_per_step / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StepProgressBar(TQDMProgressBar):
    """A progress bar over the run's optimizer steps (`trainer.max_steps`), starting where a resumed run stands,
    instead of batches of the current epoch (which read "Epoch 0/-2" and "201/19" after a resume); it shows tokens/s
    where tqdm's rate would say batches ("it/s"), and closes at the last step, before Lightning's "`Trainer.fit`
    stopped" line (which otherwise landed on the bar's line, and the bar was drawn again below it)."""

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"  # Lightning's, no rate

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.n = bar.last_print_n = trainer.global_step
            bar.refresh()
        bar.set_description("train")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if not bar.disable and progress_bar_due(self, trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
        if trainer.global_step >= trainer.max_steps:
            bar.close()  # the last step: a finished line, before anything else is printed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_steps <= 0 or trainer.global_step >= trainer.max_steps:
            return super().on_train_epoch_end(trainer, pl_module)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))  # one bar across epochs

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version, not a measurement
        if (rate := _tokens_per_sec(trainer)) is not None:
            metrics["tokens/s"] = f"{rate:,.0f}"
        return metrics


class ConsoleLog(L.Callback):
    """Plain log lines where no terminal shows a progress bar: every `every` optimizer steps (step, loss, learning
    rate, tokens/s, progress, ETA) and after each validation, flushed at once so `tail -f` and job logs follow the run.

    The step a line names is the one TensorBoard logs the same number at: the optimizer steps the measured weights
    had taken (`callbacks.LoggedStepIsOptimizerStep`) — a batch's loss at the steps before it (the 8th batch's at 7),
    a validation at the steps before it (8 after 8 steps).
    """

    def __init__(self, every: int) -> None:
        self.every = max(1, every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (batch_idx + 1) % trainer.accumulate_grad_batches or step % self.every:
            return
        metrics = trainer.callback_metrics
        tokens_per_step = batch[0].numel() * trainer.accumulate_grad_batches * trainer.world_size
        rate = _tokens_per_sec(trainer)
        done = f"{step}/{trainer.max_steps}" if trainer.max_steps > 0 else f"{step}"
        print(f"step {step - 1} | loss {float(metrics['train/loss']):.4f} | lr {float(metrics['train/lr']):.2e} | "
              f"{'—' if rate is None else f'{rate:,.0f}'} tokens/s | {done} steps done, ETA "
              f"{_eta(trainer, tokens_per_step)}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or "val/loss" not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        print(f"step {trainer.global_step} | val/loss {float(metrics['val/loss']):.4f} | "
              f"val/ppl {float(metrics['val/ppl']):.2f}", flush=True)


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip")


def quiet_lightning() -> None:
    """Keep out of the console what no user can act on: Lightning's advertisements for its cloud products, a
    deprecation warning Lightning raises against its own use of torch, its warning that an iterable dataset with a
    length may repeat data across workers (ours gives each worker its own batches: data.py), its warning that a
    resume from mid-epoch is unreliable because the DataLoader has no `state_dict` (the data position is the
    DataModule's state, restored exactly: docs/training.md), and LightningCLI's warning that it was handed both
    `args` and a command line (the command always hands it its own words)."""
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within Python")
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_not_an_advertisement)  # one function: a second call adds nothing


def print_sample(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Show what the model learned: a short sample from the trained weights, printed by rank 0 (a sharded model is
    gathered first, every rank taking part)."""
    model = module.model
    if any(is_sharded(p) for p in model.parameters()):  # FSDP2: DTensors, gathered to one full copy
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not trainer.is_global_zero:
            return
        model = GPT(module.config)
        model.load_state_dict(state)
        model.to(module.device)
    if not trainer.is_global_zero:
        return
    prompt = torch.tensor([[EOT_ID]], device=module.device)
    model = model.eval()
    max_new = min(100, model.config.block_size - 1) if model.config.pos_encoding == "learned" else 100
    sampling = Sampling(temperature=0.8, top_k=200, eos_token_id=EOT_ID,
                        generator=torch.Generator(module.device).manual_seed(0))
    text = sample_text(generate(model, prompt, max_new, sampling)[0, 1:].tolist())
    print(f"\n--- sample from the trained model ---\n{text}\n---", flush=True)


def sample_text(ids: list[int]) -> str:
    """The text of generated token ids up to the first <|endoftext|>, in whole characters: the bytes of a character
    the sample cut short (or never began) are left out."""
    return "".join(text_pieces(ids, errors="ignore")).strip()


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger (same arguments) whose first screen is the run's own cards.

    TensorBoard's Time Series view sorts cards by tag, groups them by the part before the first "/" and opens the
    first two groups. Lightning's logger adds a placeholder `hp_metric` (a single -1, for its hparams view, when
    no metric is given) and Lightning adds `epoch` to every logged step: both sort before `train/` and took the two
    open groups. Here neither is written (the epoch of a step is in the checkpoint and the console), so `train/`
    (loss, lr, grad_norm, tokens_per_sec, mfu) and `val/` (loss, ppl) open. The default logger of every `fit`; a
    config that names its own logger gets that one as configured.
    """

    def __init__(self, *args: Any, default_hp_metric: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def _shown(path: str | os.PathLike) -> str:
    """A path as a user would type it here: relative below the working directory, absolute elsewhere."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


class RunSummary(L.Callback):
    """Times the run from its Trainer's creation (data preparation and the peak measurement included) and keeps its
    last validation, for `print` at the end: the run's result, where its checkpoint and logs are, and the commands
    that look at it (TensorBoard), sample from it and resume it."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.validation: tuple[int, float, float] | None = None  # (step, val/loss, val/ppl)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if not trainer.sanity_checking and "val/loss" in metrics:
            self.validation = (trainer.global_step, float(metrics["val/loss"]), float(metrics["val/ppl"]))

    def print(self, trainer: L.Trainer, last: Path, config: Path | None) -> None:
        """The summary, by rank 0: `last` is the run's last.ckpt, `config` its saved config.yaml (if written)."""
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        tokens = (trainer.global_step * datamodule.batch_size * datamodule.block_size
                  * trainer.accumulate_grad_batches * trainer.world_size)
        lines = [f"done: step {trainer.global_step:,}, {tokens:,} tokens seen, "
                 f"in {_duration(time.perf_counter() - self.started)}"]
        if self.validation is not None:
            step, loss, ppl = self.validation
            lines.append(f"val/loss {loss:.4f} (perplexity {ppl:,.1f}) at step {step:,}")
        lines.append(f"checkpoint: {_shown(last)}")
        logger = trainer.logger
        if getattr(logger, "log_dir", None) is not None:
            lines.append(f"logs: {_shown(logger.log_dir)} (config.yaml, hparams.yaml, TensorBoard events)")
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"  tensorboard --logdir {_shown(logger.root_dir)}")
        lines.append(f"  gpt2-lightning generate --checkpoint {_shown(last)} --prompt \"The\"")
        if config is not None:
            lines.append(f"  gpt2-lightning fit --config {_shown(config)} --ckpt_path last   # resume, after a stop "
                         "(Ctrl-C, a kill, SIGTERM)")
        print("\n".join(lines), flush=True)
