"""Runs you can trust: no code from crafted checkpoints, resume that honours or refuses the command line, one run
per directory, SIGTERM that saves and exits non-zero, and kills at random moments (during saves too) that always
leave a checkpoint from which the run continues bit for bit."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_data import write_docs
from test_distributed import CONFIGS
from gpt2_lightning.measure import logged_scalars as scalars
from test_training import TINY, fit

from gpt2_lightning.analysis import cached
from gpt2_lightning.cli import main
from gpt2_lightning.corpus import builtin_documents
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.files import write_atomically
from gpt2_lightning.model import GPT
from gpt2_lightning.checkpoints.lightning import load_trained_model
from gpt2_lightning.train.checkpoint_io import recover_sharded_checkpoint
from gpt2_lightning.train.run_dir import RunLock


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


def test_analyze_run_cache_is_data_only_and_a_damaged_or_foreign_entry_is_measured_again(tmp_path):
    """analyze keeps each run's measurements as JSON (weights as safetensors): nothing it reads back can run code,
    and an entry it cannot use is recomputed rather than trusted."""
    calls = []

    def measure():
        calls.append(1)
        return {"loss": 1.5}

    assert cached(tmp_path, "run", {"steps": 4}, measure) == {"loss": 1.5}
    assert cached(tmp_path, "run", {"steps": 4}, measure) == {"loss": 1.5} and len(calls) == 1  # reused
    assert cached(tmp_path, "run", {"steps": 8}, measure) == {"loss": 1.5} and len(calls) == 2  # another spec
    (tmp_path / "run.json").write_bytes(pickle.dumps({"spec": {"steps": 8}}))  # not JSON: measured again
    assert cached(tmp_path, "run", {"steps": 8}, measure) == {"loss": 1.5} and len(calls) == 3


# ---- resume honours or refuses -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    root = tmp_path_factory.mktemp("four")
    fit(root, "--trainer.max_steps", "4")
    return root


@pytest.mark.parametrize("ckpt", ["file", "last"])
@pytest.mark.parametrize(
    "change, named",
    [
        (["--model.config.n_layer", "1"], "different model config.*n_layer: checkpoint 2, config 1"),
        (["--model.learning_rate", "1e-2"], r"other optimisation settings.*model.learning_rate: checkpoint 0.003, now 0.01"),
        (["--model.warmup_steps", "7"], "model.warmup_steps: checkpoint 4, now 7"),
    ],
)
def test_a_resume_never_silently_overrides_the_command_line(four_steps, ckpt, change, named):
    path = str(four_steps / "checkpoints" / "last.ckpt") if ckpt == "file" else "last"
    before = (four_steps / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit, match=named):
        fit(four_steps, "--trainer.max_steps", "8", *change, "--ckpt_path", path)
    assert (four_steps / "checkpoints" / "last.ckpt").read_bytes() == before


# ---- one run per directory -----------------------------------------------------------------------------------------


def test_a_fresh_run_where_one_already_is_is_refused(four_steps):
    with pytest.raises(SystemExit, match="already holds a run's checkpoints: pass --ckpt_path last"):
        fit(four_steps, "--trainer.max_steps", "8")
    assert sorted(p.name for p in (four_steps / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt


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


def test_logged_steps_are_the_optimizer_steps_after_resumes(tmp_path):
    """train/loss, train/lr and val/loss of 8 + 4 + 4 steps sit at the steps, with the values, of 16 straight ones
    (Lightning alone shifted a resumed curve one step right and dropped the validation point at its end)."""
    data = corpus_args(tmp_path)[:-2] + ["--model.lr_decay_steps", "16"]
    fit(tmp_path / "straight", *data, "--trainer.max_steps", "16")
    for steps in (8, 12, 16):
        fit(tmp_path / "resumed", *data, "--trainer.max_steps", str(steps),
            *(["--ckpt_path", "last"] if steps > 8 else []))
    for tag in ("train/loss", "train/lr", "val/loss"):
        assert scalars(tmp_path / "resumed", tag) == scalars(tmp_path / "straight", tag), tag
    lr = scalars(tmp_path / "straight", "train/lr")
    assert lr[0] == pytest.approx(3e-3 / 4) and lr[3] == pytest.approx(3e-3)  # warmup 4: the rate each step used


# ---- interrupted saves --------------------------------------------------------------------------------------------


def shard_dir(path: Path, label: str) -> Path:
    path.mkdir(parents=True)
    (path / "meta.pt").write_text(label)
    return path


@pytest.mark.parametrize(
    "present, expected",
    [
        (["last.ckpt", "last.ckpt.saving"], "old"),  # killed while writing shards: the partial save is discarded
        (["last.ckpt.old", "last.ckpt.saving"], "new"),  # killed between the two renames: the swap is finished
        (["last.ckpt", "last.ckpt.old"], "new"),  # killed before deleting the old one
        (["last.ckpt.saving"], None),  # the first save never completed: nothing to resume
    ],
)
def test_an_interrupted_sharded_save_recovers_to_a_complete_checkpoint(tmp_path, present, expected):
    labels = {"last.ckpt": "new" if "last.ckpt.old" in present else "old", "last.ckpt.old": "old",
              "last.ckpt.saving": "new"}
    for name in present:
        shard_dir(tmp_path / name, labels[name])
    recover_sharded_checkpoint(tmp_path / "last.ckpt")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["last.ckpt"] if expected else [])
    if expected:
        assert (tmp_path / "last.ckpt" / "meta.pt").read_text() == expected


def test_a_failed_single_file_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    fit(tmp_path, "--trainer.max_steps", "4")
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def disk_full(checkpoint, filepath):
        with open(filepath, "wb") as out:
            out.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", disk_full)
    with pytest.raises(SystemExit, match="No space left on device"):
        fit(tmp_path, "--trainer.max_steps", "8", "--ckpt_path", "last")
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no .tmp, the lock released


def test_a_sharded_save_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """The save itself, one process (torch.distributed.checkpoint writes without a process group): a failure while
    shards are written leaves last.ckpt as it was, where Lightning's strategy had already emptied it."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from gpt2_lightning.train.checkpoint_io import AtomicModelParallelStrategy

    def state(step):
        return {"state_dict": {"w": torch.full((4,), float(step))}, "optimizer_states": [], "global_step": step}

    def dies_midway(converted_state, path):
        (Path(path) / "__0_0.distcp").write_bytes(b"")
        raise OSError("killed while writing shards")

    for strategy, survives in ((AtomicModelParallelStrategy(), True), (ModelParallelStrategy(), False)):
        path = tmp_path / type(strategy).__name__ / "last.ckpt"
        strategy.save_checkpoint(state(1), path)
        before = {p.name: p.read_bytes() for p in path.iterdir()}
        with monkeypatch.context() as patch:
            patch.setattr("lightning.pytorch.strategies.model_parallel._distributed_checkpoint_save", dies_midway)
            with pytest.raises(OSError, match="killed while writing"):
                strategy.save_checkpoint(state(2), path)
        after = {p.name: p.read_bytes() for p in path.iterdir()}
        assert (after == before) is survives
    recover_sharded_checkpoint(tmp_path / "AtomicModelParallelStrategy" / "last.ckpt")
    assert [p.name for p in (tmp_path / "AtomicModelParallelStrategy").iterdir()] == ["last.ckpt"]


