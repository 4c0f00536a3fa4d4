"""FSDP2 sharding of a GPT: each transformer block its own unit, then the root (embedding, tied LM head, ln_f).

The token embedding and the LM head share one weight, so they must live in the same `fully_shard` group; leaving
both to the root group keeps the tie intact after sharding and after a reload. Called from the LightningModule's
`configure_model` under `ModelParallelStrategy`; `is_sharded` tells its DTensors apart.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from gpt2_lightning.model import GPT


def shard_model(model: GPT, mesh: DeviceMesh, bf16: bool = False) -> GPT:
    """Shard `model` in place over `mesh` (FSDP2). bf16=True keeps bf16 parameters, reducing gradients in fp32."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mesh": mesh, **({"mp_policy": policy} if policy is not None else {})}
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    # the training loss gathers and frees the root's weights as forward does
    register_fsdp_forward_method(model, "loss")
    return model


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor (a shard of a parameter under FSDP2), whose full value needs a collective."""
    return isinstance(tensor, DTensor)
