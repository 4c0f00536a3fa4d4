"""Section 4.4, GQA from pretrained weights: the seed-1 MHA baseline converted by `mha_to_gqa` and uptrained,
against GQA-2 trained from scratch for the same steps."""

from __future__ import annotations

from gpt2_lightning.analysis.budgets import Budget
from gpt2_lightning.analysis.lm_runs import eval_loss, lm_config, lm_data, lm_spec, train_lm
from gpt2_lightning.analysis.run_cache import RunCache
from gpt2_lightning.checkpoints import load, save
from gpt2_lightning.checkpoints.convert import mha_to_gqa

UPTRAIN_LR = 3e-4  # a tenth of the from-scratch peak: uptraining continues a trained model


def measure(budget: Budget, results: dict[str, list[dict]], cache: RunCache) -> dict[str, float]:
    """Validation losses of the MHA baseline, its conversion, the conversion uptrained, and GQA-2 from scratch."""
    seed = budget.seeds[0]
    data = lm_data(budget, seed)
    mha = load(results["baseline"][0]["weights"]).eval()
    converted = save(mha_to_gqa(mha, 2), cache.directory / "baseline-as-gqa2")
    config = lm_config(budget, {"n_kv_head": 2})
    uptrained, scratch = cache.directory / "gqa2-uptrained", cache.directory / "gqa2-scratch-short"
    cache.run(uptrained.name, lm_spec(budget, config, budget.uptrain_steps, init="baseline", seed=seed),
              lambda: train_lm(budget, config, seed, budget.uptrain_steps, uptrained, init_from=str(converted),
                               learning_rate=UPTRAIN_LR), uptrained)
    cache.run(scratch.name, lm_spec(budget, config, budget.uptrain_steps, seed=seed),
              lambda: train_lm(budget, config, seed, budget.uptrain_steps, scratch), scratch)
    n = budget.eval_batches
    return {"mha": eval_loss(mha, data, n), "converted": eval_loss(load(converted), data, n),
            "uptrained": eval_loss(load(uptrained).eval(), data, n),
            "scratch": eval_loss(load(scratch).eval(), data, n)}


def judge(found: dict[str, float]) -> bool:
    """Whether the uptrained conversion ended below GQA-2 from scratch (one seed: a comparison, not a test)."""
    return found["uptrained"] < found["scratch"]
