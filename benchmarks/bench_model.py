"""Speed and memory of the GPT-2 core against transformers' GPT2LMHeadModel holding the same weights, in one run.

(a) one training step (forward + backward of the mean next-token loss), 6 layers × 384 wide, GPT-2 vocabulary,
    batch 4 × 256 tokens: eager, and compiled block by block as `model.compile: true` does; peak memory of the
    step (resident-memory rise, each contender in a fresh process);
(b) greedy decoding of 128 new tokens after a 16-token prompt at the 124M shape, batch 1: float32, bfloat16
    weights and int8 weights (`gpt2_lightning.quantize`), with the weight bandwidth each achieves against this
    machine's measured memory-read bandwidth;
(c) what bf16 and int8 change: held-out loss and greedy agreement with float32 on a briefly trained model;
(d) greedy decoding of a RoPE + GQA-4 + window-64 model at the 124M shape, eager and compiled: the rolling cache
    wraps within the 128 new tokens, and the compiled step must keep serving every position (graphs counted).

Both sides get the same inputs and targets. Timings interleave the contenders (these shared machines drift by
±15%) and report the median of `--repeats` runs with the spread (min–max).
Usage: python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--sections abcd]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2_lightning.analysis.brief_training import builtin_token_split, heldout_quality, train_briefly
from gpt2_lightning.analysis.measure import peak_rss_rise_mb
from gpt2_lightning.checkpoints.hf import state_dict_from_hf
from gpt2_lightning.checkpoints.strict import load_state_dict_strict
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.model import GPT
from gpt2_lightning.quantize import quantize_weights
from gpt2_lightning.train.callbacks import measure_cpu_peak_flops

TRAIN_SHAPE = (6, 6, 384)  # n_layer, n_head, n_embd
TRAIN_CONTENDERS = ["transformers GPT2LMHeadModel", "gpt2-lightning GPT.loss (eager)",
                    "gpt2-lightning GPT.loss (compile: true)"]


def twin_models(n_layer: int, n_head: int, n_embd: int) -> tuple[GPT, GPT2LMHeadModel]:
    """Our GPT and transformers' GPT-2 with identical (random) weights."""
    torch.manual_seed(0)
    theirs = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    ours = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    load_state_dict_strict(ours, state_dict_from_hf(theirs.state_dict()), source="transformers")
    return ours, theirs


def interleaved_seconds(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each callable, run in turn so that drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def train_steps() -> dict:
    """The training-step callables of TRAIN_CONTENDERS (a compiled one compiles on its first call)."""
    ours, theirs = twin_models(*TRAIN_SHAPE)
    compiled, _ = twin_models(*TRAIN_SHAPE)
    for block in compiled.transformer.h:  # exactly what GPT2LightningModule does for compile: true
        block.compile()
    batch = torch.randint(0, 50257, (4, 257), generator=torch.Generator().manual_seed(0))
    x, y = batch[:, :-1], batch[:, 1:]
    losses = [lambda: F.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten()),
              lambda: ours.loss(x, y), lambda: compiled.loss(x, y)]
    return {name: (lambda loss=loss: loss().backward()) for name, loss in zip(TRAIN_CONTENDERS, losses)}


def step_peak_mb(name: str) -> float:
    """Peak memory of one training step of `name` after a warm-up step (gradients allocated), this process."""
    step = train_steps()[name]
    step()
    return peak_rss_rise_mb(step)


def bench_train_step(repeats: int, threads: int) -> list[tuple]:
    steps = train_steps()
    start = time.perf_counter()
    steps[TRAIN_CONTENDERS[2]]()
    print(f"  compile: true, first step (compiling): {time.perf_counter() - start:.1f} s (not counted below)")
    times = interleaved_seconds(steps, repeats)
    peaks = {}
    for name in TRAIN_CONTENDERS:  # each in a fresh process, so that its peak is its own
        done = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--peak-memory-of", name],
                              capture_output=True, text=True, check=True)
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return [(name, times[name], peaks[name]) for name in TRAIN_CONTENDERS]


