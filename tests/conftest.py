"""Shared fixtures. Plain helpers (TINY, fit, checkpoint builders, logged_scalars) are in helpers.py.

Tiers: tests/unit (no fit, no subprocess: `python -m pytest tests/unit`), tests/integration (real fits, DDP/FSDP,
kills), tests/experiments (the analysis code). `-m gpu` selects the CUDA-only tests."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported anywhere: tests never reach the Hub
# prepared (tokenized) data goes to a fresh directory per test session, never the user's cache
os.environ["GPT2_LIGHTNING_DATA"] = tempfile.mkdtemp(prefix="gpt2-lightning-data-")
# a CPU's measured peak FLOP/s (MFU) is cached per test session too, never in the user's cache
os.environ["GPT2_LIGHTNING_PEAK_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="gpt2-lightning-peak-"), "peak.json")

import pytest  # noqa: E402
from helpers import SHAPES, fit, make_hf_model, save_layout, write_small_corpus  # noqa: E402


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: (layout, shape name) → (transformers model, directory holding its checkpoint)."""

    def build(layout="transformers", shape="tiny", seed=0):
        model = make_hf_model(*SHAPES[shape], seed=seed)
        directory = tmp_path / f"{shape}-{layout}-{seed}"
        directory.mkdir()
        return model, save_layout(model, directory, layout)

    return build


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny trained run, built once per test session: `fit` of TINY for 4 steps on the built-in corpus, its
    checkpoint at checkpoints/last.ckpt. Shared: a test that writes into the run directory copies it first."""
    root = tmp_path_factory.mktemp("tiny-run")
    fit(root, "--trainer.max_steps", "4")
    return root


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """The fit arguments of the resume tests' 12-document corpus (helpers.write_small_corpus), written once."""
    return write_small_corpus(tmp_path_factory.mktemp("small-corpus"))


@pytest.fixture(scope="session")
def straight_16(tmp_path_factory, small_corpus):
    """(run directory, fit arguments) of 16 uninterrupted steps on the small corpus, the schedule 16 steps long: what
    the exact-resume tests compare their interrupted runs with."""
    root = tmp_path_factory.mktemp("straight-16")
    data = [*small_corpus, "--model.lr_decay_steps", "16"]
    fit(root, *data, "--trainer.max_steps", "16")
    return root, data
