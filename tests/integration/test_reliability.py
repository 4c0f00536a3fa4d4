"""Runs you can trust: no code from crafted checkpoints, resume that honours or refuses the command line, one run
per directory, SIGTERM that saves and exits non-zero, and kills at random moments (during saves too) that always
leave a checkpoint from which the run continues bit for bit. (What needs no run:
tests/unit/test_reliability_checks.py.)"""

import errno
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, TINY, fit, save_pretrained_for_tiny
from helpers import logged_scalars as scalars

from gpt2_lightning.checkpoints.lightning import load_trained_model
from gpt2_lightning.cli import main
from gpt2_lightning.errors import CheckpointError


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def crafted_sharded_checkpoint(directory: Path, marker: Path) -> Path:
    """A directory shaped like FSDP's sharded last.ckpt whose .metadata index carries a payload."""
    directory.mkdir(parents=True)
    (directory / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"global_step": 1}, directory / "meta.pt")
    return directory


def test_the_payload_runs_when_unpickled_plainly(tmp_path):
    """The control: the crafted index is live, so the refusals below are what keeps the marker from appearing."""
    marker = tmp_path / "marker"
    pickle.loads((crafted_sharded_checkpoint(tmp_path / "x.ckpt", marker) / ".metadata").read_bytes())
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("how", ["load_trained_model", "generate", "convert", "fit --ckpt_path DIR",
                                 "fit --ckpt_path last"])
def test_a_crafted_sharded_checkpoint_never_runs_code(tmp_path, how):
    marker = tmp_path / "marker"
    if how == "fit --ckpt_path last":
        crafted = crafted_sharded_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    else:
        crafted = crafted_sharded_checkpoint(tmp_path / "last.ckpt", marker)
    message = r"refusing to load: .*\.metadata names builtins\.exec"
    if how == "load_trained_model":
        with pytest.raises(CheckpointError, match=message):
            load_trained_model(crafted)
    elif how == "generate":
        with pytest.raises(SystemExit, match=message):
            main(["generate", "--checkpoint", str(crafted), "--max-new-tokens", "2"])
    elif how == "convert":
        with pytest.raises(SystemExit, match=message):
            main(["convert", "--checkpoint", str(crafted), "--out", str(tmp_path / "out")])
    else:
        ckpt = str(crafted) if how == "fit --ckpt_path DIR" else "last"
        with pytest.raises(SystemExit, match=message):
            fit(tmp_path / "run", "--trainer.max_steps", "2", "--ckpt_path", ckpt)
    assert not marker.exists()


# ---- resume honours or refuses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt", ["file", "last"])
@pytest.mark.parametrize(
    "change, named",
    [
        (["--model.config.n_layer", "1"], "different model config.*n_layer: checkpoint 2, config 1"),
        (["--model.learning_rate", "1e-2"],
         r"other optimisation settings.*model.learning_rate: checkpoint 0.003, now 0.01"),
        (["--model.warmup_steps", "7"], "model.warmup_steps: checkpoint 4, now 7"),
    ],
)
def test_a_resume_never_silently_overrides_the_command_line(tiny_run, ckpt, change, named):
    path = str(tiny_run / "checkpoints" / "last.ckpt") if ckpt == "file" else "last"
    before = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit, match=named):
        fit(tiny_run, "--trainer.max_steps", "8", *change, "--ckpt_path", path)
    assert (tiny_run / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_resume_does_not_need_the_init_from_source(tmp_path):
    pretrained = save_pretrained_for_tiny(tmp_path / "pretrained")
    args = ["--model.init_from", str(pretrained), "--model.config.block_size", "32"]
    fit(tmp_path / "run", *args, "--trainer.max_steps", "2")
    shutil.rmtree(pretrained)  # the source is gone
    fit(tmp_path / "run", *args, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    config = (sorted((tmp_path / "run" / "lightning_logs").iterdir())[-1] / "config.yaml").read_text()
    assert "init_from: null" in config and "n_embd: 32" in config  # what ran: the checkpoint's architecture


# ---- one run per directory -----------------------------------------------------------------------------------------


def test_a_fresh_run_where_one_already_is_is_refused(tiny_run):
    with pytest.raises(SystemExit, match="already holds a run's checkpoints: pass --ckpt_path last"):
        fit(tiny_run, "--trainer.max_steps", "8")
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt


def test_a_second_concurrent_run_is_refused_and_a_dead_runs_lock_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / ".fit.lock").write_text(f"{os.uname().nodename} {sleeper.pid}")
        with pytest.raises(SystemExit, match=rf"another fit \(pid {sleeper.pid}\) is running in"):
            fit(tmp_path, "--trainer.max_steps", "2")
    finally:
        sleeper.kill()
        sleeper.wait()
    fit(tmp_path, "--trainer.max_steps", "2")  # its process is gone: the lock is stale
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "checkpoints" / ".fit.lock").exists()


