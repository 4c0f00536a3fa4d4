"""Generation: greedy against transformers, compiled against eager, sampling controls, the CLI.

(The KV cache against full recompute, chunked prefill and the block_size refusal, for every variant:
test_variants.py.)"""

import re

import pytest
import torch
from helpers import make_hf_model, save_layout

from gpt2_lightning.checkpoints import load
from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.generate import KVCache, Sampling, generate, sample_next_token
from gpt2_lightning.model import GPT


@pytest.mark.parametrize("shape", ["tiny", "wide-heads"])
def test_greedy_equals_transformers_generate(hf_checkpoint, shape):
    reference, directory = hf_checkpoint("hub", shape)
    model = load(directory)
    prompt = torch.randint(1, reference.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    new = reference.config.n_positions - 6
    theirs = reference.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    ours = generate(model, prompt, new, Sampling(temperature=0.0))
    assert len(set(ours[0, 6:].tolist())) > 3, "degenerate test: the model repeats one token"
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("fields", [{}, {"pos_encoding": "rope", "n_kv_head": 2, "sliding_window": 8},
                                    {"pos_encoding": "rope", "n_kv_head": 1, "sliding_window": [8, None],
                                     "rope_theta_local": 100.0}],
                         ids=["gpt2", "rope-gqa-window", "hybrid"])
def test_compiled_decoding_equals_eager(fields):
    """generate(compile=True): the same tokens, through the compiled forward (its few-row linears are reductions,
    the rolling window cache wraps around within the 20 new tokens)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32, **fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)  # spread the predictions so that greedy decoding does not collapse onto one token
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    eager = generate(model, prompt, 20, Sampling(temperature=0.0))
    assert len(set(eager[0, 5:].tolist())) > 3, "degenerate test: the model repeats one token"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert torch.equal(generate(model, prompt, 20, Sampling(temperature=0.0), compile=True), eager)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # The steps did run compiled, and a few graphs serve all 19 positions (the first position, then any; for a
    # window, before and after the buffer fills): a graph per position would hit torch.compile's recompile limit
    # (8) and fall back to eager for the rest of the text.
    assert 1 <= graphs <= 3, f"{graphs} graphs for 19 decoding steps"


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=101, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    prompt = torch.randint(0, 101, (4, 5))
    a = generate(model, prompt, 20, Sampling(temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7)))
    b = generate(model, prompt, 20, Sampling(temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7)))
    c = generate(model, prompt, 20, Sampling(temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(model, prompt, 20, Sampling(temperature=0.0))
    assert torch.equal(generate(model, prompt, 20, Sampling(top_k=1)), greedy)
    assert torch.equal(generate(model, prompt, 20, Sampling(top_p=1e-6)), greedy)


def test_top_k_and_top_p_only_ever_pick_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, Sampling(top_k=2, generator=gen)).tolist()) == {0, 1}
    # softmax of these logits: 0.636, 0.234, 0.086, ... → top_p=0.8 keeps tokens 0 and 1, 0.9 adds token 2
    assert set(sample_next_token(logits, Sampling(top_p=0.8, generator=gen)).tolist()) == {0, 1}
    assert set(sample_next_token(logits, Sampling(top_p=0.9, generator=gen)).tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": -1}, "temperature must be a number >= 0"), ({"top_k": 0}, "top_k must be >= 1"),
     ({"top_p": 0.0}, r"top_p must be in \(0, 1\]")],
)
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_next_token(torch.zeros(1, 5), Sampling(**kwargs))


def test_eos_pads_finished_rows_and_stops_when_all_are_done():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=101, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    prompt = torch.randint(0, 101, (2, 5))
    free = generate(model, prompt, 30, Sampling(temperature=0.0))
    eos = free[0, 8].item()  # the token row 0 emits at its 4th step
    out = generate(model, prompt, 30, Sampling(temperature=0.0, eos_token_id=eos))
    row0 = out[0, 5:].tolist()
    first = row0.index(eos)
    assert all(t == eos for t in row0[first:])
    # decoding stops at the step where the last row emits eos (greedy: the rows follow `free` until then)
    firsts = [row.index(eos) if eos in row else None for row in free[:, 5:].tolist()]
    expected = 35 if None in firsts else 5 + max(firsts) + 1
    assert out.shape[1] == expected and torch.equal(out[:, :expected][out[:, :expected] != eos],
                                                    free[:, :expected][out[:, :expected] != eos])


def test_cli_generate_prints_prompt_and_greedy_continuation(tmp_path, capsys):
    # The packaged tokenizer needs a 50257-token vocabulary: a small model with GPT-2's vocab size.
    from gpt2_lightning.tokenizer import get_tokenizer

    reference = make_hf_model(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    directory = tmp_path / "full-vocab"
    directory.mkdir()
    save_layout(reference, directory, "transformers")
    prompt = "Hello, I'm a language model,"
    main(["generate", "--checkpoint", str(directory), "--prompt", prompt, "--max-new-tokens", "12",
          "--temperature", "0", "--device", "cpu"])
    captured = capsys.readouterr()
    out = captured.out
    enc = get_tokenizer()
    ids = torch.tensor([enc.encode(prompt)])
    expected = generate(load(directory), ids, 12, Sampling(temperature=0.0, eos_token_id=enc.eot_token))
    continuation = [t for t in expected[0, ids.shape[1]:].tolist() if t != enc.eot_token]
    assert out == prompt + enc.decode(continuation) + "\n"
    produced = expected.shape[1] - ids.shape[1]  # the eos token, if reached, counts: it was generated
    # the report is stderr's last line (transformers' save progress comes before it)
    assert re.search(rf"\[1 sample\(s\), {produced} new tokens in [\d.]+ s \([\d.]+ tokens/s\) from "
                     rf"{re.escape(str(directory))} \(\d[\d,]+ parameters, float32\) on cpu, seed 1337\]\n$",
                     captured.err)


def test_cli_reports_bad_checkpoint_and_offline_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPT2_LIGHTNING_CHECKPOINTS", str(tmp_path))
    with pytest.raises(SystemExit) as err:
        main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x"])
    assert "gpt2-lightning generate: error:" in str(err.value) and "has no config.json" in str(err.value)
    with pytest.raises(SystemExit) as err:
        main(["download", "gpt2-xl"])
    assert "could not fetch 'openai-community/gpt2-xl'" in str(err.value)


def test_the_cache_advances_its_own_position_once_every_layer_has_written():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=8)).eval()
    cache = KVCache.for_model(model, 1, 16)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache)
        assert cache.pos == 5
        k = torch.zeros(1, 2, 1, 4)
        cache.update(0, k, k), cache.update(1, k, k)
        assert cache.pos == 5  # layers 0 and 1 of the next token: the sequence has not moved yet
        cache.update(2, k, k)
        assert cache.pos == 6
