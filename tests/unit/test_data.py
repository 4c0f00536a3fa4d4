"""The data path: sources checked at prepare time, a tokenized cache written once and atomically, windows read by
index (ranks and workers disjoint, every window once per epoch), an O(1) resume position that refuses changed
settings. (Through real `fit` runs, SIGKILL and configs/gpt2.yaml's recipe: tests/integration/test_data_runs.py.)"""

import collections
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import datamodule, write_docs

from gpt2_lightning import token_cache
from gpt2_lightning.corpus import Corpus, DataError, builtin_documents, file_digest
from gpt2_lightning.data import GPT2DataModule, PositionedLoader, TokenWindows, inputs_and_targets, permute
from gpt2_lightning.token_cache import TokenCache, prepare, validation_start
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer


def rows(batches) -> list[tuple[int, ...]]:
    """The (block_size + 1)-token windows of (input, target) batches."""
    return [tuple(x.tolist()) + (y[-1].item(),) for xs, ys in batches for x, y in zip(xs, ys)]


# ---- preparing ------------------------------------------------------------------------------------------------


def test_prepared_tokens_are_the_documents_encoded_with_eot_between(tmp_path):
    docs = builtin_documents()[:6]
    path = prepare(Corpus("files", [str(write_docs(tmp_path, docs))]), tmp_path / "cache", num_proc=1, val_size=0.2)
    cache = TokenCache(path)
    expected = [t for d in docs for t in get_tokenizer().encode_ordinary(d) + [EOT_ID]]
    assert cache.read(np.array([0]), cache.n_tokens)[0].tolist() == expected
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["documents"] == 6 and manifest["tokens"] == len(expected)
    (file, recorded), = manifest["source"]["content"].items()
    assert recorded["sha256"] == file_digest(Path(file)) and manifest["tokenizer"]["name"] == "gpt2"


def test_parallel_tokenization_writes_the_same_shards(tmp_path, monkeypatch):
    path = write_docs(tmp_path, builtin_documents())
    monkeypatch.setattr(token_cache, "CHUNK_BYTES", 20_000)  # ~25 chunks, so two processes share them
    one = prepare(Corpus("files", [str(path)]), tmp_path / "one", num_proc=1, shard_tokens=10_000)
    two = prepare(Corpus("files", [str(path)]), tmp_path / "two", num_proc=2, shard_tokens=10_000)
    files = sorted(p.name for p in one.glob("tokens-*.bin"))
    assert len(files) == 14 and files == sorted(p.name for p in two.glob("tokens-*.bin"))
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert json.loads((two / "manifest.json").read_text())["prepared"]["num_proc"] == 2


def test_reads_cross_shard_boundaries(tmp_path):
    path = write_docs(tmp_path, builtin_documents()[:10])
    flat = TokenCache(prepare(Corpus("files", [str(path)]), tmp_path / "flat", num_proc=1))
    sharded = TokenCache(prepare(Corpus("files", [str(path)]), tmp_path / "sharded", num_proc=1, shard_tokens=1000))
    assert len(sharded.files) > 5 and sharded.n_tokens == flat.n_tokens
    starts = np.array([0, 990, 1999, 2500, sharded.n_tokens - 1500])
    assert np.array_equal(sharded.read(starts, 1500), flat.read(starts, 1500))


