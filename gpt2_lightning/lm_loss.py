"""The training loss through the LM head, computed in row chunks: the (N, V) logits never exist whole.

With GPT-2's 50,257-word vocabulary the logits of a batch are the largest tensors of a training step: at the
124M shape and 12 × 1024 tokens, 2.5 GB in float32, and the plain `F.cross_entropy(logits)` keeps them, their
log-softmax and their gradient alive together. Here each chunk of rows gets its logits, its share of the loss
and — when gradients are wanted — its gradients with respect to the hidden states and the LM head weight at
once (the approach of Liger Kernel's fused linear cross-entropy), so backward has nothing left to do but scale
them. The arithmetic is the plain loss's: the same matmuls, a float32 softmax, a mean over scored rows.

Shape legend: N rows (B·T positions), C n_embd, V vocab_size, R rows per chunk.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # targets equal to this are not scored (F.cross_entropy's default)


def chunk_rows(vocab_size: int, budget_bytes: int = 64 * 2**20) -> int:
    """Rows per chunk such that one chunk's float32 logits take about `budget_bytes` (at least 1 row)."""
    return max(1, budget_bytes // (4 * vocab_size))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's where it is on for this device, else the hidden states'."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


def _chunk_loss(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: (R, C) states, (V, C) weight, (R,) targets and scored mask → (summed loss, (R, V) float32
    log-probabilities). One fused log-softmax kernel: fewer passes over the chunk than logsumexp + subtract."""
    log_probs = torch.log_softmax((h @ w.t()).float(), dim=-1)  # (R, V)
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)  # (R,)
    return -(picked * scored).sum(), log_probs


def _chunked(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, with_grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(mean loss, d loss/d hidden, d loss/d weight in float32), chunk by chunk; the gradients only `with_grads`."""
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        h_all, w = hidden.to(dtype), weight.to(dtype)  # (N, C), (V, C)
        scored = targets != IGNORE_INDEX  # (N,)
        scale = 1.0 / scored.sum().float()  # a tensor: no host sync on an accelerator
        safe_targets = torch.where(scored, targets, 0)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grads else None  # (N, C)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grads else None
        for start in range(0, hidden.size(0), rows):
            chunk = slice(start, start + rows)
            h, t, keep = h_all[chunk], safe_targets[chunk], scored[chunk]  # (R, C), (R,), (R,)
            chunk_loss, log_probs = _chunk_loss(h, w, t, keep)
            loss_sum += chunk_loss
            if not with_grads:
                continue
            # d(mean loss)/d(logits) = (softmax - one_hot(target)) / n_scored on scored rows, 0 elsewhere
            grad_logits = log_probs.exp_()  # (R, V), reusing the log-probabilities' memory
            grad_logits.scatter_add_(1, t[:, None], torch.full_like(t, -1, dtype=grad_logits.dtype)[:, None])
            grad_logits.mul_((keep * scale)[:, None])
            g = grad_logits.to(dtype)
            grad_hidden[chunk] = g @ w  # (R, C)
            if g.dtype == grad_weight.dtype:
                grad_weight.addmm_(g.t(), h)  # (V, C), accumulated in place
            else:  # low-precision matmul, float32 accumulation
                grad_weight += g.t() @ h
    return loss_sum * scale, grad_hidden, grad_weight


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; gradients computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        loss, grad_hidden, grad_weight = _chunked(hidden, weight, targets, rows, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, over targets != -100.

    hidden (N, C), weight (V, C) (the LM head's), targets (N,) → a scalar; `rows` per chunk defaults to
    `chunk_rows(V)`. Equal to `F.cross_entropy(hidden @ weight.T, targets)` in value and gradient within float32
    rounding. Without gradients (evaluation) only the loss is computed, chunk by chunk.
    """
    rows = rows or chunk_rows(weight.size(0))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets, rows)
    return _chunked(hidden, weight, targets, rows, with_grads=False)[0]
