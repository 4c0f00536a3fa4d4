"""Sizes read from files never size memory before they are checked (issue 19, item 8): each bomb is refused with a
one-line error within seconds, in a process limited to 3 GiB of address space."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

SMALL = {"vocab_size": 64, "n_embd": 16, "n_head": 2, "block_size": 8}


def refused_within_limits(code: str) -> str:
    """Run `code` (which must raise) in a fresh interpreter under a 3 GiB address-space limit; its error line."""
    program = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("sizes, message", [
    ({"n_layer": 2_000_000}, r"asks for n_layer=2,000,000 \(at most 512\), beyond any GPT-2-family model"),
    ({"n_layer": 48, "n_embd": 16384, "n_head": 16, "vocab_size": 50257, "block_size": 1024},
     r"does not fit the model its config describes \(n_layer=48, n_embd=16384"),
])
def test_a_config_json_that_disagrees_with_its_weights_is_refused_before_allocating(tmp_path, sizes, message):
    save_file({"transformer.wte.weight": torch.zeros(64, 16)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2-lightning", "n_layer": 1, **SMALL, **sizes}))
    line = refused_within_limits(f"from gpt2_lightning.checkpoints import load; load({str(tmp_path)!r})")
    assert line.startswith("gpt2_lightning.errors.CheckpointError") and re.search(message, line), line


def test_a_training_checkpoint_whose_hyper_parameters_say_three_million_layers_is_refused(tmp_path):
    path = tmp_path / "bomb.ckpt"
    torch.save({"hyper_parameters": {"config": {**SMALL, "n_layer": 3_000_000}}, "state_dict": {}}, path)
    line = refused_within_limits(f"from gpt2_lightning.checkpoints import load; load({str(path)!r})")
    assert line.startswith("gpt2_lightning.errors.CheckpointError") and "n_layer=3,000,000 (at most 512)" in line


def test_a_kv_cache_for_a_trillion_tokens_is_refused_before_allocating():
    line = refused_within_limits("""
        import torch
        from gpt2_lightning.config import GPTConfig
        from gpt2_lightning.generate import generate
        from gpt2_lightning.model import GPT
        model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope"))
        generate(model.eval(), torch.zeros(1, 3, dtype=torch.long), 10**12)
    """)
    assert line.startswith("gpt2_lightning.errors.UsageError: the KV cache for 1 × 1,000,000,000,003 positions")
