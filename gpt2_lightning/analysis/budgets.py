"""How much each budget of `gpt2-lightning analyze` trains and measures: `tiny` (the test), `small`, `medium`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """What one analysis trains and measures; built by keyword, so that every number says what it sets."""

    name: str
    note: str  # what the budget is for, and how long it takes
    # probes
    probe_seeds: tuple[int, ...]
    recall_steps: int
    passkey_steps: int
    copy_steps: int
    probe_eval: int  # sequences per evaluated point
    # language model
    corpus: str  # "builtin" (offline, tiny) or "reference" (fetched once: gpt2_lightning.analysis.english)
    seeds: tuple[int, ...]
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int
    window: int
    steps: int
    uptrain_steps: int
    eval_batches: int
    passages: int
    # speed
    attention_lengths: tuple[int, ...]
    decode_contexts: tuple[int, ...]


_LM = dict(n_layer=4, n_head=8, n_embd=128, block_size=128, batch_size=16, vocab_size=4096, window=32)

BUDGETS = {
    "tiny": Budget(
        name="tiny", note="a smoke test (the test suite runs it): no finding means anything",
        probe_seeds=(1, 2), recall_steps=8, passkey_steps=8, copy_steps=8, probe_eval=32,
        corpus="builtin", seeds=(1, 2), n_layer=2, n_head=4, n_embd=32, block_size=32, batch_size=4, vocab_size=512,
        window=8, steps=8, uptrain_steps=4, eval_batches=2, passages=16,
        attention_lengths=(256, 512), decode_contexts=(64, 128)),
    "small": Budget(
        name="small", note="<= 30 minutes on 2 CPU cores",
        probe_seeds=(1, 2, 3), recall_steps=800, passkey_steps=500, copy_steps=300, probe_eval=256,
        corpus="reference", seeds=(1, 2, 3), **_LM, steps=200, uptrain_steps=80, eval_batches=8, passages=400,
        attention_lengths=(512, 1024, 2048, 4096, 8192), decode_contexts=(1024, 4096)),
    "medium": Budget(
        name="medium", note="<= 3 hours on 2 CPU cores",
        probe_seeds=(1, 2, 3, 4, 5), recall_steps=4000, passkey_steps=1000, copy_steps=600, probe_eval=512,
        corpus="reference", seeds=(1, 2, 3, 4, 5), **_LM, steps=1600, uptrain_steps=400, eval_batches=32,
        passages=1000, attention_lengths=(512, 1024, 2048, 4096, 8192, 16384),
        decode_contexts=(1024, 2048, 4096, 8192)),
}
