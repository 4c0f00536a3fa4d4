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
    # associative recall (section 3.1): 6 widths × recall_lrs on the first of recall_seeds, the chosen rate on the
    # others, the window control on every seed; runs of at most recall_steps, each stopping once converged
    recall_steps: int
    recall_lrs: tuple[float, ...]
    recall_seeds: tuple[int, ...]
    passkey_steps: int
    copy_steps: int
    probe_eval: int  # sequences per evaluated point
    # RoPE's resolution (sections 3.3–3.4): 14 configurations of the copy (copy_steps) × rope_seeds, and 2 of
    # random-offset induction (induction_steps) × induction_seeds
    rope_seeds: tuple[int, ...]
    induction_steps: int
    induction_seeds: tuple[int, ...]
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
    # the GQA ladder (section 4.4): every rung × ladder_seeds for ladder_steps; at (steps, a subset of seeds) its
    # baseline and GQA-2 runs are section 4's
    ladder_steps: int
    ladder_seeds: tuple[int, ...]
    uptrain_seeds: tuple[int, ...]  # GQA uptraining (section 4.4) from section 4's runs of these seeds
    eval_batches: int
    passages: int
    # windows where they bind (section 4.5): the language-model shape, RoPE, at a block several times the reaches
    windows_block: int
    windows_sizes: tuple[int, int]  # the small and the large uniform window
    windows_batch: int
    windows_steps: int
    windows_seeds: tuple[int, ...]
    windows_eval_batches: int  # validation batches at each of the 8 validations of a run
    # speed
    attention_lengths: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    decode_repeats: int  # repeats of 16 decoded tokens per point (mean and 95% interval)


# Section 4.5 (windows where they bind) priced against the ~0.19 s step (block 128 × batch 16) of the shape below on
# 2 free cores, measured side by side with it on the shared machine (2026-12-02, load 5-7, every timing ~8x a free
# machine's): a training step at block 512 × batch 2 took 0.7-1.0x that step, at block 256 × batch 4 0.3-0.6x; a
# forward pass over the 32 held-out windows 2.5x (block 512) and 1.2x (256) one over 32 × 128. So on 2 free cores a
# medium run is 300 steps × ~0.2 s + validation ~2 s + evaluation (11 such passes) ~5 s + setup ~3 s ≈ 70 s: 15 runs
# ≈ 18 min, ≈ 26 min with a 1.5x margin; small: 10 runs × (150 × ~0.1 s + ~6 s) ≈ 3.5 min, ≈ 5 min with the margin;
# tiny: ~20 s.
_LM = dict(n_layer=4, n_head=8, n_embd=128, block_size=128, batch_size=16, vocab_size=4096, window=32)
# The GQA ladder and uptraining (section 4.4) priced at ~0.19 s per optimizer step of this shape on 2 free cores
# (11,069 tokens/s = 0.185 s, validation included, measured by the earlier analysis); one torch thread beside another
# job runs it at ~2,500 tokens/s (measured 2026-12-02). Section 4 runs the ladder's steps and seeds, so its MHA and
# GQA-2 runs are the ladder's: medium is 10 configurations (section 4's five and the ladder's five others) × 4 seeds ×
# 320 steps = 12,800 steps ≈ 41 min, uptraining 2 seeds × 5 arms × 64 steps ≈ 2 min, plus validations. Section 4 at
# 5 seeds × 1,600 steps (~130 min) or 4 × 480 (~61 min) did not fit 3 hours beside the other sections. 4 seeds of
# fewer steps rather than 3 of more for the same time: the paired MDE is 2.13 sd of the per-seed differences at 4
# seeds and 3.26 at 3, so 3 longer runs win only if that sd falls by a third (unlikely for runs paired by data order
# and initialisation). small: 7 × 3 × 120 + 2 × 5 × 40 = 2,920 steps ≈ 9 min.
# tiny: seconds (its ladder is section 4's runs plus 3 rungs × 2 seeds of 8 steps; uptraining one seed, 5 arms).