# ---- SIGTERM and SIGKILL ------------------------------------------------------------------------------------------


def corpus_args(root: Path) -> list[str]:
    write_docs(root / "src", [d[:600] for d in builtin_documents()[:12]])
    return ["--data.source", "files", "--data.paths", str(root / "src"), "--data.val_size", "0.15",
            "--model.config.dropout", "0.1", "--model.lr_decay_steps", "60"]


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


def test_sigterm_saves_exits_non_zero_and_resumes_exactly(tmp_path):
    data = corpus_args(tmp_path)
    straight = launch(tmp_path / "straight", *data, "--trainer.max_steps", "16")  # every leg alike: 1 thread
    assert straight.wait(timeout=300) == 0
    run = tmp_path / "preempted"
    process = launch(run, *data, "--trainer.max_steps", "400", "--checkpoint.every_n_train_steps", "4")
    wait_for(run / "checkpoints" / "last.ckpt")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= step < 60
    resumed = launch(run, *data, "--trainer.max_steps", "16", "--ckpt_path", "last")
    assert resumed.wait(timeout=300) == 0
    straight, resumed = scalars(tmp_path / "straight", "train/loss"), scalars(run, "train/loss")
    assert [resumed[s] for s in range(16)] == [straight[s] for s in range(16)]  # (the same schedule, 60 steps long)


