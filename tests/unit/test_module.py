"""The LightningModule alone (gpt2_lightning/train/module.py): the learning-rate schedule, weight decay, a NaN loss."""

import pytest
import torch

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.train.module import GPT2LightningModule, lr_factor


def test_lr_schedule_warms_up_then_decays_to_the_minimum():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)  # half way through the cosine
    assert lr_factor(100, 10, 100, 0.1) == lr_factor(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    module = GPT2LightningModule(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))

    class FakeTrainer:
        max_steps = 10

    module._trainer = FakeTrainer()
    groups = module.configure_optimizers()["optimizer"].param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in module.model.named_parameters() if id(p) in decayed}
    assert names == {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                     "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"}


def test_nan_loss_stops_with_the_fix():
    module = GPT2LightningModule(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        module.model.transformer.wte.weight.fill_(float("nan"))
    batch = (torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="train/loss is nan.*Lower model.learning_rate"):
        module.training_step(batch, 0)
