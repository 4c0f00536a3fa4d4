"""What a first run shows (issue 20, items 5-7): the packaged English corpus, an end-of-run sample in whole
characters up to <|endoftext|>, TensorBoard without Lightning's placeholder cards, and a CPU peak measured once."""

import json
import shutil

import pytest
from helpers import logged_scalars, scalar_tags

from gpt2_lightning import corpus
from gpt2_lightning.corpus import Corpus, DataError, moby_dick_documents
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer
from gpt2_lightning.train import callbacks
from gpt2_lightning.train.console import TensorBoard, sample_text


def test_the_quickstart_corpus_is_packaged_english_prose_known_by_its_sha256():
    chapters = moby_dick_documents()
    assert len(chapters) == 60 and chapters[0].startswith("CHAPTER 1. Loomings.\n\nCall me Ishmael.")
    assert chapters[-1].startswith("CHAPTER 60.") and 550_000 < sum(len(c) for c in chapters) < 650_000
    assert list(Corpus("moby-dick").documents()) == chapters
    assert Corpus("moby-dick").identity() == {"source": "moby-dick", "sha256": corpus.MOBY_DICK_SHA256}


def test_a_damaged_packaged_corpus_is_refused(tmp_path):
    damaged = tmp_path / "moby-dick.jsonl.gz"
    shutil.copy(corpus.MOBY_DICK_FILE, damaged)
    data = bytearray(damaged.read_bytes())
    data[100] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError, match="the packaged corpus is damaged; reinstall"):
        moby_dick_documents(damaged)


def test_the_sample_stops_at_endoftext_in_whole_characters():
    encode = get_tokenizer().encode_ordinary
    assert sample_text(encode("Call me Ishmael.") + [EOT_ID] + encode("Next document")) == "Call me Ishmael."
    cut = encode("whale 𝔘")  # the last character spans several byte tokens: the sample ends mid-character
    assert len(encode("𝔘")) > 1 and sample_text(cut[:-1]) == "whale"
    text = sample_text(encode("a ") + encode("𝔘")[1:] + encode(" b"))  # a character's tail without its head
    assert "\ufffd" not in text and "<|endoftext|>" not in text and text == "a  b"


def test_tensorboard_logger_writes_no_hp_metric_and_no_epoch(tmp_path):
    logger = TensorBoard(save_dir=tmp_path)
    logger.log_hyperparams({"learning_rate": 3e-3})
    logger.log_metrics({"train/loss": 5.0, "epoch": 0}, step=1)
    logger.finalize("success")
    assert scalar_tags(tmp_path) == {"train/loss"}
    assert logged_scalars(tmp_path, "train/loss") == {1: 5.0}


def test_cpu_peak_is_measured_once_per_machine_and_a_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(callbacks, "measure_cpu_peak_flops", lambda: measured.append(1) or 1.5e11 * len(measured))
    path = tmp_path / "cache" / "peak.json"
    first, second = callbacks.cpu_peak_flops(path), callbacks.cpu_peak_flops(path)
    assert len(measured) == 1 and first[0] == second[0] == 1.5e11  # the second run reads the cache
    assert "measured now, cached in" in first[1] and f"cached in {path}" in second[1]
    entries = json.loads(path.read_text())
    assert list(entries) == [callbacks.cpu_key()] and "threads" in callbacks.cpu_key()

    path.write_text('{"another machine": {"flops": 1e12, "measured": "2026-01-01"}, "' + callbacks.cpu_key())
    assert callbacks.cpu_peak_flops(path)[0] == 3e11 and len(measured) == 2  # not JSON: measured again, no crash
    path.write_text(json.dumps({"another machine": {"flops": 1e12, "measured": "2026-01-01"},
                                callbacks.cpu_key(): {"flops": "NaN", "measured": "?"}}))
    assert callbacks.cpu_peak_flops(path)[0] == 4.5e11 and len(measured) == 3  # a bad entry: measured again
    assert set(json.loads(path.read_text())) == {"another machine", callbacks.cpu_key()}  # others kept


def test_an_unwritable_peak_cache_says_so_and_still_measures(tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks, "measure_cpu_peak_flops", lambda: 1e11)
    blocker = tmp_path / "file"
    blocker.write_text("")
    peak, source = callbacks.cpu_peak_flops(blocker / "peak.json")  # its directory cannot be made
    assert peak == 1e11 and "not cached" in source
