"""Prepared data: a corpus tokenized once into uint16 shards on disk, then read by token index.

Layout of one prepared corpus, `<cache_dir>/<label>-<key>/` (key: the corpus identity, tokenizer and format):

    manifest.json        what the source was (files with sizes and sha256, or dataset + revision + split + column),
                         the tokenizer, document and token counts, the shards with their sha256, the document
                         index's sha256, the validation split made at prepare time, and `id`, the fingerprint a
                         resumed run checks (the source, the tokenizer and every hash: the data, not its mtimes)
    tokens-00000.bin     GPT-2 token ids as little-endian uint16 (nanoGPT's format), `<|endoftext|>` after every
    tokens-00001.bin     document; one stream cut into shards of at most SHARD_TOKENS tokens
    documents.npy        int64 start offset of every document in the stream (where validation may begin)

What is checked, at what cost: opening a cache for a run (every rank, every start) checks each file's size and the
manifest's counts (a few `stat` calls); reusing one in `prepare` (the `prepare` command, and `fit`'s start on
local rank 0 of each node) also hashes every file against the manifest — reading the whole cache once, ~18 GB for
OpenWebText, tens of seconds from a local disk, hashed by several threads — so a damaged or swapped shard is named
before a step trains on it.

Preparing reads the documents in order in this process (every defect is found here, before any training
step), tokenizes chunks of them in `num_proc` worker processes, writes into a temporary directory and renames
it into place when complete, so a killed prepare leaves nothing a run could mistake for data. A matching cache
is reused; one whose files changed since is rebuilt. No torch here: workers start fast.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from gpt2_lightning.corpus import Corpus
from gpt2_lightning.errors import DataError
from gpt2_lightning.files import disk_of, file_sha256, process_alive
from gpt2_lightning.tokenizer import EOT_ID, VOCAB_SHA256, get_tokenizer

FORMAT = 2  # 2: shards and the document index carry their sha256, which the prepared-data id includes
SHARD_TOKENS = 1 << 27  # 128 Mi tokens = 256 MiB per shard
CHUNK_BYTES = 4 << 20  # text handed to a tokenizer process at a time
TOKEN_DTYPE = np.dtype("<u2")
TOKENIZER = {"name": "gpt2", "vocab_sha256": VOCAB_SHA256, "eot_id": EOT_ID, "dtype": "uint16"}


def default_cache_dir() -> Path:
    """`$GPT2_LIGHTNING_DATA`, else `$XDG_CACHE_HOME/gpt2-lightning/data` (~/.cache/...)."""
    if os.environ.get("GPT2_LIGHTNING_DATA"):
        return Path(os.environ["GPT2_LIGHTNING_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2-lightning" / "data"


def cache_path(corpus: Corpus, cache_dir: str | os.PathLike | None) -> Path:
    """Where this corpus's prepared data lives: the same identity, tokenizer and format give the same directory."""
    key = json.dumps({"corpus": corpus.identity(), "tokenizer": TOKENIZER, "format": FORMAT}, sort_keys=True)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{corpus.label}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def check_val_size(val_size: float) -> None:
    if val_size <= 0:
        raise DataError(f"data.val_size must be > 0 (a fraction < 1 or a token count), got {val_size}")


def validation_start(doc_starts: np.ndarray, n_tokens: int, val_size: float) -> tuple[int, str]:
    """Token offset where the validation split begins, and how it was taken.

    val_size < 1 is a fraction of the tokens, >= 1 a token count V. Validation is the tail of the stream: the last
    whole documents holding at least V tokens ("documents"), or, where that would take more than 2V tokens (few,
    long documents: a single file), exactly the last V tokens ("tail").
    """
    check_val_size(val_size)
    want = math.ceil(val_size * n_tokens) if val_size < 1 else int(val_size)
    if want >= n_tokens:
        raise DataError(
            f"data.val_size={val_size} asks for {want:,} validation tokens of a corpus of {n_tokens:,}; lower it")
    target = n_tokens - want
    start = int(doc_starts[np.searchsorted(doc_starts, target, side="right") - 1])
    if start > 0 and n_tokens - start <= 2 * want:
        return start, "documents"
    return target, "tail"


# ---- preparing ---------------------------------------------------------------------------------------------


