"""The data path: sources checked at prepare time, a tokenized cache written once and atomically, windows read by
index (ranks and workers disjoint, every window once per epoch), an O(1) resume position that refuses changed
settings, and real `fit` runs on it (single file, epochs, SIGKILL, configs/gpt2.yaml's recipe)."""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import TINY, fit

from gpt2_lightning import token_cache
from gpt2_lightning.measure import logged_scalars as scalars
from gpt2_lightning.cli import main
from gpt2_lightning.corpus import Corpus, DataError, builtin_documents, file_digest
from gpt2_lightning.data import GPT2DataModule, PositionedLoader, TokenWindows, inputs_and_targets, permute
from gpt2_lightning.token_cache import TokenCache, cache_path, prepare, validation_start
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer

CONFIGS = Path(__file__).parents[1] / "configs"


def write_docs(directory: Path, docs: list[str], name: str = "corpus.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def datamodule(tmp_path, path, **kwargs) -> GPT2DataModule:
    kwargs = {"block_size": 32, "batch_size": 4, "val_size": 0.1, "cache_dir": str(tmp_path / "cache"), **kwargs}
    dm = GPT2DataModule(source="files", paths=[str(path)], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


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
    assert TokenCache(first).n_tokens == sum(len(get_tokenizer().encode_ordinary(d)) + 1 for d in builtin_documents()[5:9])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # the stale copy is gone


def test_a_failed_prepare_leaves_nothing_and_leftovers_of_dead_ones_are_removed(tmp_path):
    good, bad = builtin_documents()[0], "ok\n\xff"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text(good)
    (tmp_path / "src" / "b.txt").write_bytes(bad.encode("latin-1"))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"b\.txt:2: invalid UTF-8 \(byte 0xff\); re-encode"):
        prepare(Corpus("files", [str(tmp_path / "src")]), cache, num_proc=1)
    assert list(cache.iterdir()) == []
    (tmp_path / "src" / "b.txt").write_text("fine now")
    target = cache_path(Corpus("files", [str(tmp_path / "src")]), cache)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = cache / f".{target.name}.tmp-{os.uname().nodename}-{dead.stdout.strip()}"
    leftover.mkdir()  # what a prepare killed mid-write leaves
    prepare(Corpus("files", [str(tmp_path / "src")]), cache, num_proc=1)
    assert [p.name for p in cache.iterdir()] == [target.name]


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
        ({"source": "s3"}, "data.source must be 'builtin', 'files' or 'hf'"),
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


# ---- through fit ----------------------------------------------------------------------------------------------


def test_a_single_file_corpus_trains_and_validates(tmp_path):
    (tmp_path / "book.txt").write_text("\n\n".join(builtin_documents()[:10]))
    fit(tmp_path, "--data.source", "files", "--data.paths", str(tmp_path / "book.txt"), "--data.val_size", "0.1",
        "--trainer.max_steps", "8")
    assert len(scalars(tmp_path, "train/loss")) == 8 and scalars(tmp_path, "val/loss")
    manifest = json.loads(next(Path(os.environ["GPT2_LIGHTNING_DATA"]).glob("files-*/manifest.json")).read_text())
    assert manifest["split"]["taken_as"] in ("tail", "documents")


def test_an_invalid_file_stops_fit_before_the_first_step(tmp_path):
    corpus = tmp_path / "src"
    write_docs(corpus, builtin_documents()[:3], "a.jsonl")
    (corpus / "b.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(SystemExit, match=r"b\.jsonl:2: 'text' is a int, not text"):
        fit(tmp_path / "run", "--data.source", "files", "--data.paths", str(corpus), "--trainer.max_steps", "4")
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # no checkpoint, and the run lock released


def test_max_epochs_ends_the_run(tmp_path):
    (tmp_path / "src").mkdir()
    for i, doc in enumerate(builtin_documents()[:6]):
        (tmp_path / "src" / f"{i}.txt").write_text(doc[:500])
    fit(tmp_path, "--data.source", "files", "--data.paths", str(tmp_path / "src"), "--data.val_size", "0.2",
        "--trainer.max_epochs", "2", "--trainer.max_steps", "-1", "--model.lr_decay_steps", "100",
        "--trainer.accumulate_grad_batches", "2",
        "--trainer.val_check_interval", "2")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    dm = datamodule(tmp_path, tmp_path / "src", val_size=0.2)
    steps_per_epoch = len(dm.train_windows) // 2
    assert checkpoint["global_step"] == 2 * steps_per_epoch == len(scalars(tmp_path, "train/loss"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run on a two-file corpus, to resume with changed settings."""
    root = tmp_path_factory.mktemp("trained")
    for name, docs in (("a.jsonl", builtin_documents()[:20]), ("b.jsonl", builtin_documents()[20:40])):
        write_docs(root / "src", docs, name)
    fit(root, "--data.source", "files", "--data.paths", str(root / "src" / "*.jsonl"), "--trainer.max_steps", "4")
    return root


@pytest.mark.parametrize(
    "change, named",
    [
        (["--data.paths", "{root}/src/a.jsonl"], "prepared data"),
        (["--data.val_size", "0.1"], "data.val_size"),
        (["--data.seed", "1"], "data.seed"),
        (["--data.batch_size", "2"], "data.batch_size"),
        (["--trainer.accumulate_grad_batches", "2"], "trainer.accumulate_grad_batches"),
    ],
)
def test_resume_with_changed_data_settings_is_refused_naming_them(trained, change, named):
    data = ["--data.source", "files", "--data.paths", str(trained / "src" / "*.jsonl")]
    change = [c.format(root=trained) for c in change]
    before = (trained / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit, match=f"cannot resume the data stream exactly.*{named}: checkpoint"):
        fit(trained, *data, "--trainer.max_steps", "8", *change, "--ckpt_path", "last")
    assert (trained / "checkpoints" / "last.ckpt").read_bytes() == before


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


def test_resume_with_other_workers_and_after_sigkill_is_exact(tmp_path):
    """8 + 8 = 16 straight steps, with 2 workers in the second leg; and a run SIGKILLed mid-way resumes exactly."""
    for i, doc in enumerate(builtin_documents()[:12]):
        (tmp_path / "src" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "src" / f"{i:02d}.txt").write_text(doc[:600])
    data = ["--data.source", "files", "--data.paths", str(tmp_path / "src"), "--data.val_size", "0.15",
            "--model.config.dropout", "0.1", "--model.lr_decay_steps", "16"]
    fit(tmp_path / "straight", *data, "--trainer.max_steps", "16")
    fit(tmp_path / "workers", *data, "--trainer.max_steps", "8")
    fit(tmp_path / "workers", *data, "--trainer.max_steps", "16", "--data.num_workers", "2", "--ckpt_path", "last")

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "gpt2_lightning", "fit", *TINY, *data, "--trainer.default_root_dir", str(killed),
               "--trainer.max_steps", "400", "--model.lr_decay_steps", "16", "--checkpoint.every_n_train_steps", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.is_file():
        time.sleep(0.05)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(last, weights_only=False)["global_step"]
    assert 4 <= step < 16
    fit(killed, *data, "--trainer.max_steps", "16", "--ckpt_path", "last")

    straight = scalars(tmp_path / "straight", "train/loss")
    assert sorted(straight) == list(range(16))
    for run in ("workers", "killed"):
        resumed = scalars(tmp_path / run, "train/loss")
        for s in range(16):
            assert resumed[s] == straight[s], (run, s)  # bit for bit


def test_prepare_command_takes_the_fit_config_and_fit_reuses_it(tmp_path, capsys):
    path = write_docs(tmp_path / "src", builtin_documents()[:30])
    data = ["--data.source", "files", "--data.paths", str(path), "--data.cache_dir", str(tmp_path / "cache")]
    main(["prepare", "--config", str(CONFIGS / "gqa.yaml"), *data, "--data.num_proc", "1"])
    assert "data: tokenized 30 documents" in capsys.readouterr().out
    fit(tmp_path / "run", *data, "--trainer.max_steps", "2")
    assert "data: using" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="gpt2-lightning prepare: error: .*no files match"):
        main(["prepare", "--data.source", "files", "--data.paths", str(tmp_path / "none.txt")])


def test_gpt2_recipe_runs_unchanged_on_a_local_openwebtext_like_corpus(tmp_path):
    """configs/gpt2.yaml's data and schedule at block 1024 with 4 workers, the model and step count scaled down."""
    rng = np.random.default_rng(0)
    words = " ".join(builtin_documents()).split()
    docs = [" ".join(rng.choice(words, int(rng.integers(200, 1500)))) for _ in range(300)]
    corpus = write_docs(tmp_path / "owt", docs, "openwebtext-000.jsonl")
    main(["fit", "--config", str(CONFIGS / "gpt2.yaml"), "--data.source", "files", "--data.paths", str(corpus),
          "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.compile", "false",
          "--model.config.n_layer", "1", "--model.config.n_head", "2", "--model.config.n_embd", "32",
          "--data.batch_size", "2", "--data.val_size", "0.05", "--trainer.accumulate_grad_batches", "2",
          "--trainer.max_steps", "3", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
          "--trainer.log_every_n_steps", "1",
          "--model.peak_flops", "1e11"])
    assert sorted(scalars(tmp_path / "run", "train/loss")) == [0, 1, 2] and scalars(tmp_path / "run", "val/loss")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["GPT2DataModule"]
    assert state["consumed_batches"] == 6 and state["fingerprint"]["data.block_size"] == 1024
