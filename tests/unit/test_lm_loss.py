"""The chunked LM-head loss against the plain `F.cross_entropy(logits)`: value, gradients, memory, precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.lm_loss import IGNORE_INDEX, chunked_cross_entropy
from gpt2_lightning.model import GPT


def _inputs(n: int = 300, c: int = 32, v: int = 500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g).requires_grad_()
    weight = (0.3 * torch.randn(v, c, generator=g)).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::7] = IGNORE_INDEX  # unscored rows, as the probes' targets have
    return hidden, weight, targets


def _value_and_grads(loss_fn, hidden, weight, targets, scale: float = 1.0):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, targets)
    (scale * loss).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("rows", [1, 64, 77, 300, 1000])
def test_equals_plain_cross_entropy_in_value_and_gradient(rows):
    hidden, weight, targets = _inputs()
    plain = _value_and_grads(lambda h, w, t: F.cross_entropy(h @ w.t(), t), hidden, weight, targets, scale=3.0)
    chunked = _value_and_grads(
        lambda h, w, t: chunked_cross_entropy(h, w, t, rows=rows), hidden, weight, targets, scale=3.0
    )
    for ours, reference in zip(chunked, plain):  # fp32 rounding only: atol well below the gradients' size
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_without_gradients_returns_the_same_loss():
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        reference = F.cross_entropy(hidden @ weight.t(), targets)
        assert torch.allclose(chunked_cross_entropy(hidden, weight, targets, rows=50), reference, rtol=1e-6)


def test_all_targets_ignored_gives_nan_like_cross_entropy():
    hidden, weight, targets = _inputs()
    targets[:] = IGNORE_INDEX
    assert F.cross_entropy(hidden @ weight.t(), targets).isnan()
    assert chunked_cross_entropy(hidden, weight, targets, rows=64).isnan()


def test_gpt_loss_equals_cross_entropy_of_its_logits_for_every_parameter():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=300))
    ids = torch.randint(0, 300, (3, 17))
    x, y = ids[:, :-1], ids[:, 1:]
    reference = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = model.loss(x, y)
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)
    for name, p in model.named_parameters():  # the tied wte/LM-head weight sums both of its gradients
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)


def test_gpt_loss_refuses_targets_of_another_shape():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50))
    with pytest.raises(ValueError, match=r"targets must have the shape of input_ids \(2, 8\), got \(2, 7\)"):
        model.loss(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long))


class _LargestTensor(TorchDispatchMode):
    """Records the most elements any single op output held."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_full_logits_never_exist():
    hidden, weight, targets = _inputs(n=400, c=16, v=1000)
    with _LargestTensor() as plain:
        F.cross_entropy(hidden @ weight.t(), targets).backward()
    with _LargestTensor() as chunked:
        chunked_cross_entropy(hidden, weight, targets, rows=100).backward()
    assert plain.largest == 400 * 1000  # the check sees the (N, V) logits when they exist
    assert chunked.largest == 100 * 1000  # one chunk's logits at most (the (V, C) weight gradient is smaller)


def test_bf16_autocast_matches_the_plain_loss_under_autocast():
    hidden, weight, targets = _inputs(n=256, c=64, v=800)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _value_and_grads(lambda h, w, t: F.cross_entropy((h @ w.t()).float(), t), hidden, weight, targets)
        chunked = _value_and_grads(
            lambda h, w, t: chunked_cross_entropy(h, w, t, rows=64), hidden, weight, targets
        )
    assert chunked[1].dtype == hidden.dtype and chunked[2].dtype == weight.dtype
    # both round the matmul inputs to bf16 (8 mantissa bits): agreement to bf16 precision, not fp32
    for ours, reference in zip(chunked, plain):
        torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-4)
