"""RoPE, grouped-query and sliding-window attention, alone and combined: properties that could fail."""

import itertools

import pytest
import torch
from helpers import greedy_by_recompute

from gpt2_lightning.attention import attention, banded_attention, flex_window_attention, reference_attention
from gpt2_lightning.checkpoints import load, save
from gpt2_lightning.checkpoints.convert import mha_to_gqa
from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.errors import CheckpointError
from gpt2_lightning.generate import KVCache, Sampling, generate
from gpt2_lightning.model import GPT
from gpt2_lightning.rope import apply_rope, rope_frequencies, rope_tables

N_LAYER, N_HEAD, WINDOW, VOCAB, BLOCK = 2, 4, 3, 61, 32
HYBRID = [WINDOW, None]  # layer 0 local, layer 1 global: a 1:1 local:global model (Gemma 2's pattern)
# pos × MHA/GQA/MQA × full / window / hybrid
COMBOS = list(itertools.product(["learned", "rope"], [None, 2, 1], [None, WINDOW, HYBRID]))
COMBO_IDS = [f"{p}-kv{k or N_HEAD}-w{'hybrid' if isinstance(w, list) else w or 'full'}" for p, k, w in COMBOS]


def variant(pos_encoding="learned", n_kv_head=None, sliding_window=None, seed=0, scale=1.0, **overrides):
    """A small model of the variant; `scale` > 1 spreads its predictions so greedy decoding does not stall."""
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=VOCAB, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, n_embd=32,
        pos_encoding=pos_encoding, n_kv_head=n_kv_head, sliding_window=sliding_window, **overrides,
    )
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1).mul_(scale)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


# ---- properties of every combination -------------------------------------------------------------------------


@pytest.mark.parametrize("pos, kv, w", COMBOS, ids=COMBO_IDS)
def test_causality(pos, kv, w):
    model = variant(pos, kv, w)
    x = torch.randint(0, VOCAB, (2, 24))
    for j in (0, 11, 23):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % VOCAB
        a, b = logits(model, x), logits(model, y)
        assert torch.equal(a[:, :j], b[:, :j])
        assert (a[:, j] - b[:, j]).abs().max() > 1e-4


@pytest.mark.parametrize("pos, kv", list(itertools.product(["learned", "rope"], [None, 2, 1])))
def test_window_locality_and_position_dependence(pos, kv):
    """With L layers and window w the last logits see exactly the last L·(w-1)+1 tokens."""
    model = variant(pos, kv, WINDOW)
    field = N_LAYER * (WINDOW - 1) + 1
    x = torch.randint(0, VOCAB, (1, 20))
    outside, inside = x.clone(), x.clone()
    outside[0, : 20 - field] = torch.randint(0, VOCAB, (20 - field,))  # everything before the receptive field
    inside[0, 20 - field] = (inside[0, 20 - field] + 1) % VOCAB
    last = logits(model, x)[0, -1]
    torch.testing.assert_close(logits(model, outside)[0, -1], last, atol=1e-5, rtol=0)
    assert (logits(model, inside)[0, -1] - last).abs().max() > 1e-4

    # the same tail at another absolute position: RoPE cannot tell, learned positions can
    shifted = torch.cat([torch.randint(0, VOCAB, (1, 7)), x], dim=1)  # tail now ends at position 26, not 19
    moved = logits(model, shifted)[0, -1]
    if pos == "rope":
        torch.testing.assert_close(moved, last, atol=1e-5, rtol=1e-5)
    else:
        assert (moved - last).abs().max() > 1e-3


