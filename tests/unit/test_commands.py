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
    with pytest.raises(SystemExit,
                       match=r"^gpt2-lightning: error: unknown command 'genrate'; did you mean 'generate'\?$"):
        main(["genrate"])
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2 and "commands:" in capsys.readouterr().out


def test_the_table_lists_each_command_with_its_docstring_as_summary():
    assert list(COMMANDS) == ["fit", "validate", "test", "predict", "prepare", "generate", "download", "convert",
                              "analyze", "evaluate"]
    assert COMMANDS["generate"].summary == "continue a prompt, printing the text as it is produced"
    assert cli.usage().count("\n    ") == len(COMMANDS)


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], r"--device tpu: not a device torch knows .*use auto, cpu, cuda, cuda:N or mps$"),
    (["--seed", str(2**70)], r"--seed must be in \[0, 2\*\*64\), got 1180591620717411303424$"),
    (["--prompt", "caf\udcc3"], r"--prompt is not valid UTF-8 \(bytes '\\udcc3' at character 3\); pass UTF-8 text$"),
])
def test_generate_names_what_it_cannot_take_in_one_line(args, message):
    with pytest.raises(SystemExit, match=r"^gpt2-lightning generate: error: " + message):
        main(["generate", "--checkpoint", "gpt2", *args])


def test_a_mistyped_local_directory_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit, match=r"out/gqa4: no such file or directory \(a local path, not a hub id\)"):
        main(["generate", "--checkpoint", "out/gqa4"])


def test_convert_into_a_place_it_cannot_write_is_one_line(hf_checkpoint, tmp_path):
    _, directory = hf_checkpoint()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match=r"^gpt2-lightning convert: error: --out .*a-file/out: cannot write .*; "
                                         r"choose a writable directory"):
        main(["convert", "--checkpoint", str(directory), "--out", str(tmp_path / "a-file" / "out")])


def test_lightnings_optimizer_flags_cannot_replace_the_modules_optimizer(tmp_path):
    with pytest.raises(SystemExit, match=r"^gpt2-lightning fit: error: unrecognized arguments: --optimizer SGD"):
        main(["fit", "--optimizer", "SGD", "--trainer.default_root_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_a_smoke_analysis_writes_under_runs_and_leaves_the_repositorys_docs_alone(tmp_path, monkeypatch):
    from gpt2_lightning import analysis

    written = []
    monkeypatch.setattr(analysis, "analyze",
                        lambda budget, out, runs, sections: written.append((budget, out, runs, sections)) or out)
    main(["analyze", "--budget", "tiny", "--runs", str(tmp_path / "runs")])
    assert written == [("tiny", str(tmp_path / "runs" / "tiny" / "report"), str(tmp_path / "runs"), None)]
    main(["analyze", "--budget", "small", "--out", "docs", "--runs", str(tmp_path / "runs")])  # only when asked
    assert written[-1][1] == "docs"
    main(["analyze", "--budget", "tiny", "--runs", str(tmp_path / "runs"), "--sections", "recall, copy"])
    assert written[-1][3] == ["recall", "copy"]  # as README writes it: one word, comma-separated


@pytest.mark.parametrize("words, message", [
    (["fit", "--model.config.n_layr", "3"],
     r"^gpt2-lightning fit: error: unrecognized arguments: --model\.config\.n_layr 3; did you mean "
     r"--model\.config\.n_layer\? \(`gpt2-lightning fit --help` lists every option\)$"),
    (["generate", "--top_kk", "3"], r"^gpt2-lightning generate: error: unrecognized arguments: --top_kk 3; did you "
                                    r"mean --top_k\?"),
    (["fit", "--config", "configs/no-such.yaml"],
     r"^gpt2-lightning fit: error: .*File does not exist: .*no-such\.yaml"),
])
def test_a_parse_error_is_one_line_with_the_closest_valid_key(words, message, capsys):
    with pytest.raises(SystemExit, match=message):
        main(words)
    assert "usage:" not in capsys.readouterr().err  # not the whole usage first


def test_a_mistyped_or_broken_yaml_config_names_the_key_or_the_file(tmp_path):
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_stepz: 2\n")
    typo = r"does not accept option 'trainer\.max_stepz'; did you mean --trainer\.max_steps\?"
    with pytest.raises(SystemExit, match=typo):
        main(["fit", "--config", str(tmp_path / "typo.yaml")])
    (tmp_path / "broken.yaml").write_text("model:\n  config: {n_layer: 2\n")
    broken = rf"Problems parsing config: .* \(the --config files: {tmp_path}/broken\.yaml\)"
    with pytest.raises(SystemExit, match=broken):
        main(["fit", "--config", str(tmp_path / "broken.yaml")])