def test_logged_steps_are_the_optimizer_steps_after_resumes(tmp_path, straight_16):
    """The one test of a plain exact resume: train/loss, train/lr and val/loss of 8 + 4 + 4 steps, resumed twice
    across an epoch boundary with dropout on, sit at the steps, with the values (bit for bit), of 16 straight ones
    (Lightning alone shifted a resumed curve one step right and dropped the validation point at its end)."""
    straight, data = straight_16
    for steps in (8, 12, 16):
        fit(tmp_path / "resumed", *data, "--trainer.max_steps", str(steps),
            *(["--ckpt_path", "last"] if steps > 8 else []))
    assert torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] >= 1  # crossed an epoch
    assert sorted(scalars(straight, "train/loss")) == list(range(16))
    for tag in ("train/loss", "train/lr", "val/loss"):
        assert scalars(tmp_path / "resumed", tag) == scalars(straight, tag), tag
    lr = scalars(straight, "train/lr")
    assert lr[0] == pytest.approx(3e-3 / 4) and lr[3] == pytest.approx(3e-3)  # warmup 4: the rate each step used


def test_a_resume_from_a_periodic_save_validates_and_logs_as_the_straight_run(tmp_path, small_corpus):
    """Resumed from the step-12 save taken mid-run (not an end-of-run one), the run validates at 16 as the straight
    run does (Lightning alone validated at 15, and warned that the data loader is not resumable), and every train and
    validation scalar sits at the straight run's steps with its values; validation at the steps it followed."""
    data = [*small_corpus, "--model.lr_decay_steps", "16"]
    keep_every_save = ["--checkpoint.save_top_k", "-1", "--checkpoint.filename", "at-{step}"]
    fit(tmp_path / "straight", *data, "--trainer.max_steps", "16", *keep_every_save)
    saved_mid_run = tmp_path / "straight" / "checkpoints" / "at-step=12.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "resumed", *data, "--trainer.max_steps", "16", "--ckpt_path", str(saved_mid_run))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert sorted(scalars(tmp_path / "straight", "val/loss")) == [8, 16]
    for tag in ("train/loss", "train/lr", "val/loss", "val/ppl"):
        straight, resumed = scalars(tmp_path / "straight", tag), scalars(tmp_path / "resumed", tag)
        assert resumed == {s: v for s, v in straight.items() if s >= 12}, tag


