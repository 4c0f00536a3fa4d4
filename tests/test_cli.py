"""The `gpt2-lightning` command as a new user meets it: help, errors, console output, reports."""

import dataclasses
import re

import lightning as L
import pytest

from gpt2_lightning import cli
from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.train.module import GPT2LightningModule
from gpt2_lightning.probes import Passkey, ProbeData
from gpt2_lightning.train.console import StepProgressBar
from test_training import fit

COMMANDS = ["fit", "validate", "test", "predict", "prepare", "generate", "download", "convert", "analyze"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = re.findall(r"^    (\w+)\s", capsys.readouterr().out, flags=re.MULTILINE)
    assert listed == COMMANDS


def test_command_help_shows_defaults_and_what_checkpoint_accepts(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Lightning .ckpt" in out and "default: gpt2)" in out and "default: 0.8)" in out


def test_fit_help_documents_every_model_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for field in dataclasses.fields(GPTConfig):
        entry = re.search(rf"--model\.config\.{field.name} \S+\n\s+(.+?)\(type:", out, flags=re.DOTALL)
        assert entry and len(entry.group(1).split()) >= 3, field.name  # a sentence, not just the type


def test_bad_input_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    with pytest.raises(SystemExit, match=r"^gpt2-lightning generate: error: --num-samples and --max-new-tokens must "
                                         r"be >= 1, got 0 and 100$"):
        main(["generate", "--num-samples", "0"])

    def broken(*_):
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli, "pick_device", broken)
    with pytest.raises(ValueError, match="an internal bug"):  # not turned into a one-line exit
        main(["generate", "--checkpoint", "gpt2"])


def test_without_a_terminal_fit_prints_plain_lines_and_no_advertisement(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_steps", "16", "--trainer.log_every_n_steps", "4")
    captured = capsys.readouterr()
    steps = re.findall(r"^step (\d+)/16 \| loss \d+\.\d{4} \| lr \S+ \| (\S+) tokens/s \| ETA (\S+)$", captured.out,
                       flags=re.MULTILINE)
    assert [int(s) for s, _, _ in steps] == [4, 8, 12, 16]
    assert steps[0][1:] == ("—", "—") and re.fullmatch(r"[\d,]+", steps[-1][1])  # the window fills at step 10
    assert re.findall(r"^step (\d+) \| val/loss \d+\.\d{4} \| val/ppl", captured.out, flags=re.MULTILINE) == ["8", "16"]
    assert "💡" not in captured.out + captured.err and "Total FLOPs: 0" not in captured.out


def test_progress_bar_counts_optimizer_steps_of_the_run_across_epochs_and_a_resume(tmp_path):
    task = Passkey(length=16, n_filler=4, n_keys=4, queries=1)
    config = GPTConfig(vocab_size=task.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    seen = []

    class Watch(StepProgressBar):
        def on_train_batch_end(self, trainer, *args):
            super().on_train_batch_end(trainer, *args)
            seen.append((self.train_progress_bar.n, self.train_progress_bar.total))

    def run(max_steps: int, ckpt_path=None) -> L.Trainer:
        trainer = L.Trainer(max_steps=max_steps, limit_train_batches=2, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, callbacks=[Watch(refresh_rate=1)])  # epochs of 2 batches
        trainer.fit(GPT2LightningModule(config), datamodule=ProbeData(task, 4, 0), ckpt_path=ckpt_path)
        return trainer

    run(3).save_checkpoint(tmp_path / "three.ckpt")
    assert seen == [(1, 3), (2, 3), (3, 3)]  # one bar over the run, across the epoch boundary at 2
    seen.clear()
    run(6, tmp_path / "three.ckpt")
    assert seen == [(4, 6), (5, 6), (6, 6)]  # a resumed run starts where it stands, against the run's total


def test_convert_says_when_it_changed_nothing(hf_checkpoint, tmp_path, capsys):
    _, directory = hf_checkpoint()  # 4 heads
    main(["convert", "--checkpoint", str(directory), "--n-kv-head", "4", "--out", str(tmp_path / "same")])
    assert "already 4 key/value heads: nothing to convert" in capsys.readouterr().out
    main(["convert", "--checkpoint", str(directory), "--out", str(tmp_path / "copy")])
    assert "re-saved unchanged" in capsys.readouterr().out
