"""Training through PyTorch Lightning, one concept per module.

- `module`: the LightningModule (loss, AdamW groups, warmup + cosine schedule, logging, resume checks).
- `parallel`: FSDP2 sharding of a GPT, called from the module's `configure_model`.
- `checkpoint_io`: checkpoint saves that an interruption never destroys (single file and sharded).
- `callbacks`: what a run needs and Lightning lacks (step-triggered saves after logging, logged step = optimizer
  step, SIGTERM at a step boundary, token throughput and MFU).
- `console`: progress in optimizer steps, plain log lines without a terminal, the end-of-run sample.
- `run_dir`: one run per directory (lock, fresh-run refusal, sharded-save recovery, vetting what will be loaded).
- `lightning_compat`: every touch of Lightning's private API, each with the upstream issue it works around.

Imports run one way: this package uses the model, checkpoints and data; none of them imports it.
"""
