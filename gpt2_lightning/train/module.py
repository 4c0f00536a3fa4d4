"""The LightningModule: next-token loss, AdamW groups, warmup + cosine schedule, logging, FSDP2 wrapping.

It holds no data logic (the DataModule does) and no device logic beyond what Lightning hands it.
"""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchmetrics import MeanMetric

from gpt2_lightning.checkpoints import load
from gpt2_lightning.checkpoints.convert import mha_to_gqa
from gpt2_lightning.checkpoints.lightning import strip_compile_prefix
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import UsageError
from gpt2_lightning.model import GPT
from gpt2_lightning.train.lightning_compat import is_attached
from gpt2_lightning.train.parallel import is_sharded, shard_model


class GPT2LightningModule(L.LightningModule):
    """GPT trained on next-token prediction. Every GPTConfig field is set under `model.config` in YAML."""

    def __init__(
        self,
        config: GPTConfig = GPTConfig(),  # noqa: B008 - a value, never mutated
        learning_rate: float = 6e-4,
        min_learning_rate: float = 6e-5,
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        init_from: str | None = None,
        compile: bool = False,
        peak_flops: float | None = None,
    ) -> None:
        """
        Args:
            config: the architecture (every variant field: pos_encoding, n_kv_head, sliding_window, ...).
            learning_rate: peak learning rate, reached after `warmup_steps` linear warmup steps.
            min_learning_rate: where the cosine decay ends, at `lr_decay_steps` (default: trainer.max_steps).
            weight_decay: AdamW decay on weight matrices only (not biases, LayerNorms or embeddings).
            betas: AdamW betas.
            init_from: any checkpoint `gpt2_lightning.checkpoints.load` reads, to fine-tune from; its architecture
                wins over `config`, except dropout, n_kv_head (converted with mha_to_gqa), sliding_window and
                block_size (the training length: learned positions past it are cropped, as nanoGPT does), applied
                on top. One line says what was loaded and changed; config.yaml and hparams.yaml record the result.
            compile: torch.compile each transformer block (state-dict keys stay unprefixed; the first steps compile).
            peak_flops: FLOP/s per device that MFU divides by (default: Lightning's table for GPUs at the training
                precision, on CPUs this machine's fp32 matmul rate, measured once and cached); printed at the start
                of `fit`.
        """
        super().__init__()
        self.save_hyperparameters()
        if isinstance(config, dict):  # as checkpoints store it (`load_from_checkpoint`)
            config = GPTConfig(**config)
        if warmup_steps < 0 or learning_rate <= 0 or not 0 <= min_learning_rate <= learning_rate:
            raise UsageError(
                "model: need learning_rate > 0, 0 <= min_learning_rate <= learning_rate and warmup_steps >= 0, got "
                f"{learning_rate}, {min_learning_rate}, {warmup_steps}"
            )
        self.model = self._build(config, init_from)
        self.config = self.model.config
        # The hyper-parameters (checkpoints, hparams.yaml) record the architecture built, which init_from may change.
        self.save_hyperparameters({**self.hparams, "config": dataclasses.asdict(self.config)})
        self.val_loss = MeanMetric()
        self._rng_state: torch.Tensor | None = None
        self.flops_per_batch: float | None = None  # training FLOPs of one batch, read by the throughput monitor

    @staticmethod
    def _build(config: GPTConfig, init_from: str | None) -> GPT:
        if init_from is None:
            return GPT(config)
        model = load(init_from).train()
        loaded = model.config
        if loaded.pos_encoding == "learned" and config.block_size > loaded.block_size:
            raise UsageError(
                f"model.config.block_size={config.block_size} is longer than the {loaded.block_size} learned "
                f"positions of {init_from}; set model.config.block_size <= {loaded.block_size} (it sets the "
                "training sequence length)"
            )
        changes = []
        if config.n_kv_head is not None and config.n_kv_head != loaded.kv_heads:
            model = mha_to_gqa(model, config.n_kv_head)
            changes.append(f"key/value heads {loaded.kv_heads} → {config.n_kv_head} (mean-pooled per group)")
        wanted = dataclasses.replace(model.config, dropout=config.dropout, sliding_window=config.sliding_window,
                                     block_size=config.block_size)
        if wanted.block_size != loaded.block_size:
            cropped = " (positions past it cropped)" if loaded.pos_encoding == "learned" else ""
            changes.append(f"block_size {loaded.block_size} → {wanted.block_size}{cropped}")
        if wanted.sliding_window != loaded.sliding_window:
            changes.append(f"sliding_window {loaded.sliding_window} → {wanted.sliding_window}")
        if wanted != model.config:
            state = model.state_dict()
            if wanted.pos_encoding == "learned":
                state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: wanted.block_size]
            model = GPT(wanted)
            model.load_state_dict(state)
        if rank_zero_only.rank == 0:
            print(f"init_from {init_from}: {loaded.describe()}, {model.num_params():,} parameters; "
                  + ("; ".join(changes) if changes else "architecture unchanged"), flush=True)
        return model

    def configure_model(self) -> None:
        if getattr(self, "device_mesh", None) is not None:  # ModelParallelStrategy: FSDP2
            bf16 = self.device_mesh.device_type == "cuda" and torch.cuda.is_bf16_supported()
            shard_model(self.model, self.device_mesh["data_parallel"], bf16=bf16)
            if self.model.lm_head.weight is not self.model.transformer.wte.weight:
                raise RuntimeError("sharding untied the LM head from the token embedding; they must share a unit")
        # Compile block by block, in place: FSDP2's hooks stay outside the compiled code, one compiled graph serves
        # every block, and state-dict keys stay unprefixed.
        if self.hparams.compile:
            for block in self.model.transformer.h:
                block.compile()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _loss(self, batch) -> torch.Tensor:
        inputs, targets = batch  # (B, T) each
        return self.model.loss(inputs, targets)

    # ---- training -------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # The model summary counts FLOPs on one forward of this, on rank 0 only: with several ranks a sharded
        # forward on one of them would wait forever for the others, so there it counts none.
        if self.trainer.world_size == 1:
            self.example_input_array = torch.zeros(1, self.config.block_size, dtype=torch.long)

    def on_train_start(self) -> None:
        if hasattr(self.model, "reshard"):  # FSDP2 keeps the root unsharded after a forward (sanity validation)
            self.model.reshard()
        total = self.model.num_params()
        local = sum(p.to_local().numel() if is_sharded(p) else p.numel() for p in self.model.parameters())
        # Per-rank memory: sharded, each rank holds ~1/world of parameters, gradients and AdamW's moments;
        # replicated (DDP), all of them.
        if self.trainer.world_size > 1 or local < total:
            print(f"rank {self.global_rank}: holds {local:,} of {total:,} parameters ({local / total:.1%})", flush=True)
        if self._rng_state is not None:  # resumed: continue the RNG stream (dropout) where the checkpoint left it
            torch.set_rng_state(self._rng_state)
            self._rng_state = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs = batch[0]  # (B, T): forward + backward ≈ 3 × the forward's FLOPs
        self.flops_per_batch = 3 * self.model.flops_per_token(inputs.size(1)) * inputs.numel()
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"train/loss is {loss.item()} at step {self.global_step}: training diverged. Lower "
                "model.learning_rate, raise model.warmup_steps, set trainer.gradient_clip_val (e.g. 1.0), or use "
                "fp32/bf16 instead of fp16. Checkpoints and logs so far are kept."
            )
        self.log("train/loss", loss, prog_bar=True)
        # the rate this step's optimizer update uses (the schedule advances after it, before on_train_batch_end)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            # Sharded (FSDP2): a DTensor of local norms, made whole by one reduction across ranks.
            total = torch.nn.utils.get_total_norm(grads, foreach=True)
            if is_sharded(total):
                total = total.full_tensor()
            self.log("train/grad_norm", total)

    # ---- validation ----------------------------------------------------------------------------------------

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._loss(batch)
        self.val_loss.update(loss)
        self.log("val/loss", self.val_loss, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val/ppl", self.val_loss.compute().exp())  # the perplexity of the mean loss, all ranks'

    def test_step(self, batch, batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("test/loss", loss)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.model(batch[0], last_only=True)[:, -1].argmax(-1)  # the next token after each sequence

    # ---- optimisation --------------------------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            is_matrix = p.dim() >= 2 and not name.startswith(("transformer.wte", "transformer.wpe"))
            (decay if is_matrix else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=tuple(hp.betas), fused=fused,
                                      foreach=None if fused else True)
        decay_steps = hp.lr_decay_steps or self.trainer.max_steps
        if decay_steps is None or decay_steps <= 0:
            raise UsageError("set trainer.max_steps (or model.lr_decay_steps): the cosine schedule needs a length")
        if hp.warmup_steps >= decay_steps:
            rank_zero_warn(f"model.warmup_steps={hp.warmup_steps} is not shorter than the schedule's {decay_steps} "
                           "steps: the learning rate never decays (and, past the run's end, never reaches its peak)")
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(step, hp.warmup_steps, decay_steps, hp.min_learning_rate / hp.learning_rate)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("config")
        if saved is not None:
            saved = saved if isinstance(saved, dict) else dataclasses.asdict(saved)
            now = dataclasses.asdict(self.config)
            differ = [f"{k}: checkpoint {saved.get(k)!r}, config {v!r}" for k, v in now.items() if saved.get(k) != v]
            if differ:
                raise UsageError(
                    "the checkpoint was trained with a different model config (" + "; ".join(differ) + "). Resume "
                    "with the run's own config (its config.yaml sits next to the logs), or start a new run from "
                    "its weights with model.init_from."
                )
        if is_attached(self) and self.trainer.state.fn == "fit":
            self._refuse_changed_optimisation(checkpoint.get("hyper_parameters", {}))
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = strip_compile_prefix(checkpoint["state_dict"])
        self._rng_state = checkpoint.get("torch_rng_state")

    def _refuse_changed_optimisation(self, saved: dict) -> None:
        """The optimizer and schedule restore their own state (base learning rates included), so a changed setting
        would be recorded in config.yaml and not applied: resuming with one is refused instead."""
        differ = []
        for key in RESUMED_OPTIMISATION:
            if key in saved:
                was, now = saved[key], self.hparams[key]
                if key == "betas":
                    was, now = tuple(was), tuple(now)
                if was != now:
                    differ.append(f"model.{key}: checkpoint {was!r}, now {now!r}")
        if differ:
            raise UsageError(
                "the checkpoint was trained with other optimisation settings (" + "; ".join(differ) + "), which the "
                "restored optimizer and schedule would silently keep. Resume with the run's own settings (its "
                "config.yaml sits next to the logs), or start a new run from its weights with model.init_from."
            )


# Settings the restored optimizer / LR schedule carry in their own state: changing them on resume is refused.
RESUMED_OPTIMISATION = ("learning_rate", "min_learning_rate", "warmup_steps", "lr_decay_steps", "weight_decay", "betas")


def lr_factor(step: int, warmup: int, decay_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warmup, cosine decay to min_ratio at decay_steps, then flat."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)