@pytest.mark.parametrize("pos, kv", list(itertools.product(["learned", "rope"], [None, 2])))
def test_window_at_least_the_sequence_equals_full_attention(pos, kv):
    full = variant(pos, kv, None)
    x = torch.randint(0, VOCAB, (2, 20))
    for w in (20, BLOCK, 10 * BLOCK):  # a window longer than block_size is allowed
        windowed = variant(pos, kv, w)
        windowed.load_state_dict(full.state_dict())
        torch.testing.assert_close(logits(windowed, x), logits(full, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pos, w", list(itertools.product(["learned", "rope"], [None, WINDOW])))
def test_n_kv_head_equal_to_n_head_is_mha(pos, w):
    mha, explicit = variant(pos, None, w), variant(pos, N_HEAD, w, seed=1)
    explicit.load_state_dict(mha.state_dict())  # same names and shapes
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(logits(explicit, x), logits(mha, x))


def test_rope_scores_depend_only_on_relative_position():
    inv_freq = rope_frequencies(16, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cos_m, sin_m = rope_tables(inv_freq, torch.tensor([m]))
        cos_n, sin_n = rope_tables(inv_freq, torch.tensor([n]))
        return (apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum().item()

    for m, n, shift in [(5, 2, 100), (0, 0, 3000), (40, 41, 777)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3  # and they do depend on m - n


def test_rope_rotates_halves_like_llama():
    """Rotate-half layout: channel i pairs with channel i + hs/2, rotated by m·θ_i."""
    x = torch.zeros(1, 1, 1, 8)
    x[..., 1] = 1.0  # the x1 half, frequency index 1
    cos, sin = rope_tables(rope_frequencies(8, theta=100.0), torch.tensor([3]))
    y = apply_rope(x, cos, sin)[0, 0, 0]
    angle = torch.tensor(3 * 100.0 ** (-2 / 8))
    torch.testing.assert_close(y[1], angle.cos())
    torch.testing.assert_close(y[5], angle.sin())  # rotated into the paired channel of the x2 half
    assert y.abs().sum() - y[1].abs() - y[5].abs() < 1e-7


# ---- the fast sliding-window path against the reference ------------------------------------------------------


@pytest.mark.parametrize(
    "T, S, w, block, n_kv",
    [
        (64, 64, 8, None, 4),  # T a multiple of the block
        (70, 70, 8, None, 2),  # ragged last block, GQA
        (50, 50, 1, None, 1),  # window 1 attends to itself only, MQA
        (37, 37, 5, 4, 4),  # block smaller than the window
        (40, 40, 16, 64, 4),  # block larger than T
        (30, 45, 10, None, 2),  # queries after 15 cached positions (prefill into a cache)
        (20, 22, 30, None, 4),  # window longer than everything
    ],
)
def test_banded_attention_equals_reference(T, S, w, block, n_kv):
    torch.manual_seed(T + S + w)
    q = torch.randn(2, 4, T, 8)
    k, v = torch.randn(2, n_kv, S, 8), torch.randn(2, n_kv, S, 8)
    expected = reference_attention(q, k, v, w)
    torch.testing.assert_close(banded_attention(q, k, v, w, block=block), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, w), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_a_decode_step_reads_each_key_value_head_once_and_equals_reference(monkeypatch, n_kv):
    """Issue 23, item 5: CPU SDPA's enable_gqa expands K and V to every query head, so a GQA/MQA decode step read
    n_head / n_kv copies of its cache; the step must attend per key/value group (no expansion), exactly."""
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, n_kv, 37, 8), torch.randn(2, n_kv, 37, 8)
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.size(1), k.size(1), kwargs.get("enable_gqa", False)))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    y = attention(q, k, v)
    assert calls == [(n_kv, n_kv, False)]  # one attention per key/value head: nothing expanded
    torch.testing.assert_close(y, reference_attention(q, k, v), atol=1e-6, rtol=1e-5)


def test_banded_attention_gradients_equal_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8, requires_grad=True) for _ in range(3))
    banded_attention(q, k, v, 6).square().sum().backward()
    fast = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference_attention(q, k, v, 6).square().sum().backward()
    for a, t in zip(fast, (q, k, v)):
        torch.testing.assert_close(a, t.grad, atol=1e-5, rtol=1e-5)