def memory_read_gbps(mb: int = 512) -> float:
    """This machine's memory-read bandwidth: the best of 5 sums over a buffer far larger than the caches."""
    buffer = torch.ones(mb * 2**20 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoded token reads: every matmul weight (the LM head included), not the embedding
    tables (one row each)."""
    tables = [model.transformer.wte, getattr(model.transformer, "wpe", None)]
    embeddings = {id(table.weight) for table in tables if table is not None}
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in embeddings}
    tied = model.lm_head.weight is model.transformer.wte.weight
    return sum(t.nbytes for t in tensors.values()) + (model.lm_head.weight.nbytes if tied else 0)


def bench_decode(repeats: int, new_tokens: int = 128) -> list[tuple]:
    ours, theirs = twin_models(12, 12, 768)
    ours.eval(), theirs.eval()
    bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    int8 = quantize_weights(copy.deepcopy(ours), "int8")
    prompt = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    theirs.generation_config.pad_token_id = 50256

    def hf():
        return theirs.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    assert torch.equal(generate(ours, prompt, new_tokens, Sampling(temperature=0.0)), hf()), (
        "float32 greedy tokens differ")
    start = time.perf_counter()
    compiled_tokens = generate(ours, prompt, new_tokens, Sampling(temperature=0.0), compile=True)
    print(f"  generate(compile=True), first call (compiling): {time.perf_counter() - start:.1f} s (not counted below)")
    assert torch.equal(compiled_tokens, hf()), "compiled float32 greedy tokens differ"
    contenders = {
        "transformers generate, float32": (hf, weight_bytes_per_token(ours)),
        "gpt2-lightning generate, float32": (lambda: generate(ours, prompt, new_tokens, Sampling(temperature=0.0)),
                                             weight_bytes_per_token(ours)),
        "gpt2-lightning generate(compile=True), float32": (
            lambda: generate(ours, prompt, new_tokens, Sampling(temperature=0.0), compile=True),
            weight_bytes_per_token(ours)),
        "gpt2-lightning generate, bfloat16 weights": (
            lambda: generate(bf16, prompt, new_tokens, Sampling(temperature=0.0)), weight_bytes_per_token(bf16)),
        "gpt2-lightning generate, int8 weights": (lambda: generate(int8, prompt, new_tokens, Sampling(temperature=0.0)),
                                                  weight_bytes_per_token(int8)),
    }
    times = interleaved_seconds({name: fn for name, (fn, _) in contenders.items()}, repeats)
    return [(name, [t / new_tokens for t in times[name]], contenders[name][1]) for name in contenders]


def bench_windowed_decode(repeats: int, new_tokens: int = 128) -> tuple[list[tuple], float, int, bool]:
    """(rows, first compiled call in s, graphs it compiled, identical tokens) for section (d)."""
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, pos_encoding="rope", n_kv_head=4, sliding_window=64)
    torch.manual_seed(0)
    model = GPT(config).eval()
    prompt = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    eager_tokens = generate(model, prompt, new_tokens, Sampling(temperature=0.0))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    start = time.perf_counter()
    identical = torch.equal(generate(model, prompt, new_tokens, Sampling(temperature=0.0), compile=True), eager_tokens)
    first_call, graphs = time.perf_counter() - start, torch._dynamo.utils.counters["stats"]["unique_graphs"]
    contenders = {
        "generate, float32": lambda: generate(model, prompt, new_tokens, Sampling(temperature=0.0)),
        "generate(compile=True), float32": lambda: generate(model, prompt, new_tokens, Sampling(temperature=0.0),
                                                            compile=True),
    }
    times = interleaved_seconds(contenders, repeats)
    return [(name, [t / new_tokens for t in times[name]]) for name in contenders], first_call, graphs, identical


def quality(steps: int) -> list[tuple[str, float, float]]:
    """(variant, held-out loss, greedy agreement with float32) on a model trained briefly on the builtin corpus."""
    train, heldout = builtin_token_split()
    model = train_briefly(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128), train, steps)
    loss, greedy = heldout_quality(model, heldout)
    rows = [("float32", loss, 1.0)]
    for name, variant in (("bfloat16 weights", copy.deepcopy(model).to(torch.bfloat16)),
                          ("int8 weights", quantize_weights(copy.deepcopy(model), "int8"))):
        v_loss, v_greedy = heldout_quality(variant, heldout)
        rows.append((name, v_loss, (v_greedy == greedy).float().mean().item()))
    return rows


def spread(values: list[float], scale: float) -> str:
    return f"{statistics.median(values) * scale:.1f} ({min(values) * scale:.1f}–{max(values) * scale:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality-steps", type=int, default=300, help="training steps of the model (c) quantizes")
    parser.add_argument("--sections", default="abcd", help="which of the sections (a)-(d) to run, e.g. bd")
    parser.add_argument("--peak-memory-of", choices=TRAIN_CONTENDERS, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_memory_of:
        print(json.dumps(step_peak_mb(args.peak_memory_of)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.repeats} interleaved runs (min–max)")

    if "a" in args.sections:
        rows = bench_train_step(args.repeats, args.threads)
        base_time, base_peak = statistics.median(rows[0][1]), rows[0][2]
        print("\n(a) training step, 6 layers × 384, batch 4 × 256 (forward + backward)")
        print("| implementation | ms / step | speed vs transformers | peak MB of the step | vs transformers |")
        print("|---|---:|---:|---:|---:|")
        for name, times, peak in rows:
            print(f"| {name} | {spread(times, 1e3)} | {base_time / statistics.median(times):.2f}× | {peak:.0f} | "
                  f"{peak / base_peak:.2f}× |")
        flops = 3 * twin_models(*TRAIN_SHAPE)[0].flops_per_token(256) * 4 * 256
        floor = flops / measure_cpu_peak_flops()
        print(f"matmul floor: {flops / 1e9:.0f} GFLOP per step at this CPU's measured matmul peak = "
              f"{floor * 1e3:.0f} ms, so no implementation can run faster than {base_time / floor:.2f}× "
              "transformers here")
        print("goals: eager >= 1.15×, compile: true >= 1.4×, peak memory <= 0.6× transformers'")

    if "b" in args.sections:
        bandwidth = memory_read_gbps()
        rows = bench_decode(args.repeats)
        base = statistics.median(rows[0][1])
        print(f"\n(b) greedy decoding, 124M shape, batch 1, 16-token prompt + 128 new tokens; memory read "
              f"{bandwidth:.1f} GB/s")
        print("| implementation | ms / token | speed vs transformers | weights read / token | GB/s "
              "| of memory bandwidth |\n|---|---:|---:|---:|---:|---:|")
        for name, times, nbytes in rows:
            seconds = statistics.median(times)
            print(f"| {name} | {spread(times, 1e3)} | {base / seconds:.2f}× | {nbytes / 1e6:.0f} MB | "
                  f"{nbytes / seconds / 1e9:.1f} | {nbytes / seconds / 1e9 / bandwidth:.0%} |")
        print("goals: float32 >= 1.5× with identical tokens (asserted above, eager and compiled), int8 >= 3× "
              "transformers' float32")

    if "c" in args.sections:
        print(f"\n(c) held-out loss, 4 layers × 128 trained {args.quality_steps} steps on the builtin corpus "
              "(held out: its last 5%)")
        print("| weights | held-out loss | vs float32 | greedy agreement with float32 |\n|---|---:|---:|---:|")
        rows = quality(args.quality_steps)
        for name, loss, agreement in rows:
            print(f"| {name} | {loss:.4f} | {loss / rows[0][1] - 1:+.2%} | {agreement:.1%} |")
        print("goal: int8 held-out loss within 1% of float32")

    if "d" in args.sections:
        rows, first_call, graphs, identical = bench_windowed_decode(args.repeats)
        base = statistics.median(rows[0][1])
        print("\n(d) greedy decoding, RoPE + GQA-4 + window 64 at the 124M shape, batch 1, 16-token prompt + 128 new "
              f"tokens; the first compiled call took {first_call:.1f} s and compiled {graphs} graphs; compiled "
              f"tokens {'identical to' if identical else 'DIFFER from'} eager")
        print("| implementation | ms / token | speed vs eager |\n|---|---:|---:|")
        for name, times in rows:
            print(f"| {name} | {spread(times, 1e3)} | {base / statistics.median(times):.2f}× |")


if __name__ == "__main__":
    main()
