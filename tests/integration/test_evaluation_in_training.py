"""The LMEvaluation callback in real fits: it logs eval/<task>/<metric> at the optimizer step it scored, the value the
saved checkpoint of that step scores (a .ckpt file, and FSDP2's sharded twin), and leaves the training losses as
they were. Offline: a local LAMBADA-format task (configs/eval's YAML, JSONL written here)."""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import CONFIGS, TINY, fit, logged_scalars

pytest.importorskip("lm_eval")
from gpt2_lightning.evaluation import evaluate  # noqa: E402

CALLBACK = "LMEvaluation"  # the short name README and docs/evaluation.md give


@pytest.fixture
def lambada_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    directory = tmp_path / "tasks"
    directory.mkdir()
    data = directory / "lambada.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on mat number {i} and then slept"}) + "\n"
                            for i in range(3)))
    text = (CONFIGS / "eval" / "lambada_openai.yaml").read_text()
    (directory / "lambada_openai.yaml").write_text(re.sub(r"(\n    test: ).*", rf"\g<1>{data}", text))
    return directory


def callback_args(tasks) -> list[str]:
    return [f"--trainer.callbacks+={CALLBACK}", "--trainer.callbacks.tasks=[lambada_openai]",
            f"--trainer.callbacks.include_path={tasks}", "--trainer.callbacks.every_n_steps=2",
            "--trainer.callbacks.limit=2"]


def scored(checkpoint, tasks) -> float:
    results = evaluate(str(checkpoint), ["lambada_openai"], include_path=tasks, limit=2, bootstrap_iters=0, quiet=True)
    return results["results"]["lambada_openai"]["perplexity,none"]


def test_the_callback_logs_at_the_optimizer_step_and_leaves_training_unchanged(tmp_path, lambada_tasks):
    dropout = ["--model.config.dropout", "0.1", "--trainer.max_steps", "4"]  # evaluation must not shift its RNG
    fit(tmp_path / "plain", *dropout)
    fit(tmp_path / "scored", *dropout, *callback_args(lambada_tasks))
    plain, with_callback = (logged_scalars(tmp_path / run, "train/loss") for run in ("plain", "scored"))
    assert sorted(plain) == list(range(4)) and with_callback == plain
    perplexity = logged_scalars(tmp_path / "scored", "eval/lambada_openai/perplexity")
    assert sorted(perplexity) == [2, 4]
    assert sorted(logged_scalars(tmp_path / "scored", "eval/lambada_openai/acc")) == [2, 4]
    # step 4's value is the last checkpoint's (the model after 4 optimizer steps), scored by the command's path
    assert perplexity[4] == pytest.approx(scored(tmp_path / "scored" / "checkpoints" / "last.ckpt", lambada_tasks),
                                          rel=1e-5)
    assert perplexity[2] != pytest.approx(perplexity[4], rel=1e-5)


def test_under_fsdp2_rank_0_scores_the_gathered_model_as_its_sharded_checkpoint_scores(tmp_path, lambada_tasks):
    command = [sys.executable, "-m", "gpt2_lightning", "fit", "--config", str(CONFIGS / "fsdp.yaml"), *TINY,
               "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2",
               *callback_args(lambada_tasks)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sharded = tmp_path / "checkpoints" / "last.ckpt"
    assert (sharded / "meta.pt").is_file()  # really sharded
    perplexity = logged_scalars(tmp_path, "eval/lambada_openai/perplexity")
    assert sorted(perplexity) == [2]
    assert perplexity[2] == pytest.approx(scored(sharded, lambada_tasks), rel=1e-5)
