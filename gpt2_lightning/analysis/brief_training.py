"""A briefly trained model and its held-out quality: the reference that int8 and bf16 weights are measured against
(`benchmarks/bench_model.py` section (c), `tests/integration/test_quantized_decoding.py`).

Experiment support, not library: it lives beside the analysis, outside the core, so that the benchmark and the test
share one implementation. A few hundred AdamW steps on the builtin corpus give weights with a trained model's
structure (peaked logits), which random weights do not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt2_lightning.config import GPTConfig
from gpt2_lightning.corpus import builtin_documents
from gpt2_lightning.model import GPT
from gpt2_lightning.tokenizer import get_tokenizer


def builtin_token_split(heldout_fraction: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """The builtin corpus as GPT-2 token ids: (training tokens, the held-out tail)."""
    ids = torch.tensor(get_tokenizer().encode_ordinary("\n\n".join(builtin_documents())))
    cut = int(len(ids) * (1 - heldout_fraction))
    return ids[:cut], ids[cut:]


def train_briefly(config: GPTConfig, tokens: torch.Tensor, steps: int, batch_size: int = 8, seed: int = 0) -> GPT:
    """A GPT of `config` trained for `steps` AdamW steps on random windows of `tokens`: weights with the structure
    of a trained model (peaked logits), for measuring what quantization changes. Returned in eval mode."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    T = config.block_size
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - T - 1, (batch_size,))
        window = torch.stack([tokens[s : s + T + 1] for s in starts.tolist()])  # (B, T + 1)
        model.loss(window[:, :-1], window[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@torch.inference_mode()
def heldout_quality(model: GPT, tokens: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mean next-token loss, (N,) greedy predictions) over `tokens` cut into block_size windows."""
    T = model.config.block_size
    n = (len(tokens) - 1) // T
    x, y = tokens[: n * T].view(n, T), tokens[1 : n * T + 1].view(n, T)
    logits = model(x).float()  # (n, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item(), logits.argmax(-1).flatten()
