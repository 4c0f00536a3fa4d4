"""What Lightning 2.6.6 itself does on SIGTERM, as train/callbacks.PreemptionCheckpoint's docstring states it: the loop
stops at the end of the batch in which the signal arrived, saves nothing, and exits with status 0. (Our callback's
save and exit 143: tests/test_reliability.py.)"""

import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.train.module import GPT2LightningModule


def test_lightning_alone_stops_after_the_signalled_batch_saves_nothing_and_exits_0(tmp_path):
    class SignalAtStep2(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    config = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ids = torch.randint(0, 64, (40, 9), generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=10, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[SignalAtStep2()], accelerator="cpu")
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(GPT2LightningModule(config, warmup_steps=1),
                    train_dataloaders=DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=4))
    assert isinstance(stopped.value, SIGTERMException)
    assert stopped.value.code is None  # a SystemExit without a code: the process exits 0, "finished"
    assert trainer.global_step == 3  # the signalled batch (the third) completed its step, then the loop stopped
    assert not list(tmp_path.rglob("*.ckpt"))  # and nothing was saved
