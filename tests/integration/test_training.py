"""Training through the real `gpt2-lightning fit` path: logging, the other Lightning commands, bad input, compiled
checkpoints, fine-tuning, the model summary. (Exact resume and saves: test_reliability.py.)"""

import math
import re

import pytest
import torch
import yaml
from helpers import TINY, TINY_CONFIG, fit, make_hf_model, save_layout, save_pretrained_for_tiny, scalar_tags
from helpers import logged_scalars as scalars

from gpt2_lightning.checkpoints import load
from gpt2_lightning.checkpoints.lightning import load_trained_model
from gpt2_lightning.cli import main
from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.model import GPT
from gpt2_lightning.train.module import GPT2LightningModule


def test_fit_logs_every_metric_and_the_loss_falls(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_steps", "24")
    # TensorBoard opens the first two groups (tag prefixes, sorted): the run's own cards are all there is, no
    # placeholder hp_metric, no epoch, no throughput counters beside tokens/s and MFU (issue 20, item 6)
    assert scalar_tags(tmp_path) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/mfu",
                                     "val/loss", "val/ppl"}
    # the throughput window (10 batches) fills at step 10: tokens/s and MFU from then on
    tokens, mfu = scalars(tmp_path, "train/tokens_per_sec"), scalars(tmp_path, "train/mfu")
    assert min(tokens) == min(mfu) <= 10 and all(v > 0 for v in tokens.values())
    flops_per_token = 3 * GPT(TINY_CONFIG).flops_per_token(32)
    for step, rate in tokens.items():  # MFU = tokens/s × training FLOPs per token / the stated peak
        assert mfu[step] == pytest.approx(rate * flops_per_token / 1e11, rel=1e-4)
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
    stage = metric.split("/")[0]
    total = int(re.search(rf"{command}: read 2 of the (\d+) batches of the held-out split \(trainer.limit_{stage}_"
                          rf"batches\); --trainer.limit_{stage}_batches 1.0 reads all of it", out)[1])
    assert total > 2  # the builtin corpus's last 5% of tokens, in batches of 4 × 33 tokens


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


def test_fine_tune_records_the_architecture_that_trained_and_says_what_it_loaded(tmp_path, capsys):
    """init_from a 1-layer, 48-wide, 4-head, 64-position model (not TINY's 2 × 32 × 2 heads), converted to 2 K/V heads
    and trained at TINY's 32 positions: the one line, config.yaml, hparams.yaml and the checkpoint all say so."""
    directory = save_layout(make_hf_model(n_layer=1, n_head=4, n_embd=48, n_positions=64, vocab_size=50257),
                            tmp_path / "pretrained", "transformers")
    fit(tmp_path / "run", "--trainer.max_steps", "2", "--model.init_from", str(directory),
        "--model.config.n_kv_head", "2")
    trained = {"n_layer": 1, "n_head": 4, "n_embd": 48, "n_kv_head": 2, "block_size": 32}
    assert f"init_from {directory}: 1 layers × 48 wide, 4 heads, learned positions, block_size 64," in \
        capsys.readouterr().out
    model = load_trained_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert {k: getattr(model.config, k) for k in trained} == trained
    assert model.transformer.wpe.weight.shape == (32, 48)  # the learned positions cropped to the training length
    version = tmp_path / "run" / "lightning_logs" / "version_0"
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())["config"]
    config = yaml.safe_load((version / "config.yaml").read_text())["model"]["config"]
    assert {k: hparams[k] for k in trained} == trained == {k: config[k] for k in trained}


def test_fine_tune_from_pretrained_converting_to_gqa(tmp_path):
    directory = save_pretrained_for_tiny(tmp_path / "pretrained")
    fit(tmp_path / "run", "--trainer.max_steps", "2", "--model.init_from", str(directory),
        "--model.config.n_kv_head", "1")
    model = load_trained_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.config.n_kv_head == 1 and model.config.block_size == 32
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


def test_a_hybrid_trains_resumes_decodes_and_converts(tmp_path, capsys):
    """Per-layer windows through every command: fit and an exact resume, generate from the .ckpt, convert to the own
    format (transformers' refuses windows) and back."""
    hybrid = ["--model.config.pos_encoding", "rope", "--model.config.n_kv_head", "1",
              "--model.config.sliding_window", "[4, null]", "--data.source", "builtin"]
    fit(tmp_path / "straight", *hybrid, "--trainer.max_steps", "6")
    fit(tmp_path / "resumed", *hybrid, "--trainer.max_steps", "3")
    fit(tmp_path / "resumed", *hybrid, "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert scalars(tmp_path / "resumed", "train/loss") == scalars(tmp_path / "straight", "train/loss")
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    model = load_trained_model(last)
    assert model.config.layer_windows == [4, None] and [b.attn.window for b in model.transformer.h] == [4, None]
    main(["convert", "--checkpoint", str(last), "--out", str(tmp_path / "converted")])
    assert "in this package's format" in capsys.readouterr().out
    again = load(tmp_path / "converted")
    ids = torch.randint(0, 50257, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=0, rtol=0)
    main(["generate", "--checkpoint", str(last), "--max_new_tokens", "40", "--prompt", "The", "--device", "cpu"])
    assert re.search(r"\[1 sample\(s\), \d+ new tokens", capsys.readouterr().err)  # (it may stop at <|endoftext|>)
