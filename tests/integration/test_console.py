"""What a run prints: plain step lines without a terminal, and a progress bar that counts the run's optimizer steps."""

import re

import lightning as L
from helpers import fit
from helpers import logged_scalars as scalars

from gpt2_lightning.analysis.probes import Passkey, ProbeData
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.train.console import StepProgressBar
from gpt2_lightning.train.module import GPT2LightningModule


def test_without_a_terminal_fit_prints_plain_lines_and_no_advertisement(tmp_path, capsys):
    fit(tmp_path, "--trainer.max_steps", "16", "--trainer.log_every_n_steps", "4")
    captured = capsys.readouterr()
    line = r"^step (\d+) \| loss (\d+\.\d{4}) \| lr \S+ \| (\S+) tokens/s \| (\d+)/16 steps done, ETA (\S+)$"
    steps = re.findall(line, captured.out, flags=re.MULTILINE)
    assert [(int(s), int(done)) for s, _, _, done, _ in steps] == [(3, 4), (7, 8), (11, 12), (15, 16)]
    assert steps[0][2] == steps[0][4] == "—" and re.fullmatch(r"[\d,]+", steps[-1][2])  # the window fills at step 10
    val = re.findall(r"^step (\d+) \| val/loss (\d+\.\d{4}) \| val/ppl", captured.out, flags=re.MULTILINE)
    assert [int(s) for s, _ in val] == [8, 16]
    # the console's step numbers are TensorBoard's: each printed value sits at its printed step
    loss, val_loss = scalars(tmp_path, "train/loss"), scalars(tmp_path, "val/loss")
    assert all(f"{loss[int(s)]:.4f}" == value for s, value, *_ in steps)
    assert all(f"{val_loss[int(s)]:.4f}" == value for s, value in val)
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