def _qkv_grads(fn, q, k, v):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    out.square().sum().backward()
    return [out.detach(), *(t.grad.clone() for t in (q, k, v))]


@pytest.mark.parametrize("S, n_kv", [(256, 2), (200, 4)], ids=["prefill-gqa", "after-56-cached"])
def test_flex_window_attention_equals_reference(S, n_kv):
    """The GPU kernel for windows, run compiled on this CPU (forward only: Flex has no CPU backward; the GPU test
    below checks gradients)."""
    torch.manual_seed(S)
    T, w = 144, 24
    q, k, v = torch.randn(1, 4, T, 16), torch.randn(1, n_kv, S, 16), torch.randn(1, n_kv, S, 16)
    expected = reference_attention(q, k, v, w)
    torch.testing.assert_close(flex_window_attention(q, k, v, w), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: on CPUs windows take the banded kernel")
def test_window_attention_on_a_gpu_takes_flex_and_equals_reference(monkeypatch):
    import gpt2_lightning.attention as attention_module

    calls = []
    monkeypatch.setattr(attention_module, "flex_window_attention",
                        lambda *a: calls.append(1) or flex_window_attention(*a))
    torch.manual_seed(0)
    q = torch.randn(2, 12, 2048, 64, device="cuda", requires_grad=True)
    k, v = (torch.randn(2, 4, 2048, 64, device="cuda", requires_grad=True) for _ in range(2))
    fast = _qkv_grads(lambda *a: attention(*a, 256), q, k, v)
    assert calls, "a windowed attention on a CUDA device did not use FlexAttention"
    reference = _qkv_grads(lambda *a: reference_attention(*a, 256), q, k, v)
    for ours, expected in zip(fast, reference):  # TF32 / kernel accumulation order on the GPU
        torch.testing.assert_close(ours, expected, atol=2e-3, rtol=2e-3)


# ---- KV cache: equal to recomputing the full forward, for every combination ----------------------------------


@pytest.mark.parametrize("pos, kv, w", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("prompt_len", [1, WINDOW - 1, WINDOW, 2 * WINDOW + 3])  # shorter, equal, longer than w
def test_cache_equals_recompute(pos, kv, w, prompt_len):
    model = variant(pos, kv, w, scale=6.0)
    prompt = torch.randint(0, VOCAB, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    new = (BLOCK if pos == "learned" else 2 * BLOCK) - prompt_len  # RoPE decodes past block_size
    cached = generate(model, prompt, new, Sampling(temperature=0.0))
    assert len(set(cached[0, prompt_len:].tolist())) > 3, "degenerate test: decoding stalled on one token"
    assert torch.equal(cached, greedy_by_recompute(model, prompt, new))


@pytest.mark.parametrize("pos, kv, w", COMBOS, ids=COMBO_IDS)
def test_chunked_prefill_into_the_cache_equals_full_forward(pos, kv, w):
    """Long chunks into a rolling buffer that already holds positions: where causality usually breaks."""
    model = variant(pos, kv, w)
    x = torch.randint(0, VOCAB, (2, 30))
    cache = KVCache.for_model(model, 2, 30)
    with torch.no_grad():
        chunks = [model(x[:, a:b], cache) for a, b in [(0, 2), (2, 9), (9, 10), (10, 11), (11, 25), (25, 30)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), logits(model, x), atol=1e-5, rtol=1e-5)
    assert cache.pos == 30


@pytest.mark.parametrize("kv", [None, 2, 1])
@pytest.mark.parametrize("w", [None, WINDOW, HYBRID, [WINDOW, 2 * WINDOW]], ids=["full", "window", "hybrid", "growing"])
def test_kv_cache_bytes_formula_equals_the_allocated_cache(kv, w):
    model = variant("rope", kv, w)
    for context in (1, WINDOW, 1000):
        assert model.config.kv_cache_bytes(context, 3, bytes_per_value=4) == KVCache.for_model(model, 3, context).nbytes
    full = variant("rope", kv).config.kv_cache_bytes(32_768)
    if w == HYBRID:  # one of two layers global: half of full attention's, plus the local layer's w slots
        assert model.config.kv_cache_bytes(32_768) == full // 2 + full // 2 * WINDOW // 32_768


def test_a_hybrid_compiled_block_by_block_trains_like_eager():
    """Issue 23, item 1: `compile` in the module compiles each block in place; local layers (banded kernel, their own
    RoPE base) and global ones compile and give eager's loss and gradients."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, pos_encoding="rope", n_kv_head=2,
                       sliding_window=[8, None], rope_theta_local=100.0)
    eager = GPT(config)
    compiled = GPT(config)
    compiled.load_state_dict(eager.state_dict())
    for block in compiled.transformer.h:
        block.compile()
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses = [model.loss(ids, ids) for model in (eager, compiled)]
    for loss in losses:
        loss.backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the local and the global block compiled
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_each_layer_reaches_exactly_its_own_window():
    """Windows growing with depth, (3, 6): the last logits see (3 - 1) + (6 - 1) + 1 = 8 tokens; with the second
    layer global (a hybrid) they see the whole sequence."""
    x = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
    for windows, field in (([WINDOW, 2 * WINDOW], (WINDOW - 1) + (2 * WINDOW - 1) + 1), (HYBRID, 24)):
        model = variant("rope", 2, windows)
        last = logits(model, x)[0, -1]
        if field < 24:
            outside = x.clone()
            outside[0, : 24 - field] = torch.randint(0, VOCAB, (24 - field,))
            torch.testing.assert_close(logits(model, outside)[0, -1], last, atol=1e-5, rtol=0)
        inside = x.clone()
        inside[0, 24 - field] = (inside[0, 24 - field] + 1) % VOCAB
        assert (logits(model, inside)[0, -1] - last).abs().max() > 1e-4


def test_local_layers_rotate_at_their_own_rope_base():
    """rope_theta_local applies to the windowed layers only: equal to rope_theta it changes nothing; otherwise the
    local layer's scores are those of its base, and scores still depend only on relative positions."""
    same = variant("rope", None, HYBRID, rope_theta_local=10000.0)
    x = torch.randint(0, VOCAB, (1, 20))
    torch.testing.assert_close(logits(same, x), logits(variant("rope", None, HYBRID), x), atol=0, rtol=0)
    local = variant("rope", None, HYBRID, rope_theta_local=100.0)
    assert (logits(local, x) - logits(same, x)).abs().max() > 1e-4
    assert torch.equal(local.rope_inv_freq_local, rope_frequencies(local.config.head_dim, 100.0))
    everywhere = variant("rope", None, [WINDOW, WINDOW], rope_theta=100.0)  # both layers local, base 100
    local_only = variant("rope", None, [WINDOW, WINDOW], rope_theta_local=100.0)
    torch.testing.assert_close(logits(local_only, x), logits(everywhere, x), atol=1e-6, rtol=0)


# ---- RoPE past its training length ------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["linear", "ntk"])
def test_rope_scaling_at_factor_1_is_exactly_rope(scaling):
    assert torch.equal(rope_frequencies(16, 500.0, scaling=scaling, factor=1.0), rope_frequencies(16, 500.0))
    model, x = variant("rope", 2, HYBRID), torch.randint(0, VOCAB, (1, 40))
    before = logits(model, x)
    model.scale_rope(scaling, 1.0)
    assert torch.equal(logits(model, x), before)


def test_position_interpolation_reads_position_m_as_m_over_s():
    """Chen et al. 2023, eq. (2): f'(x, m) = f(x, m·L/L') — the tables at m of the scaled model are RoPE's at m / s."""
    positions = torch.arange(0, 64)
    for factor in (2.0, 4.0, 3.5):
        scaled = rope_tables(rope_frequencies(16, 10000.0, scaling="linear", factor=factor), positions)
        plain = rope_tables(rope_frequencies(16, 10000.0), positions / factor)
        for a, b in zip(scaled, plain):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # float32 angles up to 63 rad


def test_ntk_aware_scaling_keeps_the_highest_frequency_and_interpolates_the_lowest():
    """bloc97's NTK-aware rule: base' = base · s^(d/(d-2)), so θ'_i = θ_i · s^(-2i/(d-2)): θ_0 is kept and the
    lowest frequency is divided by exactly s."""
    d, base, factor = 16, 10000.0, 4.0
    scaled, plain = rope_frequencies(d, base, scaling="ntk", factor=factor), rope_frequencies(d, base)
    assert scaled[0] == plain[0] == 1.0
    torch.testing.assert_close(scaled[-1], plain[-1] / factor, atol=0, rtol=1e-5)
    i = torch.arange(d // 2, dtype=torch.float64)
    torch.testing.assert_close(scaled.double(), (base * factor ** (d / (d - 2))) ** (-2 * i / d), atol=0, rtol=1e-6)


def test_a_scaled_rope_model_keeps_relative_positions_and_saves_its_setting(tmp_path):
    model, x = variant("rope", 2, None), torch.randint(0, VOCAB, (1, 12))
    model.scale_rope("ntk", 4.0)
    shifted = torch.cat([torch.randint(0, VOCAB, (1, 9)), x], dim=1)
    tail = logits(model, shifted)[0, -1]
    window = variant("rope", 2, 6)  # the last logits reach 2 · 5 + 1 = 11 tokens back: what came before cannot matter
    window.load_state_dict(model.state_dict())
    window.scale_rope("ntk", 4.0)
    torch.testing.assert_close(logits(window, shifted)[0, -1], logits(window, x)[0, -1], atol=1e-5, rtol=1e-5)
    assert (tail - logits(variant("rope", 2, None), shifted)[0, -1]).abs().max() > 1e-4  # the scaling changed it
    save(model, tmp_path / "scaled")
    again = load(tmp_path / "scaled")
    assert (again.config.rope_scaling, again.config.rope_scaling_factor) == ("ntk", 4.0)
    torch.testing.assert_close(logits(again, shifted), logits(model, shifted), atol=1e-6, rtol=0)


def test_rope_scaling_on_learned_positions_is_refused_in_one_line(hf_checkpoint):
    _, directory = hf_checkpoint()
    with pytest.raises(SystemExit, match=r"generate: error: --rope_scaling ntk: .*apply to rotary positions"):
        main(["generate", "--checkpoint", str(directory), "--rope_scaling", "ntk", "--rope_scaling_factor", "2",
              "--max_new_tokens", "2", "--device", "cpu"])


def test_cache_bytes_gqa_fraction_and_rolling_bound():
    sizes = {kv: KVCache.for_model(variant("rope", kv), 1, 1000).nbytes for kv in (None, 2, 1)}
    assert sizes[2] * 2 == sizes[None] and sizes[1] * 4 == sizes[None]
    windowed = variant("rope", None, WINDOW)
    assert (KVCache.for_model(windowed, 1, 100_000).nbytes == KVCache.for_model(windowed, 1, 1000).nbytes
            == sizes[None] * WINDOW / 1000)


# ---- lengths ---------------------------------------------------------------------------------------------------


def test_rope_runs_past_block_size_and_learned_refuses():
    """The one block_size test: learned positions refuse a longer sequence naming block_size, in the forward and in
    generate, which refuses prompt + new tokens up front, before decoding; RoPE runs on."""
    x = torch.randint(0, VOCAB, (1, 3 * BLOCK))
    assert logits(variant("rope"), x).shape == (1, 3 * BLOCK, VOCAB)
    for learned in (variant("learned"), variant("learned", None, WINDOW)):
        for length in (BLOCK + 1, 3 * BLOCK):
            with pytest.raises(ValueError, match=f"longer than block_size={BLOCK}"):
                logits(learned, x[:, :length])
        with pytest.raises(ValueError, match=f"longer than block_size={BLOCK}"):
            generate(learned, x[:, : BLOCK - 6], 7)  # the prompt fits; prompt + new tokens do not


# ---- parameters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos, kv, w", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_formula(pos, kv, w, bias):
    """V·C + [learned] block·C + L·(attention + MLP + 2 LayerNorms) + final LayerNorm, with
    attention = C·(nh + 2·nkv)·hs + C·C (+ biases): the K and V projections shrink with nkv."""
    C, hs, nkv, b = 32, 32 // N_HEAD, kv or N_HEAD, int(bias)
    attn = C * (N_HEAD + 2 * nkv) * hs + b * (N_HEAD + 2 * nkv) * hs + C * C + b * C
    mlp = 2 * 4 * C * C + b * (4 * C + C)
    layer_norm = C + b * C
    expected = VOCAB * C + (BLOCK * C if pos == "learned" else 0) + N_LAYER * (attn + mlp + 2 * layer_norm) + layer_norm
    assert variant(pos, kv, w, bias=bias).num_params() == expected


def test_n_inner_sets_the_mlp_width_in_parameters_and_flops():
    """A widened MLP (n_inner, as Llama 2 restored GQA's parameters) adds 2·C·Δ weights + Δ biases per layer, and
    2·2·C·Δ forward FLOPs per token per layer."""
    base, wide = GPTConfig(n_layer=2, n_head=4, n_embd=32, vocab_size=64, block_size=16), 160
    widened = GPTConfig(**{**base.__dict__, "n_inner": wide})
    delta = wide - 4 * 32
    assert GPT(widened).num_params() - GPT(base).num_params() == 2 * (2 * 32 * delta + delta)
    assert GPT(widened).flops_per_token(16) - GPT(base).flops_per_token(16) == 2 * 2 * 2 * 32 * delta
    with pytest.raises(ValueError, match="n_inner must be None"):
        GPTConfig(n_inner=0)


# ---- MHA → GQA conversion --------------------------------------------------------------------------------------


def with_grouped_equal_heads(model, n_kv):
    """Make the K and V heads within each group of n_head // n_kv identical (then pooling loses nothing)."""
    C, hs, group = 32, 32 // N_HEAD, N_HEAD // n_kv
    with torch.no_grad():
        for block in model.transformer.h:
            for param in (block.attn.c_attn.weight, block.attn.c_attn.bias):
                for part in (1, 2):  # k, v
                    heads = param[part * C : (part + 1) * C].view(n_kv, group, hs, *param.shape[1:])
                    heads[:] = heads[:, :1]
    return model


@pytest.mark.parametrize("pos, w", list(itertools.product(["learned", "rope"], [None, WINDOW])))
@pytest.mark.parametrize("n_kv", [2, 1])
def test_mha_to_gqa_is_exact_on_grouped_equal_heads(pos, w, n_kv):
    mha = with_grouped_equal_heads(variant(pos, None, w), n_kv)
    gqa = mha_to_gqa(mha, n_kv)
    assert gqa.config.n_kv_head == n_kv and gqa.config.pos_encoding == pos and gqa.config.sliding_window == w
    assert gqa.num_params() < mha.num_params()
    x = torch.randint(0, VOCAB, (2, 20))
    torch.testing.assert_close(logits(gqa, x), logits(mha, x), atol=1e-5, rtol=1e-5)


def test_mha_to_gqa_mean_pools_each_group():
    mha = variant()
    gqa = mha_to_gqa(mha, 2)
    w = mha.transformer.h[1].attn.c_attn.weight  # rows: q (32) | k (4 heads × 8) | v (4 heads × 8)
    k_heads = w[32:64].view(4, 8, 32)
    expected_k = torch.cat([k_heads[0:2].mean(0), k_heads[2:4].mean(0)])
    torch.testing.assert_close(gqa.transformer.h[1].attn.c_attn.weight[32:48], expected_k)
    torch.testing.assert_close(gqa.transformer.h[1].attn.c_attn.weight[:32], w[:32])  # queries untouched
    with pytest.raises(ValueError, match=r"GPTConfig.n_kv_head \(3\) must divide n_head \(4\)"):
        mha_to_gqa(mha, 3)
    with pytest.raises(ValueError, match="already has n_kv_head=2"):
        mha_to_gqa(gqa, 1)


def test_convert_cli_round_trips_through_from_pretrained(hf_checkpoint, tmp_path, capsys):
    _, directory = hf_checkpoint()  # transformers' GPT-2, 4 heads
    main(["convert", "--checkpoint", str(directory), "--n-kv-head", "2", "--out", str(tmp_path / "gqa2")])
    assert "n_kv_head=2" in capsys.readouterr().out
    loaded = load(tmp_path / "gqa2")
    expected = mha_to_gqa(load(directory), 2)
    assert loaded.config == expected.config
    for (name, a), (_, b) in zip(loaded.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("pos, kv, w", COMBOS, ids=COMBO_IDS)
def test_save_pretrained_round_trips_every_variant(tmp_path, pos, kv, w):
    model = variant(pos, kv, w, bias=kv is None)
    loaded = load(save(model, tmp_path / "v"))
    assert loaded.config == model.config
    x = torch.randint(0, VOCAB, (1, 12))
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_own_format_refuses_unknown_fields(tmp_path):
    import json

    directory = save(variant("rope"), tmp_path / "v")
    config = json.loads((directory / "config.json").read_text())
    config["attention_sinks"] = 4
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="fields GPTConfig does not know: attention_sinks"):
        load(directory)


# ---- configuration errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n_kv_head": 3}, r"GPTConfig.n_kv_head \(3\) must divide n_head \(4\)"),
        ({"n_kv_head": 0}, "GPTConfig.n_kv_head must be None .* or a positive integer, got 0"),
        ({"sliding_window": 0}, "GPTConfig.sliding_window must be None .*, an integer >= 1 or a list .*, got 0"),
        ({"sliding_window": -4}, "GPTConfig.sliding_window must be None .*, an integer >= 1 or a list .*, got -4"),
        ({"sliding_window": [4, 0]}, r"a list needs 1 to n_layer=1 entries .*, got 2"),
        ({"n_layer": 2, "sliding_window": [4, 0]}, r"an integer >= 1 or a list of them per layer, got \[4, 0\]"),
        ({"sliding_window": []}, r"a list needs 1 to n_layer=1 entries"),
        ({"rope_scaling": "yarn"}, "GPTConfig.rope_scaling must be None, 'linear' or 'ntk', got 'yarn'"),
        ({"pos_encoding": "rope", "rope_scaling": "ntk", "rope_scaling_factor": 0.5}, "must be a number >= 1"),
        ({"rope_scaling": "linear", "rope_scaling_factor": 2.0}, "apply to rotary positions"),
        ({"pos_encoding": "rope", "rope_theta_local": -1.0}, "rope_theta_local must be None or > 0"),
        ({"pos_encoding": "alibi"}, "GPTConfig.pos_encoding must be 'learned' or 'rope', got 'alibi'"),
        ({"pos_encoding": "rope", "n_embd": 36, "n_head": 4}, r"pos_encoding='rope' needs an even head size .* got 9"),
        ({"pos_encoding": "rope", "rope_theta": 0.0}, "GPTConfig.rope_theta must be > 0"),
    ],
)
def test_invalid_variant_config_names_field_and_rule(fields, message):
    base = {"vocab_size": VOCAB, "block_size": BLOCK, "n_layer": 1, "n_head": 4, "n_embd": 32}
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**base, **fields})
