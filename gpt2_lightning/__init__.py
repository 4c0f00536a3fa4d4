"""gpt2-lightning: a hand-written GPT-2 that reproduces OpenAI's checkpoints exactly.

`GPT`, `GPTConfig`, `load` (any checkpoint → GPT) and `get_tokenizer` are loaded on first use, so importing a
light submodule (the tokenizer, the corpus readers in tokenizing worker processes) does not import torch.
Decoding: `gpt2_lightning.generate`.
"""

import importlib

_EXPORTS = {
    "GPT": "gpt2_lightning.model",
    "GPTConfig": "gpt2_lightning.config",
    "load": "gpt2_lightning.checkpoints",
    "get_tokenizer": "gpt2_lightning.tokenizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpt2_lightning' has no attribute {name!r}")
