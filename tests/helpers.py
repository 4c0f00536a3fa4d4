"""Plain helpers the tests share (fixtures live in conftest.py). Tests import this module as `helpers`: pytest puts
tests/ on sys.path when it loads tests/conftest.py; benchmarks/gpu_check.py puts it there itself."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.corpus import builtin_documents

CONFIGS = Path(__file__).parents[1] / "configs"

# ---- a tiny `gpt2-lightning fit` -------------------------------------------------------------------------------

TINY = [
    "--model.config.n_layer", "2", "--model.config.n_head", "2", "--model.config.n_embd", "32",
    "--model.config.block_size", "32", "--model.warmup_steps", "4", "--model.learning_rate", "3e-3",
    "--data.batch_size", "4", "--trainer.val_check_interval", "8", "--trainer.check_val_every_n_epoch", "null",
    "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.peak_flops", "1e11", "--checkpoint.every_n_train_steps", "4", "--seed_everything", "7",
    "--data.source", "builtin",  # the tests' corpus (the quickstart's default is the packaged moby-dick)
]

TINY_CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)  # the model TINY trains


def fit(root, *extra):
    """`gpt2-lightning fit` of the TINY model in this process, its run directory `root`."""
    from gpt2_lightning.cli import main  # (benchmarks/gpu_check.py imports this module for logged_scalars alone)

    main(["fit", *TINY, "--trainer.default_root_dir", str(root), *extra])


def logged_scalars(root: str | os.PathLike, tag: str, versions: str = "lightning_logs/version_*") -> dict[int, float]:
    """{step: value} of a TensorBoard scalar a run logged, over every version under root (later versions win);
    `versions=""` reads the one version directory `root`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(glob.glob(os.path.join(root, versions))):
        events = EventAccumulator(path)
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update({e.step: e.value for e in events.Scalars(tag)})
    return values


def scalar_tags(root: str | os.PathLike, versions: str = "lightning_logs/version_*") -> set[str]:
    """Every TensorBoard scalar tag a run logged, over every version under root."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in glob.glob(os.path.join(root, versions)):
        events = EventAccumulator(path)
        events.Reload()
        tags.update(events.Tags()["scalars"])
    return tags


# ---- corpora ---------------------------------------------------------------------------------------------------


def write_docs(directory: Path, docs: list[str], name: str = "corpus.jsonl") -> Path:
    """`docs` as a JSONL file (one {"text": ...} per line) in `directory`; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def datamodule(tmp_path: Path, path: Path, **kwargs):
    """A GPT2DataModule on the files at `path`, prepared into tmp_path/cache and set up for fit (block 32, batch 4)."""
    from gpt2_lightning.data import GPT2DataModule

    kwargs = {"block_size": 32, "batch_size": 4, "val_size": 0.1, "cache_dir": str(tmp_path / "cache"), **kwargs}
    dm = GPT2DataModule(source="files", paths=[str(path)], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def write_small_corpus(directory: Path) -> list[str]:
    """The resume tests' corpus: the first 12 built-in documents cut to 600 characters, 9 training batches of
    4 × 33 tokens per epoch (so 16 steps cross an epoch boundary). Returns the fit arguments that train on it, with
    dropout on (a resume must restore the random state too)."""
    write_docs(directory, [d[:600] for d in builtin_documents()[:12]])
    return ["--data.source", "files", "--data.paths", str(directory), "--data.val_size", "0.15",
            "--model.config.dropout", "0.1"]


# ---- GPT-2 checkpoints built locally by transformers, never fetched from the network ----------------------------

# (n_layer, n_head, n_embd, n_positions, vocab_size): odd sizes so a transposed or swapped weight cannot fit.
SHAPES = {
    "tiny": (2, 4, 64, 48, 211),
    "deep-narrow": (5, 2, 24, 40, 97),
    "wide-heads": (1, 6, 96, 64, 300),
}


def greedy_by_recompute(model, input_ids, max_new_tokens):
    """Greedy decoding the slow, obviously-correct way: the whole forward again for every token."""
    ids = input_ids
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def make_hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=48, vocab_size=211, seed=0):
    """A transformers GPT2LMHeadModel with random weights, LayerNorms and biases moved off their init values."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
        bos_token_id=0, eos_token_id=0, initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def save_layout(model, directory, layout):
    """Write `model` as transformers or the Hub would: every key layout `checkpoints.load` must read.

    - "transformers": `save_pretrained` (transformer.* keys, safetensors, lm_head dropped as tied);
    - "hub": GPT2Model keys without the prefix plus the attn.bias / attn.masked_bias buffers, safetensors;
    - "bin": pytorch_model.bin with transformer.* keys and an explicit copy of lm_head.weight.
    """
    model.config.save_pretrained(directory)
    if layout == "transformers":
        model.save_pretrained(directory)
    elif layout == "hub":
        n = model.config.n_positions
        tensors = {k.removeprefix("transformer."): v.contiguous() for k, v in model.state_dict().items()
                   if k != "lm_head.weight"}
        for i in range(model.config.n_layer):
            tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        save_file(tensors, os.path.join(directory, "model.safetensors"))
    elif layout == "bin":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    else:
        raise ValueError(layout)
    return directory


def save_pretrained_for_tiny(directory: Path) -> Path:
    """A Hub-layout GPT-2 checkpoint TINY can start from (--model.init_from): 2 layers, 2 heads, 32 wide, as TINY,
    with 64 learned positions and GPT-2's vocabulary."""
    directory.mkdir(parents=True)
    model = make_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    return Path(save_layout(model, directory, "hub"))
