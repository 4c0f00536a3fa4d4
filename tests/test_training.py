"""Training through the real `gpt2-lightning fit` path: logging, exact resume, bad input, atomic saves, data."""

from pathlib import Path

import pytest
import torch

from gpt2_lightning.analysis import scalars
from gpt2_lightning.cli import main
from gpt2_lightning.corpus import builtin_documents
from gpt2_lightning.model import GPT
from gpt2_lightning.module import GPT2LightningModule, lr_factor

TINY = [
    "--model.config.n_layer", "2", "--model.config.n_head", "2", "--model.config.n_embd", "32",
    "--model.config.block_size", "32", "--model.warmup_steps", "4", "--model.learning_rate", "3e-3",
    "--data.batch_size", "4", "--trainer.val_check_interval", "8", "--trainer.check_val_every_n_epoch", "null",
    "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.peak_flops", "1e11", "--checkpoint.every_n_train_steps", "4", "--seed_everything", "7",
]


def fit(root, *extra):
    main(["fit", *TINY, "--trainer.default_root_dir", str(root), *extra])


def test_fit_logs_every_metric_and_the_loss_falls(tmp_path):
    fit(tmp_path, "--trainer.max_steps", "24")
    for tag in ("train/loss", "val/loss", "val/ppl", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/mfu"):
        assert scalars(tmp_path, tag), f"{tag} was not logged"
    loss = scalars(tmp_path, "train/loss")
    assert len(loss) == 24
    assert sum(list(loss.values())[-4:]) < sum(list(loss.values())[:4])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    model = GPT.from_pretrained(tmp_path / "checkpoints" / "last.ckpt")  # generate --checkpoint accepts .ckpt
    assert model.config.n_layer == 2


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_other_lightning_commands_run_from_a_checkpoint(tmp_path, command):
    fit(tmp_path, "--trainer.max_steps", "2")
    main([command, *TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_test_batches", "2",
          "--trainer.limit_predict_batches", "2", "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])


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


@pytest.mark.parametrize("configs", [["gqa.yaml"], ["all.yaml"], ["gpt2.yaml", "gqa.yaml"], ["gpt2.yaml", "all.yaml"]])
def test_grouped_query_configs_really_share_key_value_heads(configs, capsys):
    """n_kv_head equal to n_head is plain multi-head attention: a GQA config must group on every base it composes with."""
    import yaml

    args = [a for c in configs for a in ("--config", str(Path(__file__).parents[1] / "configs" / c))]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)["model"]["config"]
    assert config["n_head"] % config["n_kv_head"] == 0 and config["n_kv_head"] < config["n_head"]


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
    from gpt2_lightning.model import GPTConfig

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
    eager, compiled = GPT.from_pretrained(last), GPT.from_pretrained(tmp_path / "compiled.ckpt")
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
    model = GPT.from_pretrained(tmp_path / "run" / "checkpoints" / "last.ckpt")
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
    from gpt2_lightning.model import GPTConfig

    module = GPT2LightningModule(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))

    class FakeTrainer:
        max_steps = 10

    module._trainer = FakeTrainer()
    groups = module.configure_optimizers()["optimizer"].param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in module.model.named_parameters() if id(p) in decayed}
    assert names == {"transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                     "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"}
