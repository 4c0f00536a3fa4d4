"""Section 4.3's measurements (issue 23, item 3): per-position losses, and a shuffled-prefix control that reads zero
exactly where a model cannot see the replaced text."""

import numpy as np
import torch

from gpt2_lightning.analysis.held_out_text import per_position_loss, shuffled_prefix_gain
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT

T, VOCAB = 32, 50


def model(window):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope",
                         sliding_window=window)).eval()


def windows(n=6):
    ids = torch.randint(0, VOCAB, (n, T + 1), generator=torch.Generator().manual_seed(1))
    return ids[:, :-1], ids[:, 1:]


def test_per_position_losses_average_to_the_training_loss():
    m, (x, y) = model(None), windows()
    losses = per_position_loss(m, x, y)
    assert losses.shape == (6, T)
    with torch.no_grad():
        assert np.isclose(losses.mean(), m.loss(x, y).item(), atol=1e-5)


def test_the_control_reads_zero_beyond_a_models_reach_and_more_than_zero_within_it():
    """Window 3 over 2 layers reaches 4 tokens back: replacing text more than 4 (the least kept, T/8) before the
    scored tail cannot change a loss; full attention sees it."""
    x, y = windows()
    local = shuffled_prefix_gain(model(3), x, y, T)
    assert all(np.abs(gains).max() < 1e-5 for gains in map(np.array, local.values()))
    full = shuffled_prefix_gain(model(None), x, y, T)
    assert all(np.abs(gains).max() > 1e-4 for gains in map(np.array, full.values()))
