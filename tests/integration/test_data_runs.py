"""The data path through real runs and processes: a prepare killed mid-write, single-file corpora, epochs, refused
and exact resumes (other workers, SIGKILL), the prepare command, configs/gpt2.yaml's recipe. (Without a run:
tests/unit/test_data.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, TINY, datamodule, fit, write_docs
from helpers import logged_scalars as scalars

from gpt2_lightning.cli import main
from gpt2_lightning.corpus import Corpus, DataError, builtin_documents
from gpt2_lightning.token_cache import cache_path, prepare


def test_a_failed_prepare_leaves_nothing_and_leftovers_of_dead_ones_are_removed(tmp_path):
    good, bad = builtin_documents()[0], "ok\n\xff"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text(good)
    (tmp_path / "src" / "b.txt").write_bytes(bad.encode("latin-1"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"b\.txt:2: invalid UTF-8 \(byte 0xff\); re-encode"):
        prepare(Corpus("files", [str(tmp_path / "src")]), cache, num_proc=1)
    assert list(cache.iterdir()) == []
    (tmp_path / "src" / "b.txt").write_text("fine now")
    target = cache_path(Corpus("files", [str(tmp_path / "src")]), cache)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = cache / f".{target.name}.tmp-{os.uname().nodename}-{dead.stdout.strip()}"
    leftover.mkdir()  # what a prepare killed mid-write leaves
    prepare(Corpus("files", [str(tmp_path / "src")]), cache, num_proc=1)
    assert [p.name for p in cache.iterdir()] == [target.name]


# ---- through fit ----------------------------------------------------------------------------------------------


def test_a_single_file_corpus_trains_and_validates(tmp_path):
    (tmp_path / "book.txt").write_text("\n\n".join(builtin_documents()[:10]))
    fit(tmp_path, "--data.source", "files", "--data.paths", str(tmp_path / "book.txt"), "--data.val_size", "0.1",
        "--trainer.max_steps", "8")
    assert len(scalars(tmp_path, "train/loss")) == 8 and scalars(tmp_path, "val/loss")
    manifest = json.loads(next(Path(os.environ["GPT2_LIGHTNING_DATA"]).glob("files-*/manifest.json")).read_text())
    assert manifest["split"]["taken_as"] in ("tail", "documents")


def test_an_invalid_file_stops_fit_before_the_first_step(tmp_path):
    corpus = tmp_path / "src"
    write_docs(corpus, builtin_documents()[:3], "a.jsonl")
    (corpus / "b.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(SystemExit, match=r"b\.jsonl:2: 'text' is a int, not text"):
        fit(tmp_path / "run", "--data.source", "files", "--data.paths", str(corpus), "--trainer.max_steps", "4")
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # no checkpoint, and the run lock released


def test_max_epochs_ends_the_run(tmp_path):
    (tmp_path / "src").mkdir()
    for i, doc in enumerate(builtin_documents()[:6]):
        (tmp_path / "src" / f"{i}.txt").write_text(doc[:500])
    fit(tmp_path, "--data.source", "files", "--data.paths", str(tmp_path / "src"), "--data.val_size", "0.2",
        "--trainer.max_epochs", "2", "--trainer.max_steps", "-1", "--model.lr_decay_steps", "100",
        "--trainer.accumulate_grad_batches", "2",
        "--trainer.val_check_interval", "2")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    dm = datamodule(tmp_path, tmp_path / "src", val_size=0.2)
    steps_per_epoch = len(dm.train_windows) // 2
    assert checkpoint["global_step"] == 2 * steps_per_epoch == len(scalars(tmp_path, "train/loss"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run on a two-file corpus, to resume with changed settings."""
    root = tmp_path_factory.mktemp("trained")
    for name, docs in (("a.jsonl", builtin_documents()[:20]), ("b.jsonl", builtin_documents()[20:40])):
        write_docs(root / "src", docs, name)
    fit(root, "--data.source", "files", "--data.paths", str(root / "src" / "*.jsonl"), "--trainer.max_steps", "4")
    return root


