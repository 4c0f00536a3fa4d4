"""Loading transformers / Hub GPT-2 checkpoints exactly, saving them back, and refusing bad ones."""

import json

import pytest
import torch

from gpt2_lightning.checkpoints import load
from gpt2_lightning.checkpoints.hf import save_hf
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.model import GPT

ATOL = 1e-4  # the brief's bar for float32 logits against transformers


def max_logit_diff(ours, theirs, input_ids):
    with torch.no_grad():
        return (ours(input_ids) - theirs(input_ids).logits).abs().max().item()


@pytest.mark.parametrize("layout", ["transformers", "hub", "bin"])
@pytest.mark.parametrize("shape", ["tiny", "deep-narrow", "wide-heads"])
def test_from_pretrained_matches_transformers(hf_checkpoint, layout, shape):
    reference, directory = hf_checkpoint(layout, shape)
    model = load(directory)
    assert not model.training
    assert model.config.n_layer == reference.config.n_layer and model.config.n_embd == reference.config.n_embd
    vocab, n_pos = reference.config.vocab_size, reference.config.n_positions
    input_ids = torch.randint(0, vocab, (3, n_pos), generator=torch.Generator().manual_seed(1))
    assert max_logit_diff(model, reference, input_ids) <= ATOL


def test_from_pretrained_accepts_str_and_path(hf_checkpoint):
    _, directory = hf_checkpoint()
    a, b = load(str(directory)), load(directory)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("n_inner", [None, 100])  # GPT-2's 4·n_embd MLP, and a widened one (transformers' n_inner)
def test_save_hf_is_read_by_transformers_and_round_trips(tmp_path, n_inner):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=150, block_size=40, n_layer=3, n_head=3, n_embd=48, dropout=0.1,
                          n_inner=n_inner)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases and LayerNorms off their init values
    save_hf(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]

    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert theirs.transformer.h[0].mlp.c_fc.nf == (n_inner or 4 * 48)
    input_ids = torch.randint(0, 150, (2, 40))
    assert max_logit_diff(model, theirs, input_ids) <= ATOL

    again = load(tmp_path / "out")
    assert again.config == model.config  # every field, dropout included (it used to reload as 0.0)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "variant, message",
    [
        ({"bias": False}, "bias=False"),
        ({"pos_encoding": "rope"}, "pos_encoding='rope'"),
        ({"n_kv_head": 1}, "n_kv_head=1"),
        ({"sliding_window": 4}, "sliding_window=4"),
    ],
)
def test_save_hf_refuses_what_transformers_cannot_represent(tmp_path, variant, message):
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8, **variant))
    with pytest.raises(CheckpointError, match=f"cannot represent {message}.*checkpoints.save .*instead"):
        save_hf(model, tmp_path / "variant")
    assert not (tmp_path / "variant").exists()


# ---- strictness: every way a checkpoint can be wrong gives an error listing what is wrong -------------------


def edit_tensors(directory, edit):
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_keys_are_listed(hf_checkpoint):
    _, directory = hf_checkpoint()
    edit_tensors(directory, lambda t: (t.pop("transformer.h.1.mlp.c_fc.bias"), t.pop("transformer.ln_f.weight")))
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\.h\.1\.mlp\.c_fc\.bias, transformer\.ln_f"):
        load(directory)


