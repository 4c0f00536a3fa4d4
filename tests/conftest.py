"""Shared fixtures: GPT-2 checkpoints built locally by transformers, never fetched from the network."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported anywhere: tests never reach the Hub
# prepared (tokenized) data goes to a fresh directory per test session, never the user's cache
os.environ["GPT2_LIGHTNING_DATA"] = tempfile.mkdtemp(prefix="gpt2-lightning-data-")

import pytest
import torch
from safetensors.torch import save_file

# (n_layer, n_head, n_embd, n_positions, vocab_size): odd sizes so a transposed or swapped weight cannot fit.
SHAPES = {
    "tiny": (2, 4, 64, 48, 211),
    "deep-narrow": (5, 2, 24, 40, 97),
    "wide-heads": (1, 6, 96, 64, 300),
}


def greedy_by_recompute(model, input_ids, max_new_tokens):
    """Greedy decoding the slow, obviously-correct way: the whole forward again for every token."""
    ids = input_ids
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def make_hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=48, vocab_size=211, seed=0):
    """A transformers GPT2LMHeadModel with random weights, LayerNorms and biases moved off their init values."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=vocab_size,
        bos_token_id=0, eos_token_id=0, initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def save_layout(model, directory, layout):
    """Write `model` as transformers or the Hub would: every key layout `GPT.from_pretrained` must read.

    - "transformers": `save_pretrained` (transformer.* keys, safetensors, lm_head dropped as tied);
    - "hub": GPT2Model keys without the prefix plus the attn.bias / attn.masked_bias buffers, safetensors;
    - "bin": pytorch_model.bin with transformer.* keys and an explicit copy of lm_head.weight.
    """
    model.config.save_pretrained(directory)
    if layout == "transformers":
        model.save_pretrained(directory)
    elif layout == "hub":
        n = model.config.n_positions
        tensors = {k.removeprefix("transformer."): v.contiguous() for k, v in model.state_dict().items()
                   if k != "lm_head.weight"}
        for i in range(model.config.n_layer):
            tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        save_file(tensors, os.path.join(directory, "model.safetensors"))
    elif layout == "bin":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    else:
        raise ValueError(layout)
    return directory


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: (layout, shape name) → (transformers model, directory holding its checkpoint)."""

    def build(layout="transformers", shape="tiny", seed=0):
        model = make_hf_model(*SHAPES[shape], seed=seed)
        directory = tmp_path / f"{shape}-{layout}-{seed}"
        directory.mkdir()
        return model, save_layout(model, directory, layout)

    return build
