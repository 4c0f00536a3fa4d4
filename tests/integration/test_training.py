"""Training through the real `gpt2-lightning fit` path: logging, the other Lightning commands, bad input, compiled
checkpoints, fine-tuning, the model summary. (Exact resume and saves: test_reliability.py.)"""

import math
import re

import pytest
import torch
from helpers import TINY, TINY_CONFIG, fit, save_pretrained_for_tiny
from helpers import logged_scalars as scalars

from gpt2_lightning.checkpoints.lightning import load_trained_model
from gpt2_lightning.cli import main
from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.model import GPT
from gpt2_lightning.train.module import GPT2LightningModule


def test_fit_logs_every_metric_and_the_loss_falls(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_steps", "24")
    for tag in ("train/loss", "val/loss", "val/ppl", "train/lr", "train/grad_norm", "train/device/items_per_sec",
                "train/device/mfu"):
        assert scalars(tmp_path, tag), f"{tag} was not logged"
    # the throughput monitor's window (10 batches) fills at step 10: tokens/s and MFU from then on
    tokens, mfu = scalars(tmp_path, "train/device/items_per_sec"), scalars(tmp_path, "train/device/mfu")
    assert min(tokens) == min(mfu) <= 10 and all(v > 0 for v in tokens.values())
    flops_per_token = 3 * GPT(TINY_CONFIG).flops_per_token(32)
    for step, rate in tokens.items():  # MFU = tokens/s × training FLOPs per token / the stated peak
        assert mfu[step] == pytest.approx(rate * flops_per_token / 1e11, rel=1e-4)
    assert scalars(tmp_path, "system/peak_flops") == {0: pytest.approx(1e11, rel=1e-6)}  # float32 in TensorBoard
    assert "MFU is measured against 0.1 TFLOP/s per device (model.peak_flops" in capsys.readouterr().out
    val_loss, val_ppl = scalars(tmp_path, "val/loss"), scalars(tmp_path, "val/ppl")
    assert sorted(val_loss) == sorted(val_ppl) and len(val_loss) == 3
    for step in val_loss:  # the perplexity of the mean validation loss
        assert val_ppl[step] == pytest.approx(math.exp(val_loss[step]), rel=1e-5)
    assert all(0 < v < 100 for v in scalars(tmp_path, "train/grad_norm").values())
    loss = scalars(tmp_path, "train/loss")
    assert len(loss) == 24
    assert sum(list(loss.values())[-4:]) < sum(list(loss.values())[:4])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    model = load_trained_model(tmp_path / "checkpoints" / "last.ckpt")  # as generate --checkpoint reads a .ckpt
    assert model.config.n_layer == 2


@pytest.mark.parametrize("command, metric", [("validate", "val/loss"), ("test", "test/loss")])
def test_other_lightning_commands_evaluate_the_checkpoint(tiny_run, tmp_path, capsys, command, metric):
    capsys.readouterr()
    main([command, *TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_test_batches", "2",
          "--ckpt_path", str(tiny_run / "checkpoints" / "last.ckpt")])
    out = capsys.readouterr().out
    value = float(re.search(rf"{re.escape(metric)}\s*│\s*([0-9.]+)", out).group(1))
    assert 0 < value < math.log(50257) + 1  # a 4-step model: near the uniform loss, finite


def test_predict_gives_each_sequence_its_next_token(tiny_run, tmp_path):
    checkpoint = tiny_run / "checkpoints" / "last.ckpt"
    main(["predict", *TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_predict_batches", "2",
          "--ckpt_path", str(checkpoint)])
    module = GPT2LightningModule.load_from_checkpoint(checkpoint, weights_only=True)
    inputs = torch.randint(0, 50257, (3, 31))  # room for the one new token within block_size
    greedy = generate(module.model.eval(), inputs, 1, Sampling(temperature=0))[:, -1]  # the decoding path: the cache
    with torch.no_grad():
        assert torch.equal(module.predict_step((inputs, inputs), 0), greedy)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trainer.strategy", "dpp"], "invalid strategy name: `strategy='dpp'`"),
        (["--ckpt_path", "/nonexistent/run.ckpt"], "Checkpoint file not found.*Pass an existing checkpoint"),
        (["--data.source", "files", "--data.paths", "/nonexistent/*.txt"], "no files match"),
        (["--model.config.n_kv_head", "3"], r"n_kv_head \(3\) must divide n_head \(2\)"),
        (["--trainer.accelerator", "cuda", "--trainer.devices", "64"], "not available|only has"),
    ],
)
def test_bad_input_ends_in_one_clear_line(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        fit(tmp_path, "--trainer.max_steps", "2", *extra)


def test_checkpoint_of_a_compiled_run_loads_into_eager_models(tiny_run, tmp_path):
    last = tiny_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["state_dict"] = {k.replace("model.", "model._orig_mod.", 1): v
                                for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "compiled.ckpt")
    eager, compiled = load_trained_model(last), load_trained_model(tmp_path / "compiled.ckpt")
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        assert torch.equal(a, b), name
    # and Lightning resumes from it
    fit(tmp_path, "--trainer.max_steps", "5", "--ckpt_path", str(tmp_path / "compiled.ckpt"))  # (saved at step 4)


def test_fine_tune_from_pretrained_converting_to_gqa(tmp_path):
    directory = save_pretrained_for_tiny(tmp_path / "pretrained")
    fit(tmp_path / "run", "--trainer.max_steps", "2", "--model.init_from", str(directory),
        "--model.config.n_kv_head", "1")
    model = load_trained_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.config.n_kv_head == 1 and model.config.block_size == 64
    with pytest.raises(SystemExit, match="block_size=128 is longer than the 64 learned positions"):
        fit(tmp_path / "run2", "--trainer.max_steps", "2", "--model.init_from", str(directory),
            "--model.config.block_size", "128")


def summary_total_flops(root, capsys) -> str:
    """The total FLOPs the model summary of a one-step fit prints ("104 M")."""
    fit(root, "--trainer.max_steps", "1", "--trainer.enable_model_summary", "true")
    return re.search(r"Total FLOPs: (\S+(?: [KMBT]\b)?)", capsys.readouterr().out)[1]


def test_a_measured_model_summary_agrees_with_the_formula(tmp_path, capsys):
    """Where Lightning does measure (one device), its count and the formula's stand within 2% of each other."""
    counted = GPT(TINY_CONFIG).flops_per_token(32) * 32
    value, unit = summary_total_flops(tmp_path, capsys).split()  # Lightning prints 3 significant digits: "104 M"
    assert float(value) * {"K": 1e3, "M": 1e6, "B": 1e9}[unit] == pytest.approx(counted, rel=0.02)