def test_unexpected_keys_are_listed(hf_checkpoint):
    _, directory = hf_checkpoint()
    edit_tensors(directory, lambda t: t.update({"transformer.h.0.attn.rotary": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: transformer\.h\.0\.attn\.rotary"):
        load(directory)


def test_shape_mismatch_is_listed(hf_checkpoint):
    _, directory = hf_checkpoint()
    edit_tensors(directory, lambda t: t.update({"transformer.h.0.mlp.c_fc.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: transformer\.h\.0\.mlp\.c_fc\.bias \(7,\) "
                                              r"\(model expects \(256,\)\)"):
        load(directory)


def test_config_that_disagrees_with_the_tensors(hf_checkpoint):
    _, directory = hf_checkpoint()  # 2 layers, 64 wide, vocab 211
    edit_config(directory, n_layer=3, vocab_size=300)
    with pytest.raises(CheckpointError) as err:
        load(directory)
    message = str(err.value)
    assert "n_layer=3" in message and "missing keys: transformer.h.2." in message
    assert "transformer.wte.weight (211, 64) (model expects (300, 64))" in message


def test_untied_lm_head_is_refused(hf_checkpoint):
    _, directory = hf_checkpoint("bin")
    path = directory / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from transformer.wte.weight"):
        load(directory)


def test_truncated_safetensors_is_reported(hf_checkpoint):
    _, directory = hf_checkpoint()
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors could not be read .* truncated or corrupt"):
        load(directory)
    assert path.exists()  # reported, never deleted


def test_corrupt_pytorch_bin_is_reported(hf_checkpoint):
    _, directory = hf_checkpoint("bin")
    (directory / "pytorch_model.bin").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin could not be read"):
        load(directory)


def test_bin_with_pickled_code_is_refused(hf_checkpoint):
    _, directory = hf_checkpoint("bin")
    torch.save({"transformer.wte.weight": torch.zeros(1), "payload": print}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="could not be read"):  # weights_only=True rejects code
        load(directory)


def test_missing_files(tmp_path, hf_checkpoint):
    with pytest.raises(CheckpointError, match="has no config.json"):
        load(tmp_path)
    _, directory = hf_checkpoint()
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load(directory)


def test_invalid_or_unsupported_config_json(hf_checkpoint):
    _, directory = hf_checkpoint()
    (directory / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", "activation_function": "relu",
                                                       "layer_norm_epsilon": 1e-6}))
    with pytest.raises(CheckpointError, match="activation_function='relu'.*layer_norm_epsilon=1e-06"):
        load(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", "resid_pdrop": 0.1, "attn_pdrop": 0.0}))
    with pytest.raises(CheckpointError, match=r"attn_pdrop of \[0.0, 0.1\] \(one dropout rate for all\)"):
        load(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="'llama' model, not GPT-2"):
        load(directory)


# ---- hub ids: fetched into checkpoints/<name>/, or a clear message offline -----------------------------------


def test_hub_id_offline_says_how_to_get_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_LIGHTNING_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        load("gpt2")
    message = str(err.value)
    assert "could not fetch 'openai-community/gpt2' from the Hugging Face Hub" in message
    assert "gpt2-lightning download gpt2" in message and "local directory" in message


def test_hub_id_uses_weights_already_under_checkpoints(tmp_path, monkeypatch, hf_checkpoint):
    reference, directory = hf_checkpoint()
    directory.rename(tmp_path / "gpt2-medium")
    monkeypatch.setenv("GPT2_LIGHTNING_CHECKPOINTS", str(tmp_path))
    model = load("openai-community/gpt2-medium")
    input_ids = torch.randint(0, 211, (1, 10))
    assert max_logit_diff(model, reference, input_ids) <= ATOL


def test_name_that_is_neither_a_directory_nor_a_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither a directory nor a hub id.*gpt2-medium"):
        load("not-a-model")
    with pytest.raises(CheckpointError, match="no such file or directory \\(a local path, not a hub id\\)"):
        load(str(tmp_path / "no" / "such" / "dir"))


def test_an_unreachable_hub_fails_at_once_naming_offline_mode_and_leaves_nothing(tmp_path, monkeypatch):
    import socket
    import time

    from gpt2_lightning.hub import download

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")  # as a user without it: the probe, not the library, must answer
    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="huggingface.co is unreachable.*HF_HUB_OFFLINE=1"):
        download("gpt2", tmp_path / "gpt2")
    assert time.perf_counter() - started < 5 and not (tmp_path / "gpt2").exists()
