"""Training throughput: Lightning `fit` against a bare PyTorch loop, the data pipeline alone, and MFU.

Same model (the quickstart config unless overridden), same optimizer, schedule, clipping and data stream in
both loops; validation off. Throughput is measured over the steps after `--warmup`, from per-step wall times.
Usage: python benchmarks/bench_train.py [--steps 40] [--warmup 5] [--n-layer 4] [--n-embd 128] [--block-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.data import GPT2DataModule
from gpt2_lightning.train.callbacks import measure_cpu_peak_flops
from gpt2_lightning.train.module import GPT2LightningModule


class StepTimes(L.Callback):
    """Wall-clock time at the end of every training batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


def tokens_per_sec(ends: list[float], warmup: int, tokens_per_step: int) -> float:
    steps = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :])]
    return tokens_per_step / statistics.median(steps)


def make(config: GPTConfig, batch_size: int) -> tuple[GPT2LightningModule, GPT2DataModule]:
    torch.manual_seed(0)
    module = GPT2LightningModule(config, learning_rate=3e-3, warmup_steps=10)
    data = GPT2DataModule(block_size=config.block_size, batch_size=batch_size, val_size=0.05)
    data.prepare_data()
    data.setup("fit")
    return module, data


def lightning_fit(config: GPTConfig, batch_size: int, steps: int) -> list[float]:
    module, data = make(config, batch_size)
    timer = StepTimes()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, gradient_clip_val=1.0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, logger=True,
        callbacks=[timer], default_root_dir="/tmp/bench_train",
    )
    trainer.fit(module, data)
    return timer.ends


def bare_loop(config: GPTConfig, batch_size: int, steps: int) -> list[float]:
    """The same work written as a plain loop (the module's optimizer and schedule, no Trainer)."""
    module, data = make(config, batch_size)

    class Steps:  # what configure_optimizers reads from the trainer
        max_steps = steps

    module._trainer = Steps()
    optim = module.configure_optimizers()
    optimizer, schedule = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    model = module.model.train()
    ends = []
    for (x, y), _ in zip(data.train_dataloader(), range(steps)):
        loss = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        loss.item()  # Lightning logs the loss every step, which synchronises the same way
        ends.append(time.perf_counter())
    return ends


def data_only(config: GPTConfig, batch_size: int, batches: int) -> float:
    _, data = make(config, batch_size)
    batches = min(batches, len(data.train_dataloader()) - 1)  # within one epoch of the builtin corpus
    loader = iter(data.train_dataloader())
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size * config.block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size)
    tokens_per_step = args.batch_size * args.block_size

    bare = tokens_per_sec(bare_loop(config, args.batch_size, args.steps), args.warmup, tokens_per_step)
    fit = tokens_per_sec(lightning_fit(config, args.batch_size, args.steps), args.warmup, tokens_per_step)
    pipeline = data_only(config, args.batch_size, batches=200)
    peak = measure_cpu_peak_flops()
    from gpt2_lightning.model import GPT

    flops_per_token = 3 * GPT(config).flops_per_token(args.block_size)
    print(f"torch {torch.__version__}, {args.threads} threads; model {args.n_layer} layers × {args.n_embd}, "
          f"block {args.block_size}, batch {args.batch_size}; median over steps {args.warmup}–{args.steps}")
    print("\n| measure | tokens/s | note |\n|---|---:|---|")
    print(f"| bare PyTorch loop | {bare:,.0f} | |")
    print(f"| Lightning fit | {fit:,.0f} | overhead {100 * (1 - fit / bare):+.1f}% |")
    print(f"| data pipeline alone | {pipeline:,.0f} | {pipeline / fit:.0f}× what fit consumes |")
    print(f"\nmeasured fp32 matmul peak: {peak / 1e9:.0f} GFLOP/s; training FLOPs/token: {flops_per_token / 1e6:.1f} M")
    print(f"achieved: {fit * flops_per_token / 1e9:.0f} GFLOP/s = {fit * flops_per_token / peak:.0%} of peak (MFU)")


if __name__ == "__main__":
    main()
