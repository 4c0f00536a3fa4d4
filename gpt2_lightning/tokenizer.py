"""GPT-2's byte-pair encoding as a `tiktoken.Encoding`, built from the vocabulary shipped with the package.

The file `assets/gpt2.tiktoken` is OpenAI's published GPT-2 vocabulary (tiktoken's `r50k_base`, sha256 below);
reading it from the package means tokenization never needs the network or tiktoken's download cache.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from gpt2_lightning.errors import UsageError

VOCAB_FILE = Path(__file__).parent / "assets" / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256


def read_vocab(path: Path = VOCAB_FILE, sha256: str = VOCAB_SHA256) -> dict[bytes, int]:
    """The mergeable ranks of a .tiktoken file (base64 token, rank per line), after checking its sha256."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UsageError(
            f"{path} has sha256 {digest}, expected {sha256}: the packaged GPT-2 vocabulary is damaged; "
            "reinstall gpt2-lightning"
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding: 50,256 byte-pair tokens plus `<|endoftext|>` = 50256."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=read_vocab(),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=EOT_ID + 1,
    )


def text_pieces(ids: Iterable[int], errors: str = "strict") -> Iterator[str]:
    """The text of token ids as they come, up to the first <|endoftext|> (a document ends there), in whole characters:
    a character's bytes may be split over tokens, so each piece holds only the characters completed so far; bytes
    that never complete one are handled as `errors` says ("replace": U+FFFD, "ignore": left out)."""
    tokenizer, decoder = get_tokenizer(), codecs.getincrementaldecoder("utf-8")(errors=errors)
    for token in ids:
        if token == EOT_ID:
            break
        yield decoder.decode(tokenizer.decode_single_token_bytes(token))
    yield decoder.decode(b"", final=True)
