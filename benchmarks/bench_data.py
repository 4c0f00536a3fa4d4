"""The data path at OpenWebText scale, simulated: prepare throughput, loader tokens/s, resume cost, validation
pass time and memory against corpus size, with nanoGPT's memmap `get_batch` as the anchor.

Generates a synthetic OpenWebText-like corpus (JSONL, documents of 200–1600 words drawn from Python's help
text, ~4.2 characters per GPT-2 token) of `--mb` MB and a 10× smaller prefix of it, prepares both, and measures
at configs/gpt2.yaml's shape (block 1024, batch 12). Every figure comes from this run.
Usage: python benchmarks/bench_data.py [--mb 200] [--workdir /tmp/gpt2l-bench-data]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gpt2_lightning.corpus import Corpus, builtin_documents
from gpt2_lightning.data import GPT2DataModule
from gpt2_lightning.token_cache import prepare

BLOCK, BATCH = 1024, 12


def generate(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A JSONL corpus of `megabytes` MB: random word sequences with OpenWebText's document lengths."""
    if path.is_file() and path.stat().st_size >= megabytes * 1e6:
        return path
    words = np.array(" ".join(builtin_documents()).split())
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            line = json.dumps({"text": " ".join(words[rng.integers(0, len(words), int(rng.integers(200, 1600)))])})
            f.write(line + "\n")
            written += len(line) + 1
    return path


def prefix(source: Path, path: Path, megabytes: float) -> Path:
    if not path.is_file():
        with open(source) as f, open(path, "w") as out:
            written = 0
            for line in f:
                if written >= megabytes * 1e6:
                    break
                out.write(line)
                written += len(line)
    return path


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def cpu_scaling(n: int = 20_000_000) -> float:
    """This machine's ceiling for 2 processes: the throughput of 2 concurrent CPU-bound processes over 1."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        list(pool.map(_spin, [1000, 1000]))  # started
        start = time.perf_counter()
        pool.submit(_spin, n).result()
        one = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(_spin, [n, n]))
        two = time.perf_counter() - start
    return 2 * one / two


def time_prepare(corpus_file: Path, cache: Path, num_proc: int) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    prepare(Corpus("files", [str(corpus_file)]), cache, num_proc=num_proc, log=lambda _: None)
    return corpus_file.stat().st_size / 1e6 / (time.perf_counter() - start)


def module(corpus_file: Path, cache: Path, workers: int = 0, val_size: float = 0.0005) -> GPT2DataModule:
    dm = GPT2DataModule(source="files", paths=[str(corpus_file)], block_size=BLOCK, batch_size=BATCH,
                        val_size=val_size, num_workers=workers, cache_dir=str(cache))
    dm.prepare_data = lambda: None  # already prepared
    dm.setup("fit")
    return dm


def loader_tokens_per_sec(dm: GPT2DataModule, batches: int = 1500) -> float:
    loader = iter(dm.train_dataloader())
    next(loader)  # workers started
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * BATCH * BLOCK / (time.perf_counter() - start)


def nanogpt_get_batch_tokens_per_sec(cache_dir: Path, batches: int = 1500) -> float:
    """nanoGPT's train.py get_batch: a fresh np.memmap per batch, random offsets, stack, int64."""
    file = next(cache_dir.glob("files-*/tokens-00000.bin"))
    start = time.perf_counter()
    for _ in range(batches):
        data = np.memmap(file, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + BLOCK].astype(np.int64)) for i in ix])
        del x, y
    return batches * BATCH * BLOCK / (time.perf_counter() - start)


def first_batch_after_resume(dm: GPT2DataModule, position: int) -> float:
    dm.start_batch = position
    start = time.perf_counter()
    next(iter(dm.train_dataloader()))
    return time.perf_counter() - start


def validation_pass(dm: GPT2DataModule) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(1 for _ in dm.val_dataloader())
    return time.perf_counter() - start, n


