"""The packaged GPT-2 tokenizer: known ids, round trips, and no network."""

import socket

import pytest
import tiktoken

from gpt2_lightning import tokenizer as tok
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer, read_vocab


def test_known_ids():
    assert get_tokenizer().encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]


def test_endoftext_is_50256_and_vocab_is_gpt2_size():
    enc = get_tokenizer()
    assert enc.eot_token == EOT_ID == 50256
    assert enc.n_vocab == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    with pytest.raises(ValueError):
        enc.encode("<|endoftext|>")  # special text is refused unless allowed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   leading and trailing   \n\n\t",
        "emoji 🤖🚀 and CJK 漢字かな and RTL שלום",
        "combining e\u0301 and zero-width\u200bjoiner",
        "code:\n    def f(x):\n\treturn x**2  # comment\r\n",
        "numbers 3.14159 1,000,000 0xDEADBEEF",
        "they're we've I'll it's 'quoted'",
        "\x00\x01 control bytes \x7f",
    ],
)
def test_round_trip_of_awkward_text(text):
    enc = get_tokenizer()
    assert enc.decode(enc.encode(text)) == text


def test_pretokenization_follows_gpt2_pattern():
    # GPT-2 splits contractions off and leaves a run of spaces as single spaces before " word".
    enc = get_tokenizer()

    def pieces(text):
        return [enc.decode_single_token_bytes(t) for t in enc.encode(text)]

    assert pieces("they're") == [b"they", b"'re"]
    assert pieces("    x") == [b" ", b" ", b" ", b" x"]
    assert enc.encode(" the") == [262]


def test_builds_without_network_and_with_empty_tiktoken_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    get_tokenizer.cache_clear()
    try:
        enc = get_tokenizer()
        assert isinstance(enc, tiktoken.Encoding)
        assert enc.encode("Hello world") == [15496, 995]  # GPT-2's ids for "Hello" and " world"
    finally:
        get_tokenizer.cache_clear()
    assert list(tmp_path.iterdir()) == []


def test_damaged_vocabulary_is_refused(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(tok.VOCAB_FILE.read_bytes()[:-10])
    with pytest.raises(ValueError, match="damaged; reinstall"):
        read_vocab(bad)
