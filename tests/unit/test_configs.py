"""configs/*.yaml: each is a base, a training mode or a variant whose claimed change takes effect, and
`fit --print_config` shows every model field (parsing only: no run)."""

import pytest
from helpers import CONFIGS

from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig


def test_print_config_shows_every_model_field(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "gqa.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "n_kv_head: 2" in out and "pos_encoding: learned" in out and "sliding_window: null" in out

# What each variant config claims to change. A claim must take effect on every base it composes with: n_kv_head equal
# to n_head is plain multi-head attention, and a window as long as the block is full attention.
VARIANT_CLAIMS = {"rope.yaml": {"rope"}, "gqa.yaml": {"gqa"}, "swa.yaml": {"window"},
                  "all.yaml": {"rope", "gqa", "window"}, "hybrid.yaml": {"hybrid"}}
BASE_CONFIGS = ("quickstart.yaml", "gpt2.yaml")
TRAINING_MODE_CONFIGS = ("ddp.yaml", "fsdp.yaml")  # strategies, not architectures
SCALE_CONFIGS = ("gpt2-8gpu.yaml",)  # a base's recipe on more devices


def test_every_config_is_a_base_a_training_mode_a_scale_or_a_variant_with_a_claim():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names == set(VARIANT_CLAIMS) | set(BASE_CONFIGS) | set(TRAINING_MODE_CONFIGS) | set(SCALE_CONFIGS)


def resolved(capsys, *configs: str) -> dict:
    import yaml

    with pytest.raises(SystemExit):
        main(["fit", *[a for c in configs for a in ("--config", str(CONFIGS / c))], "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def test_the_8_gpu_config_keeps_gpt2_yamls_tokens_per_step_and_validation_interval(capsys):
    """Run as written on 8 GPUs, the recipe trains with gpt2.yaml's batch and validates as often, in optimizer steps."""
    def per_step(config: dict, world_size: int) -> tuple[int, float]:
        trainer, data = config["trainer"], config["data"]
        tokens = data["batch_size"] * config["model"]["config"]["block_size"] * trainer["accumulate_grad_batches"]
        return tokens * world_size, trainer["val_check_interval"] / trainer["accumulate_grad_batches"]

    one_gpu = resolved(capsys, "gpt2.yaml")
    eight = resolved(capsys, "gpt2.yaml", "ddp.yaml", "gpt2-8gpu.yaml")
    assert eight["trainer"]["devices"] == 8 and one_gpu["trainer"]["devices"] == 1
    assert per_step(eight, 8) == per_step(one_gpu, 1) == (491_520, 2000)


@pytest.mark.parametrize("base", BASE_CONFIGS)
@pytest.mark.parametrize("variant", sorted(VARIANT_CLAIMS))
def test_variant_configs_change_the_architecture_they_claim(variant, base, capsys):
    import yaml

    args = [a for c in (base, variant) for a in ("--config", str(CONFIGS / c))]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)["model"]["config"]
    changed = set()
    if config["pos_encoding"] == "rope":
        changed.add("rope")
    if config["n_kv_head"] is not None and config["n_kv_head"] < config["n_head"]:
        assert config["n_head"] % config["n_kv_head"] == 0
        changed.add("gqa")
    windows = GPTConfig(**config).layer_windows
    local = [w is not None and w < config["block_size"] for w in windows]
    if all(local):
        changed.add("window")
    elif any(local):
        changed.add("hybrid")  # some layers local, the others global
    assert changed == VARIANT_CLAIMS[variant]
