"""int8 weight-only quantization of a briefly trained model: what it changes in its predictions, and the CLI flag.
(The kernel alone: tests/unit/test_quantize.py.)"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from gpt2_lightning.analysis.brief_training import builtin_token_split, heldout_quality, train_briefly
from gpt2_lightning.checkpoints import save
from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.quantize import Int8Linear, quantize_weights
from gpt2_lightning.tokenizer import get_tokenizer

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)  # GPT-2's vocabulary: the packaged tokenizer's


@pytest.fixture(scope="module")
def trained():
    train, heldout = builtin_token_split()
    return train_briefly(CONFIG, train, steps=60), heldout


def test_int8_keeps_heldout_loss_within_1_percent_and_greedy_choices(trained):
    model, heldout = trained
    loss, greedy = heldout_quality(model, heldout)
    assert loss < 7.0  # trained: far below the uniform 10.8, so its logits are peaked and the check means something
    quantized = quantize_weights(copy.deepcopy(model), "int8")
    q_loss, q_greedy = heldout_quality(quantized, heldout)
    assert abs(q_loss - loss) / loss < 0.01
    assert (q_greedy == greedy).float().mean() > 0.95


def test_every_linear_layer_is_int8_and_the_embedding_untied(trained):
    model, _ = trained
    quantized = quantize_weights(copy.deepcopy(model), "int8")
    linears = [m for m in quantized.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 4 * CONFIG.n_layer + 1  # c_attn, c_proj, c_fc, mlp.c_proj per block, and the LM head
    assert all(m.qdata.dtype == torch.int8 for m in linears)
    assert quantized.transformer.wte.weight.dtype == torch.bfloat16  # its own rows, not the head's int8 ones
    embedding = quantized.transformer.wte.weight.float()
    torch.testing.assert_close(embedding, model.transformer.wte.weight, atol=1e-2, rtol=1e-2)


def test_cli_generate_quantize_int8(trained, tmp_path, capsys):
    model, _ = trained
    save(model, tmp_path / "model")
    main(["generate", "--checkpoint", str(tmp_path / "model"), "--prompt", "The", "--max-new-tokens", "8",
          "--temperature", "0", "--device", "cpu", "--quantize", "int8"])
    captured = capsys.readouterr()
    assert captured.out.startswith("The") and len(captured.out) > len("The\n")
    assert re.search(r"\(\d[\d,]+ parameters, int8 weights\) on cpu", captured.err)


def test_cli_generate_bfloat16_decodes_what_the_bf16_model_does(trained, tmp_path, capsys):
    model, _ = trained
    save(model, tmp_path / "model")
    args = ["generate", "--checkpoint", str(tmp_path / "model"), "--prompt", "The", "--max-new-tokens", "8",
            "--temperature", "0", "--device", "cpu"]
    main([*args, "--dtype", "bfloat16"])
    captured = capsys.readouterr()
    enc = get_tokenizer()
    ids = torch.tensor([enc.encode("The")])
    expected = generate(copy.deepcopy(model).to(torch.bfloat16), ids, 8,
                        Sampling(temperature=0.0, eos_token_id=enc.eot_token))
    continuation = [t for t in expected[0, 1:].tolist() if t != enc.eot_token]
    assert captured.out == "The" + enc.decode(continuation) + "\n"
    assert "parameters, bfloat16) on cpu" in captured.err
    with pytest.raises(SystemExit) as err:
        main([*args, "--dtype", "float32", "--quantize", "int8"])
    assert "--quantize int8 runs with bfloat16 activations; drop --dtype float32" in str(err.value)