def test_matching_cache_is_reused_and_a_changed_file_rebuilt(tmp_path):
    path = write_docs(tmp_path, builtin_documents()[:5])
    corpus = lambda: Corpus("files", [str(tmp_path)])  # noqa: E731 - a directory source
    logs = []
    first = prepare(corpus(), tmp_path / "cache", num_proc=1, log=logs.append)
    manifest = (first / "manifest.json").read_text()
    assert prepare(corpus(), tmp_path / "cache", num_proc=1, log=logs.append) == first
    assert (first / "manifest.json").read_text() == manifest and logs[-1].startswith("data: using")
    os.utime(path, ns=(1, 1))  # touched, same content: still reused
    prepare(corpus(), tmp_path / "cache", num_proc=1, log=logs.append)
    assert logs[-1].startswith("data: using")
    write_docs(tmp_path, builtin_documents()[5:9])  # new content, same name
    assert prepare(corpus(), tmp_path / "cache", num_proc=1, log=logs.append) == first
    assert "changed since" in logs[-2]
    assert TokenCache(first).n_tokens == sum(len(get_tokenizer().encode_ordinary(d)) + 1
                                             for d in builtin_documents()[5:9])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # the stale copy is gone


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"text": "a"}\n{"text": "b"\n', r"bad\.jsonl:2: malformed JSON"),
        ("bad.jsonl", '{"text": "a"}\n\n{"body": "b"}\n', r"bad\.jsonl:3: no 'text' field \(it has \['body'\]\)"),
        ("bad.jsonl", '{"text": null}\n', r"bad\.jsonl:1: 'text' is null, not text"),
        ("bad.jsonl", '["text"]\n', r"bad\.jsonl:1: expected a JSON object"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "\xe9"}\n', r"bad\.jsonl:2: invalid UTF-8"),
        ("empty.txt", "", r"holds no text: every document is empty"),
        ("notes.md", "hi", r"unsupported file type '\.md'"),
    ],
)
def test_bad_input_is_named_with_file_and_line_at_prepare_time(tmp_path, name, content, message):
    path = tmp_path / "src" / name
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        prepare(Corpus("files", [str(path)]), tmp_path / "cache", num_proc=1)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_parquet_null_text_is_named_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"text": ["one", "two", None]}), path)
    with pytest.raises(DataError, match=r"part\.parquet: row 3: 'text' is null"):
        prepare(Corpus("files", [str(path)]), tmp_path / "cache", num_proc=1)


