"""The core: configuration checks, parameter counts, initialisation, attention against its reference.

(Causality and the block_size refusal, for every variant: test_variants.py.)"""

import math

import pytest
import torch

from gpt2_lightning.attention import attention, reference_attention
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT


def tiny_config(**overrides):
    return GPTConfig(**{"vocab_size": 97, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32, **overrides})


@pytest.mark.parametrize(
    "name, expected",
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_preset_parameter_counts_equal_openai(name, expected):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name(name))
    assert model.num_params() == expected


def test_from_name_accepts_hub_ids_and_overrides():
    config = GPTConfig.from_name("openai-community/gpt2-medium", dropout=0.1)
    assert (config.n_layer, config.n_head, config.n_embd, config.dropout) == (24, 16, 1024, 0.1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_layer": 0}, "GPTConfig.n_layer must be a positive integer"),
        ({"vocab_size": -5}, "GPTConfig.vocab_size must be a positive integer"),
        ({"block_size": 2.5}, "GPTConfig.block_size must be a positive integer"),
        ({"n_embd": 30, "n_head": 4}, "GPTConfig.n_embd (30) must be divisible by n_head (4)"),
        ({"dropout": 1.0}, "GPTConfig.dropout must be in [0, 1)"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(overrides, message):
    with pytest.raises(ValueError) as err:
        tiny_config(**overrides)
    assert message in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown GPT-2 preset 'gpt3'.*gpt2-medium"):
        GPTConfig.from_name("gpt3")


def test_lm_head_is_tied_and_init_follows_gpt2():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=5000, block_size=64)
    model = GPT(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * config.n_layer)
    assert model.transformer.h[3].attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.transformer.h[3].mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.all(model.transformer.h[0].mlp.c_fc.bias == 0)


def test_no_bias_variant_has_no_biases():
    model = GPT(tiny_config(bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert model(torch.randint(0, 97, (1, 5))).shape == (1, 5, 97)


@pytest.mark.parametrize("T, S", [(16, 16), (1, 9), (5, 12), (7, 7)])
def test_sdpa_attention_equals_explicit_reference(T, S):
    torch.manual_seed(T * 100 + S)
    q = torch.randn(2, 3, T, 8)
    k, v = torch.randn(2, 3, S, 8), torch.randn(2, 3, S, 8)
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v), atol=1e-6, rtol=1e-5)


def test_model_with_reference_attention_gives_same_logits(monkeypatch):
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    x = torch.randint(0, 97, (3, 20))
    fast = model(x)
    monkeypatch.setattr(
        "gpt2_lightning.model.attention", lambda q, k, v, window, dropout_p=0.0: reference_attention(q, k, v, window)
    )
    torch.testing.assert_close(model(x), fast, atol=1e-5, rtol=1e-5)


def test_input_must_be_batch_by_time():
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        GPT(tiny_config())(torch.zeros(5, dtype=torch.long))
