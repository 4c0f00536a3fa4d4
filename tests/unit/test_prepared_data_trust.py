"""A prepared-data directory is read only through its own files (issue 19, items 5 and 12): a manifest cannot point
the reader elsewhere, and damaged parts are named with the fix instead of a traceback."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import write_docs

from gpt2_lightning.corpus import Corpus, builtin_documents
from gpt2_lightning.errors import DataError
from gpt2_lightning.token_cache import TokenCache, prepare


@pytest.fixture
def prepared(tmp_path):
    path = prepare(Corpus("files", [str(write_docs(tmp_path / "src", builtin_documents()[:4]))]), tmp_path / "cache",
                   num_proc=1)
    TokenCache(path)  # as prepared, it opens
    return path


def rewrite_shard(path, **fields):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][0].update(fields)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../../outside.bin", "/etc/hostname", "sub/shard.bin", ".."])
def test_a_shard_outside_the_directory_is_refused(prepared, name):
    rewrite_shard(prepared, file=name)
    with pytest.raises(DataError, match=r"manifest\.json: shard entry .* is not a file of .*; delete .* and prepare"):
        TokenCache(prepared)


def test_a_shard_that_is_a_symbolic_link_is_refused(prepared, tmp_path):
    manifest = json.loads((prepared / "manifest.json").read_text())
    shard = prepared / manifest["shards"][0]["file"]
    (tmp_path / "elsewhere.bin").write_bytes(shard.read_bytes())
    shard.unlink()
    os.symlink(tmp_path / "elsewhere.bin", shard)
    with pytest.raises(DataError, match=r"is a symbolic link; prepared data is read from its own files only"):
        TokenCache(prepared)


def test_a_shard_entry_without_a_token_count_is_named(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    del manifest["shards"][0]["tokens"]
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard entry .* with a token count"):
        TokenCache(prepared)


def test_a_manifest_that_is_not_an_object_is_named(prepared):
    (prepared / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"manifest\.json holds a JSON list, not a manifest"):
        TokenCache(prepared)


def test_a_document_index_of_python_objects_is_refused_unread(prepared):
    np.save(prepared / "documents.npy", np.array([object(), 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"documents\.npy is unreadable .*; delete .* and prepare again"):
        TokenCache(prepared).validation_start(0.1)


def test_the_prepared_data_id_depends_on_content_not_modification_times(tmp_path):
    source = write_docs(tmp_path / "src", builtin_documents()[:4])
    first = TokenCache(prepare(Corpus("files", [str(source)]), tmp_path / "a", num_proc=1)).id
    os.utime(source, (1, 1))  # restored byte for byte (cp, git checkout): a new modification time
    assert TokenCache(prepare(Corpus("files", [str(source)]), tmp_path / "b", num_proc=1)).id == first
    source.write_text(source.read_text() + json.dumps({"text": "one more document"}) + "\n")
    assert TokenCache(prepare(Corpus("files", [str(source)]), tmp_path / "c", num_proc=1)).id != first


def test_another_corpus_prepared_data_under_this_corpus_name_is_refused(tmp_path):
    mine = Corpus("files", [str(write_docs(tmp_path / "mine", builtin_documents()[:4]))])
    theirs = Corpus("files", [str(write_docs(tmp_path / "theirs", builtin_documents()[4:8]))])
    mine_path = prepare(mine, tmp_path / "cache", num_proc=1)
    theirs_path = prepare(theirs, tmp_path / "cache", num_proc=1)
    shutil.rmtree(mine_path)
    shutil.copytree(theirs_path, mine_path)  # placed under my corpus's name
    with pytest.raises(DataError, match=r"holds prepared data of another corpus .*; delete .* and prepare again"):
        prepare(mine, tmp_path / "cache", num_proc=1)


def test_a_shard_changed_in_place_is_named_when_the_cache_is_reused(tmp_path):
    """Same size, one token changed: the size check passes, the hash at reuse does not."""
    corpus = Corpus("files", [str(write_docs(tmp_path / "src", builtin_documents()[:4]))])
    path = prepare(corpus, tmp_path / "cache", num_proc=1)
    shard = path / json.loads((path / "manifest.json").read_text())["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[100:102] = (50256).to_bytes(2, "little") if data[100:102] != (50256).to_bytes(2, "little") else b"\0\0"
    shard.write_bytes(bytes(data))
    TokenCache(path)  # opening for a run checks sizes only
    with pytest.raises(DataError, match=rf"{shard} is not what was prepared \(sha256 .*; delete .* and prepare again"):
        prepare(corpus, tmp_path / "cache", num_proc=1)


def test_a_replaced_document_index_is_named_when_the_cache_is_reused(prepared, tmp_path):
    corpus = Corpus("files", [str(tmp_path / "src" / "corpus.jsonl")])
    starts = np.load(prepared / "documents.npy")
    np.save(prepared / "documents.npy", starts + (starts > 0))  # as many documents, other boundaries
    with pytest.raises(DataError, match=r"documents\.npy is not what was prepared"):
        prepare(corpus, tmp_path / "cache", num_proc=1)


def test_manifest_counts_that_disagree_with_the_files_are_named(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    (prepared / "manifest.json").write_text(json.dumps({**manifest, "tokens": manifest["tokens"] + 1}))
    with pytest.raises(DataError, match=r"counts \d+ tokens, its shards hold [\d,]+: the prepared data is damaged"):
        TokenCache(prepared)
    (prepared / "manifest.json").write_text(json.dumps({**manifest, "documents": manifest["documents"] + 1}))
    with pytest.raises(DataError, match=r"documents\.npy indexes 4 documents, the manifest counts 5"):
        TokenCache(prepared).validation_start(0.1)


def test_a_resumed_runs_prepared_data_is_not_replaced_when_its_source_changed(tmp_path):
    """The resume would be refused (other data): refused before anything is tokenized, the prepared data kept."""
    source = write_docs(tmp_path / "src", builtin_documents()[:4])
    path = prepare(Corpus("files", [str(source)]), tmp_path / "cache", num_proc=1)
    kept = {p.name: p.read_bytes() for p in path.iterdir()}
    write_docs(tmp_path / "src", builtin_documents()[4:8])  # edited in place
    with pytest.raises(DataError, match=r"1 source file\(s\) changed since the data this run trains on was prepared "
                                        r".*resuming would train on other data. Restore them"):
        prepare(Corpus("files", [str(source)]), tmp_path / "cache", num_proc=1, resuming=TokenCache(path).id)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == kept