def encode_documents(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """GPT-2 tokens of the texts, each followed by `<|endoftext|>`, as one uint16 array, and each one's length."""
    encoder = get_tokenizer()
    tokens: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        before = len(tokens)
        tokens.extend(encoder.encode_ordinary(text))
        tokens.append(EOT_ID)
        lengths[i] = len(tokens) - before
    return np.asarray(tokens, dtype=TOKEN_DTYPE), lengths


def _chunks(documents: Iterable[str], chunk_bytes: int) -> Iterator[list[str]]:
    chunk, size = [], 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encoded_chunks(documents: Iterable[str], num_proc: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(texts, tokens, lengths) per chunk, in order; chunks are tokenized by `num_proc` processes.

    A corpus of one chunk (the builtin one) is tokenized here without starting any process. At most 2 × num_proc
    chunks are in flight, so memory does not grow with the corpus.
    """
    chunks = _chunks(documents, CHUNK_BYTES)
    head = [c for c in (next(chunks, None), next(chunks, None)) if c is not None]
    if num_proc <= 1 or len(head) < 2:
        for chunk in (*head, *chunks):
            yield (chunk, *encode_documents(chunk))
        return
    # Linux: fork, as `datasets.map(num_proc)` and DataLoader workers do; the workers run only tiktoken and numpy,
    # no OpenMP. Spawn would re-import the launching command (torch, lightning: seconds per worker).
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(num_proc, mp_context=context, initializer=_die_with, initargs=(os.getpid(),)) as pool:
        pending: deque = deque()
        for chunk in (*head, *chunks):
            if len(pending) >= 2 * num_proc:
                texts, future = pending.popleft()
                yield (texts, *future.result())
            pending.append((chunk, pool.submit(encode_documents, chunk)))
        while pending:
            texts, future = pending.popleft()
            yield (texts, *future.result())


def _die_with(parent: int) -> None:
    """A tokenizing worker ends when the process that started it does (Linux: the kernel sends it SIGKILL), so
    killing `prepare` or `fit` alone, as the OOM killer does, leaves no orphaned workers behind."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


@contextmanager
def _sigterm_ends_preparation(path: Path) -> Iterator[None]:
    """While preparing in the main thread: SIGTERM says what stopped and exits 143 after the partial preparation is
    removed (without this, Python's default ends the process at once, status -15, without a word)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        print(f"data: stopped by SIGTERM while preparing {path}; nothing partial is kept: run the command again to "
              "prepare", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ShardWriter:
    """Appends tokens to tokens-NNNNN.bin files of at most `shard_tokens` tokens each, hashing what it writes."""

    def __init__(self, directory: Path, shard_tokens: int) -> None:
        self.directory, self.shard_tokens = directory, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._hash = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            piece, tokens = tokens[:room], tokens[room:]
            data = piece.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self.shards[-1]["tokens"] += int(piece.size)

    def _open_next(self) -> None:
        self.close()
        name = f"tokens-{len(self.shards):05d}.bin"
        self._file, self._hash = open(self.directory / name, "wb"), hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self.shards[-1]["sha256"] = self._hash.hexdigest()


def prepare(
    corpus: Corpus,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    val_size: float = 0.0005,
    shard_tokens: int = SHARD_TOKENS,
    log=print,
    resuming: str | None = None,
) -> Path:
    """Tokenize `corpus` once into its cache directory and return it; a matching, unchanged cache is reused after
    its files are hashed against the manifest. `resuming`: the prepared-data id a run being resumed trained on; its
    data is never replaced (a changed source is refused before anything is tokenized)."""
    path = cache_path(corpus, cache_dir)
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        check_source(manifest, corpus, path)
        changed = corpus.changed(manifest["source"].get("content", {}))
        if not changed:
            started = time.perf_counter()
            cache = TokenCache(path)
            cache.validation_start(val_size)  # checks the document index and val_size
            cache.verify()
            log(f"data: using {path} ({manifest['documents']:,} documents, {manifest['tokens']:,} tokens; every file "
                f"checked against its sha256 in {time.perf_counter() - started:.1f} s)")
            return path
        if resuming is not None and manifest.get("id") == resuming:
            raise DataError(
                f"{len(changed)} source file(s) changed since the data this run trains on was prepared "
                f"({', '.join(changed[:3])}): resuming would train on other data. Restore them (the prepared data in "
                f"{path} is kept), or start a new run from the checkpoint's weights (model.init_from=<the .ckpt>)")
        log(f"data: {len(changed)} source file(s) changed since {path} was prepared ({', '.join(changed[:3])}); "
            "tokenizing again")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir()
    try:
        with _sigterm_ends_preparation(path):
            _write(corpus, tmp, num_proc or available_cpus(), val_size, shard_tokens, log)
        _publish(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DataError(f"cannot write {err.filename or tmp}: no space left on the disk mounted at {disk_of(tmp)}; "
                        "free space there or set data.cache_dir to another disk") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write(corpus: Corpus, directory: Path, num_proc: int, val_size: float, shard_tokens: int, log) -> None:
    started = time.perf_counter()
    writer = _ShardWriter(directory, shard_tokens)
    doc_lengths: list[np.ndarray] = []
    text_chars = 0
    try:
        for texts, tokens, lengths in encoded_chunks(corpus.documents(), num_proc):
            writer.write(tokens)
            doc_lengths.append(lengths)
            text_chars += sum(len(t) for t in texts)
    finally:
        writer.close()
    num_proc = num_proc if len(doc_lengths) > 1 else 1  # one chunk is tokenized without starting processes
    lengths = np.concatenate(doc_lengths) if doc_lengths else np.zeros(0, dtype=np.int64)
    if not lengths.size:
        raise DataError(f"the corpus ({_describe(corpus)}) holds no text: every document is empty; "
                        "give a corpus with text")
    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_tokens = int(lengths.sum())
    np.save(directory / "documents.npy", doc_starts)
    index_sha256 = file_sha256(directory / "documents.npy")
    start, how = validation_start(doc_starts, n_tokens, val_size)
    seconds = time.perf_counter() - started
    source = {**corpus.identity(), "content": corpus.content()}
    manifest = {
        "format": FORMAT,
        "source": source,
        "tokenizer": TOKENIZER,
        "documents": int(lengths.size),
        "tokens": n_tokens,
        "text_characters": text_chars,
        "shards": writer.shards,
        "document_index": {"file": "documents.npy", "sha256": index_sha256},
        "split": {"val_size": val_size, "validation_start": start, "taken_as": how, "train_tokens": start,
                  "validation_tokens": n_tokens - start},
        "id": prepared_id(source, n_tokens, writer.shards, index_sha256),
        "prepared": {"seconds": round(seconds, 2), "num_proc": num_proc, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"data: tokenized {lengths.size:,} documents ({text_chars / 1e6:,.1f} M characters) into {n_tokens:,} tokens "
        f"in {seconds:.1f} s with {num_proc} process(es); validation: the last {n_tokens - start:,} tokens "
        f"({how})")


def _describe(corpus: Corpus) -> str:
    if corpus.source == "files":
        return ", ".join(str(p) for p in corpus.paths[:3]) + (" ..." if len(corpus.paths) > 3 else "")
    return corpus.label


def _publish(tmp: Path, path: Path) -> None:
    """Move a complete preparation into place; a stale one is swapped out, a concurrent identical one is kept."""
    if path.exists():
        old = path.parent / f".{path.name}.old-{socket.gethostname()}-{os.getpid()}"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, path)
    except OSError:  # another node or process published the same data first (shared filesystem): keep theirs
        if not (path / "manifest.json").is_file():
            raise


def _remove_leftovers(path: Path) -> None:
    """Delete temporary directories of preparations on this host whose process is gone (killed mid-prepare)."""
    host = socket.gethostname()
    for leftover in path.parent.glob(f".{path.name}.*-{host}-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def check_source(manifest: dict, corpus: Corpus, path: Path) -> None:
    """The prepared data at `path` must be of `corpus`: a directory copied or renamed into this corpus's place
    would otherwise train on another corpus without a word."""
    source = manifest.get("source")
    recorded = {k: v for k, v in source.items() if k != "content"} if isinstance(source, dict) else source
    if recorded != corpus.identity():
        raise DataError(f"{path} holds prepared data of another corpus ({recorded}), not of {corpus.identity()}; "
                        f"delete {path} and prepare again")


def prepared_id(source: dict, n_tokens: int, shards: list[dict], index_sha256: str) -> str:
    """What a run's data fingerprint records of its prepared data: the corpus identity, each source file's size and
    sha256 (never modification times, so a source restored byte for byte — cp, git checkout — is the same data),
    and the hash of every shard and of the document index (the tokens themselves)."""
    content = {name: {k: v for k, v in entry.items() if k != "mtime_ns"}
               for name, entry in source.get("content", {}).items()}
    tokens = [(shard["file"], shard["tokens"], shard["sha256"]) for shard in shards]
    return hashlib.sha256(json.dumps([{**source, "content": content}, TOKENIZER, n_tokens, tokens, index_sha256],
                                     sort_keys=True).encode()).hexdigest()


def read_manifest(path: Path) -> dict:
    manifest_file = path / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text())
    except FileNotFoundError:
        raise DataError(
            f"no prepared data at {path}: run `gpt2-lightning prepare` with the same data settings, or let `fit` "
            "prepare it (Lightning calls prepare_data on local rank 0 of each node)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{manifest_file} is corrupt ({err}); delete {path} and prepare again") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{manifest_file} holds a JSON {type(manifest).__name__}, not a manifest; delete {path} and "
                        "prepare again")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} was prepared in format {manifest.get('format')}, this version reads {FORMAT}; "
                        f"delete it and prepare again")
    return manifest


# ---- reading -----------------------------------------------------------------------------------------------


class TokenCache:
    """A prepared corpus opened for reading: any span of its token stream by offset, from memory-mapped shards.

    Pickles without its open maps (DataLoader workers map the shards themselves, lazily).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.files, sizes = self._shards()
        for file, tokens in zip(self.files, sizes):
            actual = file.stat().st_size if file.is_file() else None
            if actual != tokens * TOKEN_DTYPE.itemsize:
                raise DataError(
                    f"{file} is {'missing' if actual is None else f'{actual:,} bytes'}, the manifest says "
                    f"{tokens * TOKEN_DTYPE.itemsize:,}: the prepared data is damaged; delete {self.path} and prepare "
                    "again")
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # shard s holds [bounds[s], bounds[s+1])
        self.n_tokens = int(self.bounds[-1])
        if self.n_tokens != self.manifest.get("tokens"):
            raise DataError(f"{self.path / 'manifest.json'} counts {self.manifest.get('tokens')!r} tokens, its "
                            f"shards hold {self.n_tokens:,}: the prepared data is damaged; delete {self.path} and "
                            "prepare again")
        self._maps: list[np.memmap] | None = None

    def verify(self, threads: int = 8) -> None:
        """Hash every shard and the document index against the manifest (reads the whole cache: see the module's
        docstring for the cost); a file that differs is named."""
        index = self.manifest.get("document_index")
        expected = [(file, shard.get("sha256")) for file, shard in zip(self.files, self.manifest["shards"])]
        expected.append((self.path / "documents.npy", index.get("sha256") if isinstance(index, dict) else None))
        with ThreadPoolExecutor(max(1, min(threads, len(expected)))) as pool:
            actual = list(pool.map(file_sha256, [file for file, _ in expected]))
        for (file, want), got in zip(expected, actual):
            if got != want:
                raise DataError(f"{file} is not what was prepared (sha256 {got[:12]}…, the manifest says "
                                f"{str(want)[:12]}…): the prepared data is damaged or was replaced; delete {self.path} "
                                "and prepare again")

    def _shards(self) -> tuple[list[Path], list[int]]:
        """The manifest's shard files and token counts. A shard must be a plain file of this directory (no path
        separators, no symbolic link): a manifest is not trusted to point the reader anywhere else."""
        files, sizes = [], []
        for shard in self.manifest.get("shards") or [None]:
            name = shard.get("file") if isinstance(shard, dict) else None
            tokens = shard.get("tokens") if isinstance(shard, dict) else None
            plain = isinstance(name, str) and Path(name).name == name and name not in ("", ".", "..")
            if not plain or isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise DataError(f"{self.path / 'manifest.json'}: shard entry {shard!r} is not a file of {self.path} "
                                f"with a token count; delete {self.path} and prepare again")
            if (self.path / name).is_symlink():
                raise DataError(f"{self.path / name} is a symbolic link; prepared data is read from its own files "
                                f"only: delete {self.path} and prepare again")
            files.append(self.path / name)
            sizes.append(tokens)
        return files, sizes

    @property
    def id(self) -> str:
        return self.manifest["id"]

    def validation_start(self, val_size: float) -> tuple[int, str]:
        documents = self.path / "documents.npy"
        try:
            starts = np.load(documents, mmap_mode="r")  # allow_pickle=False: an array of objects is refused
        except (OSError, ValueError) as err:
            raise DataError(f"{documents} is unreadable ({str(err)[:120]}); delete {self.path} and prepare "
                            "again") from err
        if starts.ndim != 1 or len(starts) != self.manifest.get("documents"):
            raise DataError(f"{documents} indexes {len(starts):,} documents, the manifest counts "
                            f"{self.manifest.get('documents')!r}: the prepared data is damaged; delete {self.path} and "
                            "prepare again")
        return validation_start(starts, self.n_tokens, val_size)

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Tokens [s, s + length) for each s in starts, as a (len(starts), length) uint16 array."""
        if self._maps is None:
            self._maps = [np.memmap(f, dtype=TOKEN_DTYPE, mode="r") for f in self.files]
        out = np.empty((len(starts), length), dtype=TOKEN_DTYPE)
        shards = np.searchsorted(self.bounds, starts, side="right") - 1
        local = starts - self.bounds[shards]
        inside = local + length <= self.bounds[shards + 1] - self.bounds[shards]
        for shard in np.unique(shards[inside]).tolist():  # the common case: one gather per shard
            rows = np.flatnonzero(inside & (shards == shard))
            out[rows] = self._maps[shard][local[rows, None] + np.arange(length)]
        for row in np.flatnonzero(~inside).tolist():  # a span crossing a shard boundary continues in the next
            filled, shard = 0, int(shards[row])
            while filled < length:
                at = int(starts[row]) + filled - int(self.bounds[shard])
                piece = self._maps[shard][at : at + length - filled]
                out[row, filled : filled + piece.size] = piece
                filled += piece.size
                shard += 1
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}