@pytest.mark.parametrize("config", [None, "fsdp.yaml"])
def test_five_kills_at_random_moments_then_an_exact_resume(tmp_path, config):
    """SIGKILL five times at random moments (saving every step, so many land inside a save); every time a
    checkpoint remains that the next start takes up, and the run ends where an uninterrupted one does."""
    data = corpus_args(tmp_path)
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


def test_token_ids_outside_the_vocabulary_are_named():
    from gpt2_lightning.config import GPTConfig

    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=r"token id 50 is outside the model's vocabulary \(0 … 49\)"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="token id -1 is outside"):
        model(torch.tensor([[-1, 2]]))


def test_a_too_small_vocabulary_for_the_data_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match="model.config.vocab_size=1000 cannot hold the GPT-2 token ids"):
        fit(tmp_path, "--trainer.max_steps", "2", "--model.config.vocab_size", "1000")


def test_a_sharded_checkpoint_resumed_without_fsdp_is_refused(tmp_path):
    from torch.distributed.checkpoint.metadata import Metadata

    sharded = tmp_path / "run" / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)
    (sharded / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={})))
    with pytest.raises(SystemExit, match="is a sharded \\(FSDP\\) checkpoint; resume it with --config configs/fsdp.yaml"):
        fit(tmp_path / "run", "--trainer.max_steps", "2", "--ckpt_path", "last")


def test_fsdp_with_a_device_count_other_than_its_data_parallel_size_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="data_parallel_size=2 × tensor_parallel_size=1 = 2 ways, but the run has 1 "
                                         "devices.*data_parallel_size 1"):
        main(["fit", "--config", str(CONFIGS / "fsdp.yaml"), *TINY, "--trainer.accelerator", "cpu",
              "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2"])


def test_a_truncated_checkpoint_is_named(four_steps, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    data = (four_steps / "checkpoints" / "last.ckpt").read_bytes()
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
    def disk_full(checkpoint, filepath):
        raise OSError(28, "No space left on device", str(filepath))

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", disk_full)
    with pytest.raises(SystemExit, match=r"cannot write .*last.ckpt.tmp \(No space left on device\).*--ckpt_path last"):
        fit(tmp_path, "--trainer.max_steps", "4")


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    """The one write path of checkpoints, converted weights, analysis runs and the fetched corpus."""
    path = tmp_path / "kept.json"
    path.write_text("old")

    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["kept.json"]  # the partial file removed
    write_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["kept.json"]


def test_convert_onto_an_existing_file_is_refused(four_steps, tmp_path):
    (tmp_path / "taken").write_text("keep me")
    with pytest.raises(SystemExit, match="--out .*taken already exists"):
        main(["convert", "--checkpoint", str(four_steps / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "taken")])
    assert (tmp_path / "taken").read_text() == "keep me"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", ".nan"], "temperature must be a number >= 0"),  # YAML's NaN: jsonargparse refuses "nan"
        (["--temperature", "1e-45"], "so small that logits / temperature overflow"),
        (["--device", "cuda"], "--device cuda: this machine has no CUDA device"),
    ],
)
def test_generate_refuses_what_it_cannot_honour(four_steps, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match=message):
        main(["generate", "--checkpoint", str(four_steps / "checkpoints" / "last.ckpt"), "--max-new-tokens", "2", *args])


def test_a_missing_local_path_is_not_sent_to_the_hub(capsys):
    with pytest.raises(SystemExit, match="runs/last.ckpt: no such file or directory \\(a local path, not a hub id\\)"):
        main(["generate", "--checkpoint", "runs/last.ckpt"])


def test_a_resume_does_not_need_the_init_from_source(tmp_path):
    from conftest import make_hf_model, save_layout

    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    save_layout(make_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257), pretrained, "hub")
    args = ["--model.init_from", str(pretrained), "--model.config.block_size", "32"]
    fit(tmp_path / "run", *args, "--trainer.max_steps", "2")
    import shutil

    shutil.rmtree(pretrained)  # the source is gone
    fit(tmp_path / "run", *args, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    config = (sorted((tmp_path / "run" / "lightning_logs").iterdir())[-1] / "config.yaml").read_text()
    assert "init_from: null" in config and "n_embd: 32" in config  # what ran: the checkpoint's architecture
