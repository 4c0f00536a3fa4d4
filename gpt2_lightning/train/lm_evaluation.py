"""`LMEvaluation`: lm-evaluation-harness tasks during training, logged as `eval/<task>/<metric>` (optional, off by
default) — nanochat's habit of scoring CORE while it trains, with the standard harness instead.

Add it from the command line with its full class path (LightningCLI resolves callbacks by import path):

    gpt2-lightning fit --config configs/gpt2.yaml \\
        --trainer.callbacks+=gpt2_lightning.train.lm_evaluation.LMEvaluation \\
        --trainer.callbacks.tasks=[hellaswag] --trainer.callbacks.include_path=configs/eval \\
        --trainer.callbacks.limit=500 --trainer.callbacks.every_n_steps=2000

Every `every_n_steps` optimizer steps, rank 0 scores its model (`gpt2_lightning.evaluation`) and logs each metric at
that optimizer step (`trainer.global_step`: the model after that many updates). Under FSDP2 every rank first takes
part in gathering the full weights (as the end-of-run sample does), then rank 0 scores a full copy. The evaluation
leaves training as it was: train mode restored, and the python, numpy and torch random states (dropout) too.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, ParallelStrategy

from gpt2_lightning.errors import UsageError
from gpt2_lightning.evaluation import DEFAULT_BATCH_SIZE, check_task_data, evaluate, require_lm_eval, task_manager
from gpt2_lightning.model import GPT
from gpt2_lightning.train.parallel import is_sharded


class LMEvaluation(L.Callback):
    """Score lm-evaluation-harness tasks every `every_n_steps` optimizer steps; log `eval/<task>/<metric>`.

    Args:
        tasks: harness task names (local ones through `include_path`, e.g. configs/eval).
        every_n_steps: optimizer steps between evaluations (and at the last step when it is a multiple).
        limit: documents per task (the harness's `limit`); keep it small, training waits meanwhile.
        include_path: a directory of task YAMLs (configs/eval reads local JSONL copies, no Hub access).
        num_fewshot: few-shot examples per prompt (default: each task's own).
        batch_size: sequences per forward pass.
        max_length: tokens per scored window (default: the model's block_size).
        seed: the harness's seeds (few-shot sampling, sampled generation).
    """

    def __init__(
        self,
        tasks: list[str],
        every_n_steps: int = 1000,
        limit: float | None = 100,
        include_path: str | None = None,
        num_fewshot: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        seed: int = 1234,
    ) -> None:
        if not tasks or every_n_steps < 1:
            raise UsageError(f"LMEvaluation: need at least one task and every_n_steps >= 1, got {tasks!r} and "
                             f"{every_n_steps}")
        self.tasks, self.every_n_steps, self.limit = list(tasks), every_n_steps, limit
        self.include_path, self.num_fewshot, self.batch_size = include_path, num_fewshot, batch_size
        self.max_length, self.seed = max_length, seed
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse at once what would fail later: a missing extra, an unknown task, a missing data file."""
        require_lm_eval()
        if trainer.is_global_zero:
            check_task_data(task_manager(self.tasks, self.include_path), self.tasks)
        strategy = trainer.strategy
        if isinstance(strategy, ParallelStrategy) and not isinstance(strategy, (DDPStrategy, ModelParallelStrategy)):
            # FSDP1's flat parameters, DeepSpeed's partitions: rank 0 alone would score shards, or hang
            raise UsageError(f"LMEvaluation gathers a model under DDP or FSDP2 (configs/fsdp.yaml) only, not under "
                             f"{type(strategy).__name__}; evaluate the saved checkpoints with `gpt2-lightning "
                             "evaluate` instead")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps taken; unchanged over the micro-batches of an accumulation
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        model = _full_model(trainer, pl_module.model)
        if trainer.is_global_zero:
            metrics = self._score(model)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        trainer.strategy.barrier("lm_evaluation")

    def _score(self, model: GPT) -> dict[str, float]:
        """{eval/<task>/<metric>: value} of `model`, in eval mode, without disturbing training's random streams."""
        training = model.training
        python_state, numpy_state = random.getstate(), np.random.get_state()
        device = model.transformer.wte.weight.device
        try:  # the harness seeds python, numpy and torch (every CUDA device included): give training its streams back
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                results = evaluate(model.eval(), self.tasks, num_fewshot=self.num_fewshot, limit=self.limit,
                                   batch_size=self.batch_size, max_length=self.max_length,
                                   include_path=self.include_path, seed=self.seed, bootstrap_iters=0, quiet=True)
        finally:
            model.train(training)
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        return {f"eval/{task}/{key.split(',')[0]}": float(value)
                for task, values in results["results"].items() for key, value in values.items()
                if "," in key and "stderr" not in key and isinstance(value, (int, float))}


def _full_model(trainer: L.Trainer, model: GPT) -> GPT | None:
    """`model` itself, or under FSDP2 a full copy gathered from every rank's shards onto rank 0 (None elsewhere)."""
    if not any(is_sharded(p) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainer.is_global_zero:
        return None
    full = GPT(model.config)
    full.load_state_dict(state)
    return full.to(trainer.strategy.root_device)

