"""Training through the real `gpt2-lightning fit` path: logging, exact resume, bad input, atomic saves, data."""

import math
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from gpt2_lightning.generate import Sampling, generate
from gpt2_lightning.measure import logged_scalars as scalars
from gpt2_lightning.cli import main
from gpt2_lightning.corpus import builtin_documents
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT
from gpt2_lightning.checkpoints.lightning import load_trained_model
from gpt2_lightning.train.module import GPT2LightningModule, lr_factor

TINY = [
    "--model.config.n_layer", "2", "--model.config.n_head", "2", "--model.config.n_embd", "32",
    "--model.config.block_size", "32", "--model.warmup_steps", "4", "--model.learning_rate", "3e-3",
    "--data.batch_size", "4", "--trainer.val_check_interval", "8", "--trainer.check_val_every_n_epoch", "null",
    "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.peak_flops", "1e11", "--checkpoint.every_n_train_steps", "4", "--seed_everything", "7",
]


TINY_CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)  # the model TINY trains


def fit(root, *extra):
    main(["fit", *TINY, "--trainer.default_root_dir", str(root), *extra])


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
def test_other_lightning_commands_evaluate_the_checkpoint(tmp_path, capsys, command, metric):
    fit(tmp_path, "--trainer.max_steps", "2")
    capsys.readouterr()
    main([command, *TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_test_batches", "2",
          "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    out = capsys.readouterr().out
    value = float(re.search(rf"{re.escape(metric)}\s*│\s*([0-9.]+)", out).group(1))
    assert 0 < value < math.log(50257) + 1  # a 2-step model: near the uniform loss, finite


def test_predict_gives_each_sequence_its_next_token(tmp_path):
    fit(tmp_path, "--trainer.max_steps", "2")
    main(["predict", *TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_predict_batches", "2",
          "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    module = GPT2LightningModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    inputs = torch.randint(0, 50257, (3, 31))  # room for the one new token within block_size
    greedy = generate(module.model.eval(), inputs, 1, Sampling(temperature=0))[:, -1]  # the decoding path, through the cache
    with torch.no_grad():
        assert torch.equal(module.predict_step((inputs, inputs), 0), greedy)


@pytest.fixture
def small_corpus(tmp_path):
    """A corpus of 9 training batches of 4 × 33 tokens per epoch, so 16 steps cross an epoch boundary."""
    for i, doc in enumerate(builtin_documents()[:12]):
        path = tmp_path / "corpus" / f"{i:02d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(doc[:600])
    return ["--data.source", "files", "--data.paths", str(tmp_path / "corpus"), "--data.val_size", "0.15"]


def test_resume_twice_across_an_epoch_boundary_is_exact(tmp_path, small_corpus):
    data = [*small_corpus, "--model.config.dropout", "0.1", "--model.lr_decay_steps", "16"]  # same schedule in every leg
    fit(tmp_path / "straight", *data, "--trainer.max_steps", "16")
    fit(tmp_path / "resumed", *data, "--trainer.max_steps", "8")
    fit(tmp_path / "resumed", *data, "--trainer.max_steps", "12", "--ckpt_path", "last")
    fit(tmp_path / "resumed", *data, "--trainer.max_steps", "16", "--ckpt_path", "last")
    straight, resumed = scalars(tmp_path / "straight", "train/loss"), scalars(tmp_path / "resumed", "train/loss")
    assert sorted(straight) == sorted(resumed) == list(range(16))
    for step in straight:
        assert resumed[step] == straight[step], step  # bit for bit


def test_print_config_shows_every_model_field(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(Path(__file__).parents[1] / "configs" / "gqa.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "n_kv_head: 2" in out and "pos_encoding: learned" in out and "sliding_window: null" in out


# What each variant config claims to change. A claim must take effect on every base it composes with: n_kv_head equal
# to n_head is plain multi-head attention, and a window as long as the block is full attention.
VARIANT_CLAIMS = {"rope.yaml": {"rope"}, "gqa.yaml": {"gqa"}, "swa.yaml": {"window"}, "all.yaml": {"rope", "gqa", "window"}}
BASE_CONFIGS = ("quickstart.yaml", "gpt2.yaml")
TRAINING_MODE_CONFIGS = ("ddp.yaml", "fsdp.yaml")  # strategies, not architectures


def test_every_config_is_a_base_a_training_mode_or_a_variant_with_a_claim():
    names = {p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")}
    assert names == set(VARIANT_CLAIMS) | set(BASE_CONFIGS) | set(TRAINING_MODE_CONFIGS)


@pytest.mark.parametrize("base", BASE_CONFIGS)
@pytest.mark.parametrize("variant", sorted(VARIANT_CLAIMS))
def test_variant_configs_change_the_architecture_they_claim(variant, base, capsys):
    import yaml

    args = [a for c in (base, variant) for a in ("--config", str(Path(__file__).parents[1] / "configs" / c))]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)["model"]["config"]
    changed = set()
    if config["pos_encoding"] == "rope":
        changed.add("rope")
    if config["n_kv_head"] is not None and config["n_kv_head"] < config["n_head"]:
        assert config["n_head"] % config["n_kv_head"] == 0
        changed.add("gqa")
    if config["sliding_window"] is not None and config["sliding_window"] < config["block_size"]:
        changed.add("window")
    assert changed == VARIANT_CLAIMS[variant]


def test_unknown_config_key_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit(tmp_path, "--model.config.n_layers", "3")
    assert "n_layers" in capsys.readouterr().err


def test_resume_with_another_model_config_is_refused(tmp_path):
    fit(tmp_path, "--trainer.max_steps", "4")
    with pytest.raises(SystemExit, match="different model config.*n_embd: checkpoint 32, config 64"):
        fit(tmp_path, "--trainer.max_steps", "8", "--model.config.n_embd", "64", "--ckpt_path", "last")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # the error path keeps the checkpoint


def test_a_save_killed_midway_leaves_last_ckpt_intact(tmp_path, monkeypatch):
    fit(tmp_path, "--trainer.max_steps", "4")
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def dies_midway(checkpoint, filepath):  # the process dies after writing the first bytes of the file
        with open(filepath, "wb") as out:
            out.write(b"partial")
        raise OSError("killed mid-save")  # stands in for the process dying here

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", dies_midway)
    with pytest.raises(BaseException, match="killed mid-save"):
        fit(tmp_path, "--trainer.max_steps", "8", "--ckpt_path", "last")
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=False)["global_step"] == 4


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


def test_nan_loss_stops_with_the_fix():
    from gpt2_lightning.config import GPTConfig

    module = GPT2LightningModule(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        module.model.transformer.wte.weight.fill_(float("nan"))
    batch = (torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="train/loss is nan.*Lower model.learning_rate"):
        module.training_step(batch, 0)


def test_checkpoint_of_a_compiled_run_loads_into_eager_models(tmp_path):
    fit(tmp_path, "--trainer.max_steps", "2")
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["state_dict"] = {k.replace("model.", "model._orig_mod.", 1): v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "compiled.ckpt")
    eager, compiled = load_trained_model(last), load_trained_model(tmp_path / "compiled.ckpt")
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        assert torch.equal(a, b), name
    # and Lightning resumes from it
    fit(tmp_path, "--trainer.max_steps", "3", "--ckpt_path", str(tmp_path / "compiled.ckpt"))


def test_fine_tune_from_pretrained_converting_to_gqa(tmp_path):
    from conftest import make_hf_model, save_layout

    directory = tmp_path / "pretrained"
    directory.mkdir()
    save_layout(make_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257), directory, "hub")
    fit(tmp_path / "run", "--trainer.max_steps", "2", "--model.init_from", str(directory),
        "--model.config.n_kv_head", "1")
    model = load_trained_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.config.n_kv_head == 1 and model.config.block_size == 64
    with pytest.raises(SystemExit, match="block_size=128 is longer than the 64 learned positions"):
        fit(tmp_path / "run2", "--trainer.max_steps", "2", "--model.init_from", str(directory),
            "--model.config.block_size", "128")


def test_lr_schedule_warms_up_then_decays_to_the_minimum():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)  # half way through the cosine
    assert lr_factor(100, 10, 100, 0.1) == lr_factor(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    from gpt2_lightning.config import GPTConfig

    module = GPT2LightningModule(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))

    class FakeTrainer:
        max_steps = 10

    module._trainer = FakeTrainer()
    groups = module.configure_optimizers()["optimizer"].param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in module.model.named_parameters() if id(p) in decayed}
    assert names == {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                     "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"}


def summary_total_flops(root, capsys) -> str:
    """The total FLOPs the model summary of a one-step fit prints ("104 M")."""
    fit(root, "--trainer.max_steps", "1", "--trainer.enable_model_summary", "true")
    return re.search(r"Total FLOPs: (\S+(?: [KMBT]\b)?)", capsys.readouterr().out)[1]


def test_a_measured_model_summary_agrees_with_the_formula(tmp_path, capsys):
    """Where Lightning does measure (one device), its count and the formula's stand within 2% of each other."""
    counted = GPT(TINY_CONFIG).flops_per_token(32) * 32
    value, unit = summary_total_flops(tmp_path, capsys).split()  # Lightning prints 3 significant digits: "104 M"
    assert float(value) * {"K": 1e3, "M": 1e6, "B": 1e9}[unit] == pytest.approx(counted, rel=0.02)
