"""Speed of the GPT-2 core against transformers' GPT2LMHeadModel holding the same weights, in one run.

(a) one training step (forward + backward), 6 layers × 384 wide, GPT-2 vocabulary, batch 4 × 256 tokens;
(b) greedy decoding of 128 new tokens after a 16-token prompt at the 124M shape, batch 1.

Timings interleave the contenders and report medians, because these shared machines drift by ±15%.
Usage: python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2_lightning.checkpoints import load_state_dict_strict
from gpt2_lightning.hf import state_dict_from_hf
from gpt2_lightning.model import GPT, GPTConfig


def twin_models(n_layer: int, n_head: int, n_embd: int) -> tuple[GPT, GPT2LMHeadModel]:
    """Our GPT and transformers' GPT-2 with identical (random) weights."""
    torch.manual_seed(0)
    theirs = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    ours = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    load_state_dict_strict(ours, state_dict_from_hf(theirs.state_dict()), source="transformers")
    return ours, theirs


def median_seconds(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each callable, run interleaved so that drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_train_step(repeats: int, compile_: bool) -> list[tuple[str, float]]:
    ours, theirs = twin_models(6, 6, 384)
    ours.train(), theirs.train()
    batch = torch.randint(0, 50257, (4, 257), generator=torch.Generator().manual_seed(0))
    x, y = batch[:, :-1], batch[:, 1:]

    def loss_ours(model):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    def step(loss_fn):
        def run():
            loss_fn().backward()
        return run

    fns = {
        "transformers GPT2LMHeadModel": step(lambda: F.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten())),
        "gpt2-lightning (eager)": step(lambda: loss_ours(ours)),
    }
    if compile_:
        compiled = torch.compile(ours)
        start = time.perf_counter()
        step(lambda: loss_ours(compiled))()
        print(f"  torch.compile first step: {time.perf_counter() - start:.1f} s (not counted below)")
        fns["gpt2-lightning (torch.compile)"] = step(lambda: loss_ours(compiled))
    return list(median_seconds(fns, repeats).items())


def bench_greedy_decode(repeats: int, new_tokens: int = 128) -> list[tuple[str, float]]:
    ours, theirs = twin_models(12, 12, 768)
    ours.eval(), theirs.eval()
    prompt = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    theirs.generation_config.pad_token_id = 50256
    out_theirs = theirs.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    out_ours = ours.generate(prompt, new_tokens, temperature=0.0)
    assert torch.equal(out_ours, out_theirs), "greedy outputs differ: the benchmark compares unequal work"
    fns = {
        "transformers generate(do_sample=False)": lambda: theirs.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        ),
        "gpt2-lightning generate(temperature=0)": lambda: ours.generate(prompt, new_tokens, temperature=0.0),
    }
    return [(name, t / new_tokens) for name, t in median_seconds(fns, repeats, warmup=0).items()]


def print_table(title: str, unit: str, rows: list[tuple[str, float]]) -> None:
    baseline = rows[0][1]
    print(f"\n{title}\n| implementation | {unit} | speed vs transformers |\n|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.1f} | {baseline / seconds:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row of (a)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.repeats} interleaved runs")
    print_table(
        "(a) training step, 6 layers × 384, batch 4 × 256 (forward + backward)",
        "ms / step",
        bench_train_step(args.repeats, compile_=not args.no_compile),
    )
    print_table(
        "(b) greedy decoding, 124M shape, batch 1, 16-token prompt + 128 new tokens",
        "ms / token",
        bench_greedy_decode(args.repeats),
    )


if __name__ == "__main__":
    main()
