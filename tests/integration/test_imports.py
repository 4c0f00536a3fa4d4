"""What importing a module loads, each checked in a fresh interpreter: the core loads only the core, and the modules
tokenizing worker processes import load neither torch nor Lightning."""

import subprocess
import sys

CORE = {"config", "model", "attention", "rope", "lm_loss"}


def test_importing_the_model_loads_only_the_core():
    code = ("import sys, gpt2_lightning.model; print(sorted(m for m in sys.modules if m.startswith('gpt2_lightning.')"
            " or m in ('safetensors', 'lightning', 'huggingface_hub', 'tiktoken')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == sorted(f"gpt2_lightning.{m}" for m in CORE)


def test_light_modules_import_neither_torch_nor_lightning():
    """Tokenizing worker processes import these: they must not pay for torch."""
    code = ("import sys, gpt2_lightning.tokenizer, gpt2_lightning.corpus, gpt2_lightning.errors, gpt2_lightning.hub; "
            "print(sorted({'torch', 'lightning'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
