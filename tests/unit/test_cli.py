"""The `gpt2-lightning` command as a new user meets it: help, errors, reports. (Console output of a run:
tests/integration/test_console.py; the command table: test_commands.py.)"""

import dataclasses
import re

import pytest

from gpt2_lightning import cli
from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig

COMMANDS = ["fit", "validate", "test", "predict", "prepare", "generate", "download", "convert", "analyze", "evaluate"]


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


def test_convert_says_when_it_changed_nothing(hf_checkpoint, tmp_path, capsys):
    _, directory = hf_checkpoint()  # 4 heads
    main(["convert", "--checkpoint", str(directory), "--n-kv-head", "4", "--out", str(tmp_path / "same")])
    assert "already 4 key/value heads: nothing to convert" in capsys.readouterr().out
    main(["convert", "--checkpoint", str(directory), "--out", str(tmp_path / "copy")])
    assert "re-saved unchanged" in capsys.readouterr().out


def test_a_run_that_ended_well_destroys_its_process_group(tmp_path, monkeypatch):
    """Left to interpreter shutdown, a gloo group's threads sometimes aborted a finished DDP run (status -6)."""
    import torch.distributed as dist

    def distributed_run(*args, **kwargs):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    monkeypatch.setattr(cli, "GPT2LightningCLI", distributed_run)
    cli.run_lightning("fit", [])
    assert not dist.is_initialized()
