"""int8 weight-only quantization without a trained model: its kernel, and an unknown kind refused. (What it changes
in a trained model's predictions, and the CLI flag: tests/integration/test_quantized_decoding.py.)"""

import pytest
import torch

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import UsageError
from gpt2_lightning.model import GPT
from gpt2_lightning.quantize import Int8Linear, quantize_weights


@pytest.mark.parametrize("width", [48, 40], ids=["int8-kernel", "other-widths"])
def test_int8_linear_equals_the_dequantized_product(width):
    torch.manual_seed(0)
    layer = Int8Linear(torch.randint(-127, 128, (96, width), dtype=torch.int8), torch.rand(96).bfloat16() / 100,
                       torch.randn(96).bfloat16())
    x = torch.randn(3, 5, width)  # 15 rows of a width not a multiple of 16 crashed the CPU kernel
    expected = x @ (layer.qdata.float() * layer.scale.float()[:, None]).t() + layer.bias.float()
    torch.testing.assert_close(layer(x).float(), expected, rtol=2e-2, atol=2e-2)  # bf16 activations and output


def test_unknown_quantization_is_refused():
    with pytest.raises(UsageError, match="unknown quantization 'int4'; choose one of: int8"):
        quantize_weights(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)), "int4")
