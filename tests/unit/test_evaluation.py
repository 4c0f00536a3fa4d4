"""lm-evaluation-harness on this package's models (gpt2_lightning.evaluation): against the harness's own HFLM on the
same weights, every variant against a direct computation, generation, and the one-line errors. Offline: the tasks are
configs/eval's YAMLs pointed at JSONL files written here."""

import importlib.util
import json
import os
import random
import re
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, greedy_by_recompute, make_hf_model

from gpt2_lightning import evaluation
from gpt2_lightning.checkpoints import load, save
from gpt2_lightning.cli import main
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.corpus import builtin_documents
from gpt2_lightning.errors import UsageError
from gpt2_lightning.model import GPT
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

TASKS = ["hellaswag", "lambada_openai", "wikitext"]
BLOCK = 64  # the reference model's positions: wikitext pages are longer, so they roll


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_tasks(directory: Path, rows: dict[str, list[dict]]) -> Path:
    """configs/eval's task YAMLs, their data_files pointed at JSONL files of `rows` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for task, docs in rows.items():
        data = directory / f"{task}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        text = (CONFIGS / "eval" / f"{task}.yaml").read_text()
        (directory / f"{task}.yaml").write_text(re.sub(r"(\n    (validation|test): ).*", rf"\g<1>{data}", text))
    return directory


def words_of_corpus(seed: int = 0):
    words = " ".join(builtin_documents()[:5]).split()
    rng = random.Random(seed)
    return lambda n: " ".join(words[(i := rng.randrange(len(words) - n)):i + n]), rng


def greedy_word_passages(model, count: int) -> list[dict]:
    """LAMBADA-format passages whose last word is `model`'s greedy next token: is-greedy flags that are True."""
    span, _ = words_of_corpus(1)
    enc, found = get_tokenizer(), []
    while len(found) < count:
        context = span(12)
        ids = enc.encode(context)
        with torch.no_grad():
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        word = enc.decode([token])
        if re.fullmatch(r" [A-Za-z]+", word) and enc.encode(context + word) == ids + [token]:
            found.append({"text": context + word})
    return found


def task_rows(reference) -> dict[str, list[dict]]:
    span, rng = words_of_corpus()
    hellaswag = [{"ind": i, "activity_label": span(2), "ctx_a": span(15), "ctx_b": span(5), "ctx": "",
                  "endings": [span(rng.randrange(3, 12)) for _ in range(4)], "source_id": "t", "split": "val",
                  "split_type": "indomain", "label": str(rng.randrange(4))} for i in range(5)]
    lambada = [{"text": span(rng.randrange(20, 70))} for _ in range(4)] + greedy_word_passages(reference, 2)
    wikitext = [{"page": f" = {span(3)} = \n {span(rng.randrange(60, 160))} @-@ {span(2)} , {span(4)} . \n"}
                for _ in range(3)]
    return {"hellaswag": hellaswag, "lambada_openai": lambada, "wikitext": wikitext}


