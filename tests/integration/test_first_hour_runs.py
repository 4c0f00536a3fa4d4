"""The end of a first run (issue 20, items 5, 7 and 11): a sample in whole characters, a summary that says where
everything is and what to run next, one CPU peak for every run on a machine, and a progress bar that ends cleanly."""

import json
import re

import lightning as L
import torch
from helpers import fit
from helpers import logged_scalars as scalars
from torch.utils.data import DataLoader, TensorDataset

from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.train import callbacks
from gpt2_lightning.train.callbacks import TokenThroughput
from gpt2_lightning.train.console import StepProgressBar
from gpt2_lightning.train.module import GPT2LightningModule


def test_fit_ends_with_a_clean_sample_and_a_summary_and_reuses_the_measured_peak(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPT2_LIGHTNING_PEAK_CACHE", str(tmp_path / "peak.json"))
    measured = []
    monkeypatch.setattr(callbacks, "measure_cpu_peak_flops", lambda: measured.append(1) or 1.25e11)
    peaks = []
    for name, source in (("a", "builtin"), ("b", "moby-dick")):  # moby-dick: the quickstart's corpus
        fit(tmp_path / name, "--trainer.max_steps", "8", "--model.peak_flops", "null", "--data.source", source)
        out = capsys.readouterr().out
        peaks += re.findall(r"^MFU is measured against (.*) TFLOP/s per device \((.*)\)$", out, flags=re.MULTILINE)
    assert len(measured) == 1  # the second fit read the first one's measurement
    assert peaks[0][0] == peaks[1][0] == "0.125" and "measured now" in peaks[0][1] and "cached in" in peaks[1][1]

    sample = out.split("--- sample from the trained model ---\n", 1)[1].split("\n---\n", 1)[0]
    assert sample and "<|endoftext|>" not in sample and "\ufffd" not in sample
    root = tmp_path / "b"
    last, config = root / "checkpoints" / "last.ckpt", root / "lightning_logs" / "version_0" / "config.yaml"
    summary = out.split("\n---\n", 1)[1].splitlines()
    assert re.fullmatch(r"done: step 8, 1,024 tokens seen, in \d+ s", summary[0])  # 8 steps × 4 × 32 tokens
    assert re.fullmatch(r"val/loss \d+\.\d{4} \(perplexity [\d,]+\.\d\) at step 8", summary[1])
    assert summary[2:] == [
        f"checkpoint: {last}",
        f"logs: {config.parent} (config.yaml, hparams.yaml, TensorBoard events)",
        f"  tensorboard --logdir {root / 'lightning_logs'}",
        f'  gpt2-lightning generate --checkpoint {last} --prompt "The"',
        f"  gpt2-lightning fit --config {config} --ckpt_path last   # resume, after a stop (Ctrl-C, a kill, SIGTERM)",
    ]
    main(["fit", "--config", str(config), "--ckpt_path", "last"])  # the printed resume command runs as printed
    assert "done: step 8," in capsys.readouterr().out


def test_progress_bar_shows_tokens_per_second_and_closes_at_the_last_step(tmp_path):
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    ids = torch.randint(0, config.vocab_size, (16, config.block_size + 1), generator=torch.Generator().manual_seed(0))
    seen = []

    class Watch(StepProgressBar):
        def on_train_batch_end(self, trainer, pl_module, *args):
            super().on_train_batch_end(trainer, pl_module, *args)
            seen.append((trainer.global_step, self.train_progress_bar.disable,
                         self.get_metrics(trainer, pl_module).get("tokens/s")))

    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[TokenThroughput(window_size=2), Watch(refresh_rate=1)], default_root_dir=tmp_path)
    trainer.fit(GPT2LightningModule(config, peak_flops=1e11),
                train_dataloaders=DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=4))
    assert [(step, closed) for step, closed, _ in seen] == [(1, False), (2, False), (3, False), (4, True)]
    assert seen[0][2] is None and all(re.fullmatch(r"[\d,]+", rate) for _, _, rate in seen[1:])
    assert "rate" not in StepProgressBar.BAR_FORMAT  # tqdm's rate counts batches (it/s): tokens/s is in the postfix


def test_a_cached_cpu_peak_too_low_for_the_run_is_measured_again(tmp_path, monkeypatch, capsys):
    """A peak cached while other work loaded the machine (here 1 MFLOP/s) gives MFU > 1: measured again once, the
    higher rate kept in the cache, and no MFU above 1 logged."""
    cache = tmp_path / "peak.json"
    monkeypatch.setenv("GPT2_LIGHTNING_PEAK_CACHE", str(cache))
    cache.write_text(json.dumps({callbacks.cpu_key(): {"flops": 1e6, "measured": "2026-12-01"}}))
    monkeypatch.setattr(callbacks, "measure_cpu_peak_flops", lambda: 1e15)
    fit(tmp_path / "run", "--trainer.max_steps", "24", "--model.peak_flops", "null")  # the window refills after
    out = capsys.readouterr().out
    assert re.search(r"^MFU \d+\.\d\d > 1: the cached CPU peak \(0 GFLOP/s\) was measured on a busy machine; measured "
                     r"again: 1000000 GFLOP/s", out, flags=re.MULTILINE)
    assert json.loads(cache.read_text())[callbacks.cpu_key()]["flops"] == 1e15
    mfu = scalars(tmp_path / "run", "train/mfu")
    assert mfu and max(mfu.values()) < 1
