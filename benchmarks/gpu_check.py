"""The GPU check: the paths configs/gpt2.yaml takes on a CUDA GPU, measured in one run, printed as one table.

1. a 124M bf16 compiled `gpt2-lightning fit` (configs/gpt2.yaml, accumulation 1) on synthetic prepared data:
   tokens/s and MFU over the steps after the compile (goal >= 40% MFU on an H100, what llm.c reaches);
2. window-256 against full causal attention at T = 8192, forward + backward, bf16 (goal >= 5×);
3. FSDP2 (configs/fsdp.yaml) on one device: a few steps, a sharded checkpoint, a resume that continues it;
4. greedy decoding at the 124M shape, batch 1, bf16 and fp32 weights: tokens/s.

No network: the corpus is generated (OpenWebText-like documents of Python's help-text words) and prepared
locally. Run through benchmarks/gpu_check.sh (at most 8 minutes on one GPU).
Usage: python benchmarks/gpu_check.py [--workdir /tmp/gpt2l-gpu-check] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import generate as generate_corpus  # noqa: E402  (the same synthetic corpus as the data benchmark)

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import logged_scalars as scalars  # noqa: E402  (the tests' reader of a run's TensorBoard scalars)

from gpt2_lightning.attention import attention  # noqa: E402
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.generate import Sampling, generate  # noqa: E402
from gpt2_lightning.model import GPT  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROWS: list[tuple[str, str, str, str]] = []  # (check, measured, goal, status)


def row(check: str, measured: str, goal: str = "", met: bool | None = None) -> None:
    ROWS.append((check, measured, goal, "" if met is None else ("met" if met else "**not met**")))
    print(f"  {check}: {measured}", flush=True)


def cli(*args: str, log: Path) -> None:
    """Run `gpt2-lightning ARGS`, its output to `log`; a failure stops the check with the log's tail."""
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "gpt2_lightning", *args], stdout=out, stderr=subprocess.STDOUT,
                              cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        sys.exit(f"gpt2-lightning {args[0]} failed ({done.returncode}); last lines of {log}:\n"
                 + "".join(open(log).readlines()[-30:]))


def data_args(workdir: Path) -> list[str]:
    corpus = generate_corpus(workdir / "corpus.jsonl", 40)  # ~9M tokens: 300 steps of 12 × 1024 read ~3.7M
    return ["--data.source", "files", "--data.paths", str(corpus), "--data.cache_dir", str(workdir / "cache"),
            "--data.val_size", "0.01", "--trainer.limit_val_batches", "0", "--trainer.accumulate_grad_batches", "1",
            "--trainer.log_every_n_steps", "5"]


def check_fit(workdir: Path, steps: int) -> None:
    root = workdir / "fit"
    start = time.perf_counter()
    cli("fit", "--config", "configs/gpt2.yaml", *data_args(workdir), "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(root), "--checkpoint.every_n_train_steps", str(10 * steps),
        log=workdir / "fit.log")
    wall = time.perf_counter() - start
    rate, mfu = scalars(root, "train/tokens_per_sec"), scalars(root, "train/mfu")
    late = [s for s in rate if s >= steps // 3]  # after the compile and the first noisy steps
    tokens = statistics.median(rate[s] for s in late)
    loss = scalars(root, "train/loss")
    row("124M fit, bf16-mixed, compiled, 12 × 1024 per step", f"{tokens:,.0f} tok/s ({wall:.0f} s wall for {steps} "
        f"steps, loss {loss[min(loss)]:.2f} → {loss[max(loss)]:.2f})")
    mfu_late = [mfu[s] for s in late if s in mfu]
    if not mfu_late:  # Lightning's peak table lacks this GPU: the run printed how to pass model.peak_flops
        row("124M fit MFU", "not logged: this GPU's peak is not in Lightning's table", ">= 40% (H100)", False)
        return
    mfu_median = statistics.median(mfu_late)
    row("124M fit MFU", f"{mfu_median:.1%}", ">= 40% (H100)", mfu_median >= 0.40)


def cuda_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def check_window_attention() -> None:
    torch.manual_seed(0)
    shape = (4, 12, 8192, 64)  # batch 4, 124M's heads
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def step(window):
        return lambda: attention(q, k, v, window).sum().backward()

    full, windowed = cuda_ms(step(None)), cuda_ms(step(256))
    row("attention fwd+bwd, 4 × 12 heads × 8192 × 64, bf16", f"full causal {full:.1f} ms, window 256 {windowed:.1f} ms")
    row("window 256 speed-up at T = 8192", f"{full / windowed:.1f}×", ">= 5×", full / windowed >= 5)


def check_fsdp_resume(workdir: Path) -> None:
    root = workdir / "fsdp"
    common = ["--config", "configs/gpt2.yaml", "--config", "configs/fsdp.yaml", *data_args(workdir),
              "--trainer.devices", "1", "--trainer.strategy.init_args.data_parallel_size", "1",
              "--trainer.default_root_dir", str(root), "--checkpoint.every_n_train_steps", "10",
              "--model.compile", "false"]  # sharding and resume are the point here, not the compile
    cli("fit", *common, "--trainer.max_steps", "10", log=workdir / "fsdp.log")
    cli("fit", *common, "--trainer.max_steps", "20", "--ckpt_path", "last", log=workdir / "fsdp-resume.log")
    second = scalars(root / "lightning_logs" / "version_1", "train/loss", versions="")
    resumed = (root / "checkpoints" / "last.ckpt").is_dir() and second and min(second) >= 10
    row("FSDP2 on one device: 10 steps, sharded last.ckpt, resume to 20",
        f"resumed run logged steps {min(second)}–{max(second)}" if second else "resumed run logged nothing",
        "continues at step 10", bool(resumed))


def check_decode(new_tokens: int = 256) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig()).cuda().eval()
    prompt = torch.randint(0, 50257, (1, 16), device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        generate(model, prompt, 8, Sampling(temperature=0.0))  # warm-up
        torch.cuda.synchronize()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            generate(model, prompt, new_tokens, Sampling(temperature=0.0))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        row(f"greedy decode, 124M, batch 1, {str(dtype).removeprefix('torch.')}",
            f"{new_tokens / statistics.median(times):,.0f} tok/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpt2l-gpu-check"))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU; this machine has none (torch.cuda.is_available() is False)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    for check in (check_window_attention, check_decode):
        check()
    check_fit(args.workdir, args.steps)
    check_fsdp_resume(args.workdir)
    print(f"\n### GPU check on {device} (torch {torch.__version__})\n")
    print("| check | measured | goal | status |\n|---|---|---|---|")
    for check, measured, goal, status in ROWS:
        print(f"| {check} | {measured} | {goal} | {status} |")


if __name__ == "__main__":
    main()