@pytest.fixture(scope="module")
def scored_both_ways(tmp_path_factory):
    """(ours, HFLM's) results of the three local tasks on one random GPT2LMHeadModel, with per-request samples."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from transformers.integrations.tiktoken import convert_tiktoken_to_fast

    os.environ["HF_DATASETS_OFFLINE"] = "1"  # (the function-scoped fixture comes after this one)
    root = tmp_path_factory.mktemp("harness")
    reference = make_hf_model(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK, vocab_size=50257)
    reference.save_pretrained(root / "hf")
    convert_tiktoken_to_fast(get_tokenizer(), root / "hf")  # an HF tokenizer equal to the packaged vocabulary
    tasks = write_tasks(root / "tasks", task_rows(reference))
    started = time.perf_counter()
    ours = evaluation.evaluate(str(root / "hf"), TASKS, include_path=tasks, batch_size=3, bootstrap_iters=0,
                               log_samples=True, quiet=True)
    ours_s = time.perf_counter() - started
    hflm = HFLM(pretrained=str(root / "hf"), device="cpu", batch_size=3)
    assert hflm.max_length == BLOCK and hflm.prefix_token_id == EOT_ID
    theirs = lm_eval.simple_evaluate(model=hflm, tasks=TASKS, task_manager=evaluation.task_manager(TASKS, tasks),
                                     bootstrap_iters=0, random_seed=1234, numpy_random_seed=1234,
                                     torch_random_seed=1234, fewshot_random_seed=1234)
    print(f"ours {ours_s:.1f} s")
    return ours, theirs


def test_every_request_scores_as_the_harness_scores_the_same_hf_model(scored_both_ways):
    ours, theirs = scored_both_ways
    greedy = 0
    for task in TASKS:
        a, b = ours["samples"][task], theirs["samples"][task]
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x["arguments"] == y["arguments"]
            for ra, rb in zip(x["resps"], y["resps"], strict=True):
                if task == "wikitext":  # a document's sum over ~100-200 tokens: float32 sums differ in the 7th digit
                    assert ra[0] == pytest.approx(rb[0], abs=1e-4, rel=1e-6)
                else:
                    (la, ga), (lb, gb) = ra[0], rb[0]
                    assert la == pytest.approx(lb, abs=1e-4)
                    assert ga == gb
                    greedy += ga
    assert greedy >= 2  # the passages built to end on the greedy word: the flags were really compared
    assert max(len(get_tokenizer().encode(d["doc"]["page"])) for d in ours["samples"]["wikitext"]) > 2 * BLOCK


def test_every_metric_equals_the_harness_reference(scored_both_ways):
    ours, theirs = scored_both_ways
    for task in TASKS:
        for key, value in theirs["results"][task].items():
            if isinstance(value, float) and ("perplexity" in key or key.startswith("bits")):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-6), (task, key)
            else:
                assert ours["results"][task][key] == value, (task, key)
    assert ours["results"]["lambada_openai"]["acc,none"] == pytest.approx(2 / 6)
    assert ours["config"]["model_config"]["block_size"] == BLOCK and ours["config"]["gpt2_lightning_version"]


# ---- a variant transformers cannot load, against a direct computation -------------------------------------------


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    """A RoPE + GQA + sliding-window GPT (window 8 < block 32), saved in this package's format, and its LM."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       pos_encoding="rope", sliding_window=8)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)  # spread the predictions: greedy decoding that does not repeat one token
    directory = save(model, tmp_path_factory.mktemp("variant") / "rope-gqa-window")
    return directory, evaluation.GPT2LightningLM(str(directory), batch_size=2)


def direct_loglikelihood(model: GPT, context: str, continuation: str, max_length: int) -> float:
    """The sum the harness means, computed plainly: tokens as HFLM splits them, cut from the left to max_length + 1,
    one GPT.forward, log-softmax, the continuation's entries."""
    enc = get_tokenizer()
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = enc.encode(context)
    cont = enc.encode(context + continuation)[len(ctx):]
    whole = (ctx + cont)[-(max_length + 1):]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([whole[:-1]])).double(), dim=-1)[0]
    return sum(float(log_probs[len(whole) - 1 - len(cont) + j, t]) for j, t in enumerate(cont))


def test_a_variant_scores_as_a_direct_sum_of_its_log_softmaxed_logits(variant):
    directory, lm = variant
    model = load(directory)
    span, _ = words_of_corpus(2)
    shared = span(10) + " "  # four endings after one context (one prefill, then the endings) and singles
    pairs = [(shared, span(n)) for n in (1, 3, 5, 9)] + [(span(8), " " + span(4)), (span(60), " " + span(3))]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(get_tokenizer().encode(pairs[-1][0])) > 32  # the last context is cut from the left
    for (context, continuation), (log_prob, _) in zip(pairs, got):
        assert log_prob == pytest.approx(direct_loglikelihood(model, context, continuation, 32), abs=1e-4)


def test_a_rolling_document_scores_as_its_windows_computed_by_hand(variant):
    directory, _ = variant
    model, length = load(directory), 48  # RoPE runs past block_size: windows longer than the 32 it trained on
    lm = evaluation.GPT2LightningLM(str(directory), batch_size=2, max_length=length)
    span, _ = words_of_corpus(3)
    text = span(120)
    ids = [EOT_ID] + get_tokenizer().encode(text)
    n = len(ids) - 1
    assert n > 2 * length + 5
    expected = 0.0
    for start in range(0, n, length):  # predict ids[start + 1 : end + 1], each window `length` tokens when it can
        end = min(start + length, n)
        first = max(0, end - length)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids[first:end]])).double(), dim=-1)[0]
        expected += sum(float(log_probs[j - first, ids[j + 1]]) for j in range(start, end))
    [got] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert got == pytest.approx(expected, abs=1e-4, rel=1e-7)