MEMORY_PROBE = """
import sys, resource
sys.path.insert(0, {bench!r})
from bench_data import module
from pathlib import Path
def anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon'):
            return int(line.split()[1]) / 1024
dm = module(Path({corpus!r}), Path({cache!r}), val_size=500_000)
peak = anon()
loader = iter(dm.train_dataloader())
for i in range(3000):
    try:
        next(loader)
    except StopIteration:
        loader = iter(dm.train_dataloader())
    if i % 100 == 0:
        peak = max(peak, anon())
print(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def memory(corpus_file: Path, cache: Path) -> tuple[float, float]:
    """(peak anonymous MB, peak RSS MB incl. mapped token pages) of a process reading 3000 batches."""
    code = MEMORY_PROBE.format(bench=str(Path(__file__).parent), corpus=str(corpus_file), cache=str(cache))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--workdir", default="/tmp/gpt2l-bench-data")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    big = generate(work / f"corpus-{args.mb:g}mb.jsonl", args.mb)
    small = prefix(big, work / f"corpus-{args.mb / 10:g}mb.jsonl", args.mb / 10)
    print(f"torch {torch.__version__}; corpus {big.stat().st_size / 1e6:.0f} MB and "
          f"{small.stat().st_size / 1e6:.0f} MB (JSONL); block {BLOCK}, batch {BATCH}\n")

    ceiling = cpu_scaling()
    one = time_prepare(big, work / "cache-1", 1)
    two = time_prepare(big, work / "cache-2", 2)
    time_prepare(small, work / "cache-small", 2)
    manifest = json.loads(next((work / "cache-2").glob("files-*/manifest.json")).read_text())
    print("| prepare | MB/s of text | speed-up |\n|---|---:|---:|")
    print(f"| num_proc 1 | {one:.1f} | 1.00× |\n| num_proc 2 | {two:.1f} | {two / one:.2f}× |")
    print(f"\n2 CPU-bound processes on this machine right now: {ceiling:.2f}× one (the ceiling for the row above)")
    print(f"\n{manifest['documents']:,} documents, {manifest['tokens']:,} tokens, "
          f"{manifest['tokens'] * 2 / 1e6:.0f} MB of shards "
          f"({big.stat().st_size / manifest['tokens'] / 2:.1f}× smaller than the text)\n")

    cache = work / "cache-2"
    anchor = nanogpt_get_batch_tokens_per_sec(cache)
    print("| loader (one rank) | tokens/s | vs nanoGPT get_batch |\n|---|---:|---:|")
    print(f"| nanoGPT get_batch (anchor) | {anchor / 1e6:.1f} M | 1.00× |")
    for workers in (0, 1, 2):
        rate = loader_tokens_per_sec(module(big, cache, workers))
        print(f"| GPT2DataModule, {workers} workers | {rate / 1e6:.1f} M | {rate / anchor:.2f}× |")

    print("\n| resume at batch | first batch, 0 workers | first batch, 2 workers |\n|---:|---:|---:|")
    for position in (0, 10**4, 10**6):
        cells = [f"{1e3 * first_batch_after_resume(module(big, cache, w), position):.1f} ms" for w in (0, 2)]
        print(f"| {position:,} | " + " | ".join(cells) + " |")

    print("\n| validation pass (500k tokens, one rank) | seconds | batches |\n|---|---:|---:|")
    for name, file, c in ((f"{args.mb / 10:g} MB corpus", small, work / "cache-small"),
                          (f"{args.mb:g} MB corpus", big, cache)):
        seconds, n = validation_pass(module(file, c, 0, val_size=500_000))
        print(f"| {name} | {seconds:.3f} | {n} |")

    print("\n| reading 3000 batches | peak anonymous memory | peak RSS incl. mapped shards |\n|---|---:|---:|")
    for name, file, c in ((f"{args.mb / 10:g} MB corpus", small, work / "cache-small"),
                          (f"{args.mb:g} MB corpus", big, cache)):
        anon, rss = memory(file, c)
        print(f"| {name} | {anon:.0f} MB | {rss:.0f} MB |")


if __name__ == "__main__":
    main()