def test_an_unreachable_hub_dataset_fails_at_once(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "create_connection", no_network)
    dm = GPT2DataModule(source="hf", block_size=32, cache_dir=str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(DataError, match="huggingface.co is unreachable.*HF_HUB_OFFLINE=1.*data.source=builtin"):
        dm.prepare_data()
    assert time.perf_counter() - started < 5 and list(tmp_path.iterdir()) == []


def test_offline_hub_dataset_says_what_to_pass_instead(tmp_path):
    dm = GPT2DataModule(source="hf", block_size=32, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="could not stream 'Skylion007/openwebtext'.*data.source=builtin"):
        dm.prepare_data()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": "files", "paths": ["/nonexistent/*.txt"]}, "no files match"),
        ({"source": "files"}, "data.source=files needs data.paths"),
        ({"source": "s3"}, "data.source must be one of 'moby-dick', 'builtin', 'files', 'hf'"),
        ({"val_size": 0}, "data.val_size must be > 0"),
    ],
)
def test_bad_settings_say_what_to_pass(kwargs, message):
    with pytest.raises(DataError, match=message):
        GPT2DataModule(**kwargs)


# ---- the validation split --------------------------------------------------------------------------------------


def test_validation_is_whole_documents_when_there_are_many_and_the_tail_when_few():
    starts = np.arange(0, 10_000, 100)  # 100 documents of 100 tokens
    assert validation_start(starts, 10_000, 0.05) == (9_500, "documents")
    assert validation_start(starts, 10_000, 250) == (9_700, "documents")  # at least 250: three whole documents
    assert validation_start(np.array([0]), 10_000, 0.05) == (9_500, "tail")  # one document: its last 500 tokens
    assert validation_start(np.array([0, 9_990]), 10_000, 0.05) == (9_500, "tail")  # 2V would not hold a document
    with pytest.raises(DataError, match="asks for 10,000 validation tokens of a corpus of 10,000"):
        validation_start(starts, 10_000, 10_000)


def test_a_validation_pass_reads_only_validation_windows_in_order(tmp_path):
    dm = datamodule(tmp_path, write_docs(tmp_path, builtin_documents()[:20]), val_size=0.2)
    start, how = dm.cache.validation_start(0.2)
    assert how == "documents" and start in np.load(dm.cache.path / "documents.npy")
    got = rows(dm.val_dataloader())
    n = len(dm.val_windows) * 4
    expected = dm.cache.read(start + 32 * np.arange(n), 33)
    assert got == [tuple(r) for r in expected.tolist()]
    assert dm.train_windows.n_windows * 32 + 1 <= start  # the last training window ends before validation begins


# ---- training windows ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permute_is_a_permutation_that_changes_with_the_key(n):
    a, b = permute(np.arange(n), n, key=1), permute(np.arange(n), n, key=2)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(n))
    if n >= 64:
        assert (a != b).mean() > 0.9 and (a != np.arange(n)).mean() > 0.9


def windows_of(cache, rank, world, workers, epoch_start=0):
    data = TokenWindows(cache, 0, cache.n_tokens, 32, 4, rank, world, train=True, seed=3)
    return data, rows(PositionedLoader(data, lambda: epoch_start, num_workers=workers))


def test_every_window_once_per_epoch_across_two_ranks_and_two_workers(tmp_path):
    path = prepare(Corpus("files", [str(write_docs(tmp_path, builtin_documents()[:8]))]), tmp_path / "c", num_proc=1)
    cache = TokenCache(path)
    (data, rank0), (_, rank1) = windows_of(cache, 0, 2, 2), windows_of(cache, 1, 2, 2)
    assert len(rank0) == len(rank1) == len(data) * 4 and len(data) > 10
    assert not set(rank0) & set(rank1)
    counted = collections.Counter(rank0 + rank1)
    order = permute(np.arange(2 * len(rank0)), data.n_windows, 3 * 1_000_003)  # epoch 0's windows, in order
    expected = collections.Counter(tuple(r) for r in cache.read(order * 32, 33).tolist())
    assert counted == expected  # each of the epoch's windows read exactly once, none of the remainder
    assert data.n_windows - len(order) < 2 * 4  # the remainder is less than one global batch
    _, rank0_next = windows_of(cache, 0, 2, 2, epoch_start=len(data))  # epoch 1: a new order
    assert rank0_next != rank0


def test_workers_split_the_reading_instead_of_repeating_it(tmp_path, monkeypatch):
    cache = TokenCache(prepare(Corpus("builtin"), tmp_path / "c", num_proc=1))
    log = tmp_path / "reads.log"
    read = TokenCache.read

    def counted(self, starts, length):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {len(starts)}\n")
        return read(self, starts, length)

    monkeypatch.setattr(TokenCache, "read", counted)  # DataLoader workers are forked: they inherit it
    for workers in (0, 2, 4):
        log.unlink(missing_ok=True)
        data, got = windows_of(cache, 0, 1, workers)
        lines = log.read_text().split()
        assert len(lines) // 2 == len(data) and len(got) == 4 * len(data)  # one read per batch, whatever the workers
        assert len(set(lines[::2])) == max(1, workers)


def test_resume_position_is_one_integer_at_any_depth(tmp_path):
    cache = TokenCache(prepare(Corpus("builtin"), tmp_path / "c", num_proc=1))
    data = TokenWindows(cache, 0, cache.n_tokens, 32, 4, 1, 2, train=True, seed=5)
    for position in (0, 7, len(data), 10**7 + 3):
        data.start_batch = position
        epoch, index = divmod(position, len(data))
        assert np.array_equal(next(iter(data)), data.batch(epoch, index))
    straight = rows(PositionedLoader(data, lambda: 0))[: 4 * 20]
    assert rows(map(inputs_and_targets, (data.batch(0, i) for i in range(20)))) == straight


def test_epochs_end_on_an_optimizer_step(tmp_path):
    cache = TokenCache(prepare(Corpus("builtin"), tmp_path / "c", num_proc=1))
    for accumulate in (1, 3, 7):
        data = TokenWindows(cache, 0, cache.n_tokens, 32, 4, train=True, batch_multiple=accumulate)
        assert len(data) % accumulate == 0 and len(data) * 4 > data.n_windows - 4 * accumulate


# ---- the resume position refuses changed settings ---------------------------------------------------------------


def test_resume_on_another_world_size_is_refused_and_old_checkpoints_too(tmp_path):
    dm = datamodule(tmp_path, write_docs(tmp_path, builtin_documents()[:10]))
    state = dm.state_dict()
    dm.load_state_dict(state)  # the same settings resume
    key = "world size (trainer.devices × trainer.num_nodes)"
    with pytest.raises(DataError, match=r"world size \(trainer.devices × trainer.num_nodes\): checkpoint 8, now 1"):
        dm.load_state_dict({**state, "fingerprint": {**state["fingerprint"], key: 8}})
    old = {"consumed_batches": 8, "world_size": 1, "batch_size": 4, "block_size": 32, "source": "builtin"}
    with pytest.raises(DataError, match="earlier gpt2-lightning.*model.init_from"):
        dm.load_state_dict(old)
