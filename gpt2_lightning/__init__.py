"""gpt2-lightning: a hand-written GPT-2 that reproduces OpenAI's checkpoints exactly."""

from gpt2_lightning.model import GPT, GPTConfig
from gpt2_lightning.tokenizer import get_tokenizer

__all__ = ["GPT", "GPTConfig", "get_tokenizer"]
