"""Scoring throughput of lm-evaluation-harness requests: `gpt2-lightning`'s LM against the harness's own `HFLM`, on the
same random weights at the 124M shape and the same requests, in one run.

(a) HellaSwag-shaped `loglikelihood`: questions of ~100 context tokens, 4 endings of 10–30 tokens each (our LM runs
    a shared context once and the LM head on the endings only; HFLM runs each context + ending whole);
(b) WikiText-shaped `loglikelihood_rolling`: documents of ~2,500 tokens in windows of 1,024.

Throughput counts each request's context + continuation tokens (rolling: the document's tokens), the same for both
sides; results must agree (log-likelihoods within 1e-4 relative to the sum, identical is-greedy flags). Timings
interleave the contenders and report the median of `--repeats` runs.
Usage: python benchmarks/bench_eval.py [--threads 2] [--questions 8] [--documents 2] [--repeats 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.integrations.tiktoken import convert_tiktoken_to_fast

from gpt2_lightning.corpus import builtin_documents
from gpt2_lightning.evaluation import GPT2LightningLM
from gpt2_lightning.tokenizer import get_tokenizer


def requests(questions: int, documents: int, seed: int = 0) -> tuple[list[Instance], list[Instance]]:
    """(HellaSwag-shaped loglikelihood requests, WikiText-shaped rolling requests) cut from the built-in corpus."""
    words = " ".join(builtin_documents()).split()
    rng = random.Random(seed)

    def span(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start:start + n])

    choice = []
    for q in range(questions):
        context = span(75)  # ~100 tokens
        choice += [Instance("loglikelihood", {}, (context, " " + span(rng.randrange(8, 24))), 4 * q + e)
                   for e in range(4)]
    rolling = [Instance("loglikelihood_rolling", {}, (span(1900),), d) for d in range(documents)]  # ~2,500 tokens
    return choice, rolling


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args, disable_tqdm=True)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--documents", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)  # 124M shape, random weights
        convert_tiktoken_to_fast(get_tokenizer(), directory)
        ours = GPT2LightningLM(directory, batch_size=args.batch_size, device=args.device, dtype=args.dtype)
        theirs = HFLM(pretrained=directory, device=args.device, batch_size=args.batch_size, dtype=args.dtype)
    choice, rolling = requests(args.questions, args.documents)
    enc = get_tokenizer()
    sections = {
        "HellaSwag-shaped loglikelihood": ("loglikelihood", choice,
                                           sum(len(enc.encode(c + x)) for c, x in (r.args for r in choice))),
        "WikiText-shaped loglikelihood_rolling": ("loglikelihood_rolling", rolling,
                                                  sum(len(enc.encode(r.args[0])) for r in rolling)),
    }
    print(f"# torch {torch.__version__}, {args.threads} threads, {args.device}, {args.dtype}, batch {args.batch_size}, "
          f"124M shape, {args.questions} questions × 4 endings, {args.documents} documents")
    print("| requests | tokens | HFLM tokens/s | gpt2-lightning tokens/s | ratio | max abs diff | greedy flags |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, (method, batch, tokens) in sections.items():
        times, outputs = {"ours": [], "theirs": []}, {}
        for _ in range(args.repeats):
            for side, lm in (("ours", ours), ("theirs", theirs)):
                seconds, outputs[side] = timed(getattr(lm, method), batch)
                times[side].append(seconds)
        results, reference = outputs["ours"], outputs["theirs"]
        if method == "loglikelihood":
            diff = max(abs(a[0] - b[0]) for a, b in zip(results, reference))
            flags = "identical" if [a[1] for a in results] == [b[1] for b in reference] else "DIFFER"
        else:
            diff, flags = max(abs(a - b) for a, b in zip(results, reference)), "-"
        assert diff < 1e-4 * max(1.0, max(abs(b if isinstance(b, float) else b[0]) for b in reference)), diff
        t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
        print(f"| {name} | {tokens:,} | {tokens / t_theirs:,.0f} | {tokens / t_ours:,.0f} | "
              f"{t_theirs / t_ours:.2f}× | {diff:.1e} | {flags} |")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