def test_generate_until_stops_at_the_stop_string(variant):
    directory, lm = variant
    model = load(directory)
    prompt = "The quick brown fox jumps over"
    ids = get_tokenizer().encode(prompt)
    greedy = greedy_by_recompute(model, torch.tensor([ids]), 20)[0, len(ids):].tolist()
    text = get_tokenizer().decode(greedy)
    stop = next(word for k in range(4, 20) if (word := get_tokenizer().decode(greedy[k:k + 1])).isascii()
                and word not in get_tokenizer().decode(greedy[:k]))  # text first seen at token k >= 4
    assert EOT_ID not in greedy and 0 < text.find(stop)
    calls = []
    lm.model.register_forward_hook(lambda *args: calls.append(1))
    [out] = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 20}), 0)],
                              disable_tqdm=True)
    assert out == text[:text.find(stop)]
    assert len(calls) <= min(19, len(get_tokenizer().encode(text[:text.find(stop) + len(stop)])) + 1)  # stopped there
    [whole] = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["\x00"], "max_gen_toks": 20}),
                                          0)], disable_tqdm=True)
    assert whole == text  # and without one, max_gen_toks greedy tokens, as generate decodes them


# ---- the command and its errors ---------------------------------------------------------------------------------


@pytest.fixture
def lambada_tasks(tmp_path):
    span, _ = words_of_corpus(5)
    return write_tasks(tmp_path / "tasks", {"lambada_openai": [{"text": span(30)} for _ in range(3)]})


def test_the_command_prints_the_table_and_writes_results_with_the_checkpoint(variant, lambada_tasks, tmp_path,
                                                                             capsys):
    directory, _ = variant
    out = tmp_path / "results.json"
    main(["evaluate", "--checkpoint", str(directory), "--tasks", "lambada_openai", "--include-path",
          str(lambada_tasks), "--limit", "2", "--batch-size", "2", "--device", "cpu", "--output", str(out)])
    assert re.search(r"\|lambada_openai\s*\|", capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert written["results"]["lambada_openai"]["sample_len"] == 2
    assert written["config"]["checkpoint"] == str(directory)
    assert written["config"]["model_config"]["pos_encoding"] == "rope"
    assert "samples" not in written


def test_an_unknown_task_says_how_to_list_tasks(lambada_tasks, monkeypatch):
    import lm_eval.tasks

    # (the harness's ~15,000 built-in tasks take ~20 s to index; the message is the same without them)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", partial(lm_eval.tasks.TaskManager, include_defaults=False))
    with pytest.raises(UsageError, match=r"unknown task 'lambada_opnai'; did you mean 'lambada_openai'\? "
                                         r"`lm-eval ls tasks --include_path .*` lists every task"):
        evaluation.evaluate("unused", ["lambada_opnai"], include_path=lambada_tasks)


def test_a_missing_data_file_names_the_file_and_its_yaml(lambada_tasks):
    (lambada_tasks / "lambada_openai.jsonl").unlink()
    with pytest.raises(UsageError, match=rf"data file {lambada_tasks}/lambada_openai.jsonl does not exist \(named in "
                                         rf"{lambada_tasks}/lambada_openai.yaml"):
        evaluation.evaluate("unused", ["lambada_openai"], include_path=lambada_tasks)


def test_a_task_on_an_unreachable_hub_names_the_offline_setting_in_seconds(variant, lambada_tasks):
    yaml = lambada_tasks / "lambada_openai.yaml"
    yaml.write_text(re.sub(r"dataset_path: json", "dataset_path: EleutherAI/lambada_openai", yaml.read_text()))
    started = time.perf_counter()
    with pytest.raises(UsageError, match=r"HF_DATASETS_OFFLINE=1 and pass --include-path configs/eval"):
        evaluation.evaluate(str(variant[0]), ["lambada_openai"], include_path=lambada_tasks)
    assert time.perf_counter() - started < 15


def test_without_the_eval_extra_the_module_imports_and_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it is not installed
    for name in [m for m in sys.modules if m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("evaluation_without_lm_eval", evaluation.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(UsageError, match=r"^lm-evaluation-harness is not installed: pip install -e '\.\[eval\]'"):
        module.evaluate("gpt2", ["hellaswag"])
    with pytest.raises(UsageError, match=r"pip install -e '\.\[eval\]'"):
        module.GPT2LightningLM("gpt2")
    monkeypatch.setattr(evaluation, "register_model", None)
    with pytest.raises(SystemExit, match=r"^gpt2-lightning evaluate: error: lm-evaluation-harness is not installed"):
        main(["evaluate", "--tasks", "hellaswag"])


def test_a_learned_position_model_refuses_windows_longer_than_its_positions(hf_checkpoint):
    _, directory = hf_checkpoint("transformers", "tiny")  # 48 positions
    with pytest.raises(UsageError, match=r"max_length 64: a sequence of 64 tokens is longer than block_size=48"):
        evaluation.GPT2LightningLM(str(directory), max_length=64)