@pytest.mark.parametrize(
    "change, named",
    [
        (["--data.paths", "{root}/src/a.jsonl"], "prepared data"),
        (["--data.val_size", "0.1"], "data.val_size"),
        (["--data.seed", "1"], "data.seed"),
        (["--data.batch_size", "2"], "data.batch_size"),
        (["--trainer.accumulate_grad_batches", "2"], "trainer.accumulate_grad_batches"),
    ],
)
def test_resume_with_changed_data_settings_is_refused_naming_them(trained, change, named):
    data = ["--data.source", "files", "--data.paths", str(trained / "src" / "*.jsonl")]
    change = [c.format(root=trained) for c in change]
    before = (trained / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit, match=f"cannot resume the data stream exactly.*{named}: checkpoint"):
        fit(trained, *data, "--trainer.max_steps", "8", *change, "--ckpt_path", "last")
    assert (trained / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_resume_whose_source_changed_is_refused_before_its_data_is_replaced(tmp_path):
    write_docs(tmp_path / "src", builtin_documents()[:20])
    data = ["--data.source", "files", "--data.paths", str(tmp_path / "src"), "--data.cache_dir", str(tmp_path / "c")]
    fit(tmp_path / "run", *data, "--trainer.max_steps", "2")
    (prepared,) = (tmp_path / "c").iterdir()
    kept = {p.name: p.read_bytes() for p in prepared.iterdir()}
    write_docs(tmp_path / "src", builtin_documents()[20:40])  # the source edited in place
    with pytest.raises(SystemExit, match=r"changed since the data this run trains on was prepared"):
        fit(tmp_path / "run", *data, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == kept  # not re-tokenized, not replaced


def test_resume_with_other_workers_and_after_sigkill_is_exact(tmp_path, straight_16):
    """8 + 8 = 16 straight steps, with 2 workers in the second leg; and a run SIGKILLed mid-way resumes exactly."""
    straight_run, data = straight_16
    fit(tmp_path / "workers", *data, "--trainer.max_steps", "8")
    fit(tmp_path / "workers", *data, "--trainer.max_steps", "16", "--data.num_workers", "2", "--ckpt_path", "last")

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "gpt2_lightning", "fit", *TINY, *data, "--trainer.default_root_dir", str(killed),
               "--trainer.max_steps", "400", "--model.lr_decay_steps", "16", "--checkpoint.every_n_train_steps", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.is_file():
        time.sleep(0.05)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(last, weights_only=False)["global_step"]
    assert 4 <= step < 16
    fit(killed, *data, "--trainer.max_steps", "16", "--ckpt_path", "last")

    straight = scalars(straight_run, "train/loss")
    assert sorted(straight) == list(range(16))
    for run in ("workers", "killed"):
        resumed = scalars(tmp_path / run, "train/loss")
        for s in range(16):
            assert resumed[s] == straight[s], (run, s)  # bit for bit


def test_prepare_command_takes_the_fit_config_and_fit_reuses_it(tmp_path, capsys):
    path = write_docs(tmp_path / "src", builtin_documents()[:30])
    data = ["--data.source", "files", "--data.paths", str(path), "--data.cache_dir", str(tmp_path / "cache")]
    main(["prepare", "--config", str(CONFIGS / "gqa.yaml"), *data, "--data.num_proc", "1"])
    assert "data: tokenized 30 documents" in capsys.readouterr().out
    fit(tmp_path / "run", *data, "--trainer.max_steps", "2")
    assert "data: using" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="gpt2-lightning prepare: error: .*no files match"):
        main(["prepare", "--data.source", "files", "--data.paths", str(tmp_path / "none.txt")])


def test_gpt2_recipe_runs_unchanged_on_a_local_openwebtext_like_corpus(tmp_path):
    """configs/gpt2.yaml's data and schedule at block 1024 with 4 workers, the model and step count scaled down."""
    rng = np.random.default_rng(0)
    words = " ".join(builtin_documents()).split()
    docs = [" ".join(rng.choice(words, int(rng.integers(200, 1500)))) for _ in range(300)]
    corpus = write_docs(tmp_path / "owt", docs, "openwebtext-000.jsonl")
    main(["fit", "--config", str(CONFIGS / "gpt2.yaml"), "--data.source", "files", "--data.paths", str(corpus),
          "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.compile", "false",
          "--model.config.n_layer", "1", "--model.config.n_head", "2", "--model.config.n_embd", "32",
          "--data.batch_size", "2", "--data.val_size", "0.05", "--trainer.accumulate_grad_batches", "2",
          "--trainer.max_steps", "3", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
          "--trainer.log_every_n_steps", "1",
          "--model.peak_flops", "1e11"])
    assert sorted(scalars(tmp_path / "run", "train/loss")) == [0, 1, 2] and scalars(tmp_path / "run", "val/loss")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["GPT2DataModule"]
    assert state["consumed_batches"] == 6 and state["fingerprint"]["data.block_size"] == 1024
