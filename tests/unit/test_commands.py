"""The command table (gpt2_lightning/cli.py): every command listed once, typed commands parsed by jsonargparse
with --config / --print_config, and the flags users typed before (dashes, bare booleans) still meaning the same."""

import pytest
import yaml

from gpt2_lightning import cli
from gpt2_lightning.cli import COMMANDS, main


def printed_config(capsys, *words) -> dict:
    with pytest.raises(SystemExit) as done:
        main(list(words))
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_generate_prints_its_config_and_reads_one_back(tmp_path, capsys):
    config = printed_config(capsys, "generate", "--checkpoint", "out/gqa", "--max_new_tokens", "5", "--print_config")
    assert config["checkpoint"] == "out/gqa" and config["max_new_tokens"] == 5 and config["temperature"] == 0.8
    (tmp_path / "sample.yaml").write_text(yaml.safe_dump({**config, "top_k": 7}))
    again = printed_config(capsys, "generate", "--config", str(tmp_path / "sample.yaml"), "--print_config")
    assert again == {**config, "top_k": 7}


@pytest.mark.parametrize("command", ["convert", "download", "analyze"])
def test_every_typed_command_takes_print_config(capsys, command):
    words = {"convert": ["--checkpoint", "a", "--out", "b"], "download": ["gpt2"], "analyze": []}[command]
    config = printed_config(capsys, command, *words, "--print_config")
    assert {"convert": "out", "download": "name", "analyze": "budget"}[command] in config


def test_the_flags_of_before_keep_their_meaning(capsys):
    old = printed_config(capsys, "generate", "--max-new-tokens", "5", "--num-samples", "2", "--top-k", "3",
                         "--top-p=0.5", "--compile", "--print_config")
    new = printed_config(capsys, "generate", "--max_new_tokens", "5", "--num_samples", "2", "--top_k", "3",
                         "--top_p", "0.5", "--compile", "true", "--print_config")
    assert old == new and old["compile"] is True and old["max_new_tokens"] == 5
    converted = printed_config(capsys, "convert", "--checkpoint", "a", "--n-kv-head", "2", "--out", "b",
                               "--print_config")
    assert converted["n_kv_head"] == 2


def test_a_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit, match=r"^gpt2-lightning: error: unknown command 'genrate'; did you mean 'generate'\?$"):
        main(["genrate"])
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2 and "commands:" in capsys.readouterr().out


def test_the_table_lists_each_command_with_its_docstring_as_summary():
    assert list(COMMANDS) == ["fit", "validate", "test", "predict", "prepare", "generate", "download", "convert",
                              "analyze"]
    assert COMMANDS["generate"].summary == "continue a prompt, printing the text as it is produced"
    assert cli.usage().count("\n    ") == len(COMMANDS)