# Sections 3.3–3.4 (RoPE's resolution), measured on this machine (2026-12-02). With the 2 cores free, a 1,000-step
# induction run took 40-60 s (~50 ms a step, learning-curve points included); a copy run costs that per step plus
# ~3 s of setup and final evaluation. medium: 14 copy runs × 5 seeds × (3 + 0.05 × 180) ≈ 14 min + induction
# 2 × 3 seeds × ~50 s ≈ 5 min ≈ 19 min. Shared with 3 other jobs (load 2-4) the same medium section took 42 min
# (the 70 copy runs 21 min; one induction run 9 min, two others 1 min as the load came and went): two torch
# threads on a contended core slow these small models many-fold. small: 14 × 2 × (3 + 0.06 × 80) + 2 × (3 + 5)
# ≈ 4 min (336 s measured under load at copy_steps 100, induction_steps 200); tiny: 16 runs of 8 steps ≈ 16 s.
# Five seeds at medium because a log-rank test of 5 runs against 5 that do not overlap gives p = 0.0018, which
# survives Holm over the section's 8 comparisons (4 against 4: p = 0.0067, which does not); 180 steps because
# learned positions learn the copy by ~50 and RoPE at head_dim 8 by ~120-170 (at 100 steps RoPE at base 10⁴
# learned it at no head_dim). Induction at a random offset formed with RoPE at ~750 of 1,000 steps in 2 seeds of 3,
# not with learned positions.
BUDGETS = {
    "tiny": Budget(
        name="tiny", note="a smoke test (the test suite runs it): no finding means anything",
        windows_block=64, windows_sizes=(4, 16), windows_batch=2, windows_steps=4, windows_seeds=(1, 2),
        windows_eval_batches=1,
        recall_steps=8, recall_lrs=(3e-3,), recall_seeds=(1,),
        probe_seeds=(1, 2), passkey_steps=8, copy_steps=8, probe_eval=32,
        rope_seeds=(1,), induction_steps=8, induction_seeds=(1,),
        corpus="builtin", seeds=(1, 2), n_layer=2, n_head=4, n_embd=32, block_size=32, batch_size=4, vocab_size=512,
        window=8, steps=8, ladder_steps=8, ladder_seeds=(1, 2), uptrain_seeds=(1,), eval_batches=2, passages=16,
        attention_lengths=(256, 512), decode_contexts=(64, 128), decode_repeats=2),
    "small": Budget(
        name="small", note="<= 30 minutes on 2 CPU cores",
        windows_block=256, windows_sizes=(8, 32), windows_batch=4, windows_steps=150, windows_seeds=(1, 2),
        windows_eval_batches=2,
        recall_steps=300, recall_lrs=(1.5e-3, 3e-3), recall_seeds=(1, 2),
        probe_seeds=(1, 2, 3), passkey_steps=500, copy_steps=80, probe_eval=256,
        rope_seeds=(1, 2), induction_steps=100, induction_seeds=(1,),
        corpus="reference", seeds=(1, 2, 3), **_LM, steps=200, ladder_steps=120, ladder_seeds=(1, 2, 3),
        uptrain_seeds=(1, 2), eval_batches=8, passages=400,
        attention_lengths=(512, 1024, 2048, 4096, 8192), decode_contexts=(1024, 4096), decode_repeats=3),
    "medium": Budget(
        name="medium", note="<= 3 hours on 2 CPU cores",
        windows_block=512, windows_sizes=(16, 64), windows_batch=2, windows_steps=300, windows_seeds=(1, 2, 3),
        windows_eval_batches=4,
        recall_steps=1200, recall_lrs=(1.5e-3, 3e-3, 6e-3), recall_seeds=(1, 2, 3),
        probe_seeds=(1, 2, 3, 4, 5), passkey_steps=1000, copy_steps=180, probe_eval=512,
        rope_seeds=(1, 2, 3, 4, 5), induction_steps=1000, induction_seeds=(1, 2, 3),
        corpus="reference", seeds=(1, 2, 3, 4), **_LM, steps=320, ladder_steps=320, ladder_seeds=(1, 2, 3, 4),
        uptrain_seeds=(1, 2), eval_batches=32,
        passages=1000, attention_lengths=(512, 1024, 2048, 4096, 8192, 16384),
        decode_contexts=(1024, 2048, 4096, 8192), decode_repeats=5),
}
