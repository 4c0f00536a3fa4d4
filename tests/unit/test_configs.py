"""configs/*.yaml: each is a base, a training mode or a variant whose claimed change takes effect, and
`fit --print_config` shows every model field (parsing only: no run)."""

import pytest
from helpers import CONFIGS

from gpt2_lightning.cli import main


def test_print_config_shows_every_model_field(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "gqa.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "n_kv_head: 2" in out and "pos_encoding: learned" in out and "sliding_window: null" in out

# What each variant config claims to change. A claim must take effect on every base it composes with: n_kv_head equal
# to n_head is plain multi-head attention, and a window as long as the block is full attention.
VARIANT_CLAIMS = {"rope.yaml": {"rope"}, "gqa.yaml": {"gqa"}, "swa.yaml": {"window"},
                  "all.yaml": {"rope", "gqa", "window"}}
BASE_CONFIGS = ("quickstart.yaml", "gpt2.yaml")
TRAINING_MODE_CONFIGS = ("ddp.yaml", "fsdp.yaml")  # strategies, not architectures


def test_every_config_is_a_base_a_training_mode_or_a_variant_with_a_claim():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names == set(VARIANT_CLAIMS) | set(BASE_CONFIGS) | set(TRAINING_MODE_CONFIGS)


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
    if config["sliding_window"] is not None and config["sliding_window"] < config["block_size"]:
        changed.add("window")
    assert changed == VARIANT_CLAIMS[variant]
