"""A schedule the run cannot follow is said, not silently run (issue 19, item 7)."""

import lightning as L
import pytest

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.train.module import GPT2LightningModule

CONFIG = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)


def optimizers_for(max_steps: int, warmup_steps: int) -> None:
    module = GPT2LightningModule(CONFIG, warmup_steps=warmup_steps)
    module.trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False)
    module.configure_optimizers()


def test_a_warmup_as_long_as_the_run_is_warned_about():
    with pytest.warns(UserWarning, match=r"model\.warmup_steps=100 is not shorter than the schedule's 20 steps"):
        optimizers_for(max_steps=20, warmup_steps=100)


def test_a_warmup_inside_the_run_is_not(recwarn):
    optimizers_for(max_steps=20, warmup_steps=5)
    assert not [w for w in recwarn if "warmup_steps" in str(w.message)]