def test_resuming_a_finished_run_says_how_to_train_further(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    fit(run, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert "nothing to train: the run is already at step 4, trainer.max_steps; to train further, raise " \
        "--trainer.max_steps" in capsys.readouterr().out


def test_ctrl_c_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """Lightning ends a Ctrl-C with exit status 1 and "Detected KeyboardInterrupt"; the run says how to go on."""
    from gpt2_lightning.train.module import GPT2LightningModule

    step = GPT2LightningModule.training_step

    def interrupted_at_step_6(self, batch, batch_idx):
        if self.global_step == 6:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GPT2LightningModule, "training_step", interrupted_at_step_6)
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT from then on
    try:
        with pytest.raises(SystemExit) as stopped:
            fit(tmp_path, "--trainer.max_steps", "8")
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stopped.value.code == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (f"interrupted at step 6: the last checkpoint, {last}, is intact; continue with the same command and "
            "--ckpt_path last") in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["global_step"] == 4


# ---- interrupted saves --------------------------------------------------------------------------------------------


def test_a_failed_single_file_save_leaves_no_temporary_file(tiny_run, tmp_path, monkeypatch):
    """A save that dies after writing its first bytes leaves last.ckpt as it was, and no temporary file."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def disk_full(checkpoint, file):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)  # as train.checkpoint_io writes a checkpoint
    with pytest.raises(SystemExit, match="No space left on device"):
        fit(run, "--trainer.max_steps", "8", "--ckpt_path", "last")
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no .tmp, the lock released


def test_a_full_log_disk_saves_the_checkpoint_on_its_own_disk_first(tmp_path, capsys, monkeypatch):
    """TensorBoard's disk fills at step 6 (two steps after the periodic save at 4); the checkpoint's disk has room:
    the state at step 6 is saved before the run stops, and the error names the log file and its disk."""
    from lightning.pytorch.loggers import TensorBoardLogger

    import gpt2_lightning.train.callbacks as callbacks

    log_metrics = TensorBoardLogger.log_metrics

    def full_from_step_5(self, metrics, step=None):
        if step is not None and step >= 5:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.log_dir, "events.out.tfevents"))
        return log_metrics(self, metrics, step)

    monkeypatch.setattr(TensorBoardLogger, "log_metrics", full_from_step_5)
    disk_of = callbacks.disk_of  # the logs on a disk of their own
    monkeypatch.setattr(callbacks, "disk_of", lambda p: Path("/logs") if "lightning_logs" in str(p) else disk_of(p))
    with pytest.raises(SystemExit, match=r"cannot write \S+events\.out\.tfevents \(on the disk mounted at \S+\): No "
                                         "space left on device; the last complete checkpoint is intact"):
        fit(tmp_path, "--trainer.max_steps", "8")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert f"the run's state at step 6 is saved first, in {last}" in capsys.readouterr().err


# ---- SIGTERM and SIGKILL ------------------------------------------------------------------------------------------


def launch(root: Path, *extra: str, config: str | None = None) -> subprocess.Popen:
    configs = ["--config", str(CONFIGS / config), "--trainer.accelerator", "cpu"] if config else []
    command = [sys.executable, "-m", "gpt2_lightning", "fit", *configs, *TINY, "--trainer.default_root_dir", str(root),
               *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)


def wait_for(path: Path, content: str | None = None, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() or (content is not None and not path.read_text().endswith(content)):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_saves_exits_non_zero_and_resumes_exactly(tmp_path, small_corpus):
    data = [*small_corpus, "--model.lr_decay_steps", "60"]
    straight = launch(tmp_path / "straight", *data, "--trainer.max_steps", "16")  # every leg alike: 1 thread
    assert straight.wait(timeout=300) == 0
    run = tmp_path / "preempted"
    process = launch(run, *data, "--trainer.max_steps", "400", "--checkpoint.every_n_train_steps", "4")
    wait_for(run / "checkpoints" / "last.ckpt")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "weights_only" not in err  # (Lightning's note on an unset argument)
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= step < 60
    resumed = launch(run, *data, "--trainer.max_steps", "16", "--ckpt_path", "last")
    assert resumed.wait(timeout=300) == 0
    straight, resumed = scalars(tmp_path / "straight", "train/loss"), scalars(run, "train/loss")
    assert [resumed[s] for s in range(16)] == [straight[s] for s in range(16)]  # (the same schedule, 60 steps long)
    straight, resumed = scalars(tmp_path / "straight", "val/loss"), scalars(run, "val/loss")
    assert sorted(straight) == [8, 16] and {s: resumed[s] for s in straight} == straight  # validated where it did


@pytest.mark.parametrize("config", [None, "fsdp.yaml"])
def test_five_kills_at_random_moments_then_an_exact_resume(tmp_path, small_corpus, config):
    """SIGKILL five times at random moments (saving every step, so many land inside a save); every time a
    checkpoint remains that the next start takes up, and the run ends where an uninterrupted one does."""
    data = [*small_corpus, "--model.lr_decay_steps", "60"]
    steps = 60
    common = [*data, "--trainer.max_steps", str(steps), "--checkpoint.every_n_train_steps", "1"]
    straight = launch(tmp_path / "straight", *common, config=config)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-3000:]
    run, rng = tmp_path / "killed", random.Random(0)
    last = run / "checkpoints" / "last.ckpt"
    saving = [last.with_name("last.ckpt.saving"), last.with_name("last.ckpt.tmp")]  # sharded, single file
    for kill in range(5):
        saved_before = last.stat().st_mtime_ns if last.exists() else 0
        process = launch(run, *common, *(["--ckpt_path", "last"] if last.exists() else []), config=config)
        deadline = time.time() + 120
        while (not last.exists() or last.stat().st_mtime_ns == saved_before) and time.time() < deadline:
            time.sleep(0.005)  # until this start has trained and saved at least one step
        if kill % 2:  # inside a save, if one is caught being written within a second
            deadline = time.time() + 1
            while not any(p.exists() for p in saving) and time.time() < deadline:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.0, 0.6))
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: every rank
        process.wait()
    final = launch(run, *common, *(["--ckpt_path", "last"] if last.exists() else []), config=config)
    assert final.wait(timeout=300) == 0, final.stderr.read()[-3000:]
    a, b = scalars(tmp_path / "straight", "train/loss"), scalars(run, "train/loss")
    assert [b[s] for s in range(steps)] == [a[s] for s in range(steps)]


# ---- bad input: one line with the fix -------------------------------------------------------------------------------


def test_a_too_small_vocabulary_for_the_data_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match="model.config.vocab_size=1000 cannot hold the GPT-2 token ids"):
        fit(tmp_path, "--trainer.max_steps", "2", "--model.config.vocab_size", "1000")


def test_a_sharded_checkpoint_resumed_without_fsdp_is_refused(tmp_path):
    from torch.distributed.checkpoint.metadata import Metadata

    sharded = tmp_path / "run" / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)
    (sharded / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={})))
    with pytest.raises(SystemExit,
                       match="is a sharded \\(FSDP\\) checkpoint; resume it with --config configs/fsdp.yaml"):
        fit(tmp_path / "run", "--trainer.max_steps", "2", "--ckpt_path", "last")


def test_fsdp_with_a_device_count_other_than_its_data_parallel_size_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="data_parallel_size=2 × tensor_parallel_size=1 = 2 ways, but the run has 1 "
                                         "devices.*data_parallel_size 1"):
        main(["fit", "--config", str(CONFIGS / "fsdp.yaml"), *TINY, "--trainer.accelerator", "cpu",
              "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2"])


def test_a_truncated_checkpoint_is_named(tiny_run, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    data = (tiny_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="truncated.ckpt is truncated or corrupt"):
        fit(tmp_path / "run", "--trainer.max_steps", "8", "--ckpt_path", str(truncated))


def test_a_read_only_run_directory_is_named(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: stand in a file for the directory
        (tmp_path / "ro").write_text("")
        root = tmp_path / "ro"
    else:
        root = tmp_path / "ro"
        root.mkdir(mode=0o555)
    with pytest.raises(SystemExit, match=r"cannot write to .*ro.*choose a writable --trainer.default_root_dir"):
        fit(root, "--trainer.max_steps", "2")


def test_a_full_disk_during_a_save_is_one_line(tmp_path, monkeypatch):
    def disk_full(checkpoint, file):
        raise OSError(28, "No space left on device", file.name)

    monkeypatch.setattr(torch, "save", disk_full)  # as train.checkpoint_io writes a checkpoint
    message = (r"cannot write .*last\.ckpt\.tmp \(on the disk mounted at /\S*\): No space left on device; the last "
               r"complete checkpoint is intact.*--ckpt_path last")
    with pytest.raises(SystemExit, match=message):
        fit(tmp_path, "--trainer.max_steps", "4")


def test_convert_onto_an_existing_file_is_refused(tiny_run, tmp_path):
    (tmp_path / "taken").write_text("keep me")
    with pytest.raises(SystemExit, match="--out .*taken already exists"):
        main(["convert", "--checkpoint", str(tiny_run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "taken")])
    assert (tmp_path / "taken").read_text() == "keep me"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", ".nan"], "temperature must be a number >= 0"),  # YAML's NaN: jsonargparse refuses "nan"
        (["--temperature", "1e-45"], "so small that logits / temperature overflow"),
        (["--device", "cuda"], "--device cuda: this machine has no CUDA device"),
    ],
)
def test_generate_refuses_what_it_cannot_honour(tiny_run, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match=message):
        main(["generate", "--checkpoint", str(tiny_run / "checkpoints" / "last.ckpt"), "--max-new-tokens", "2", *args])
