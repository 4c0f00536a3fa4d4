"""`prepare` killed from outside (issue 19, item 10): its tokenizing workers never outlive it, and SIGTERM says
what stopped it and exits 143 instead of dying silently."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpt2_lightning.corpus import builtin_documents


def start_preparing(tmp_path: Path) -> subprocess.Popen:
    """`gpt2-lightning prepare` with 2 tokenizing workers on a corpus that takes them a while (~20 MB)."""
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as f:
        for copy in range(40):
            f.writelines(json.dumps({"text": f"{copy} {doc}"}) + "\n" for doc in builtin_documents())
    command = [sys.executable, "-m", "gpt2_lightning", "prepare", "--data.source", "files", "--data.paths",
               str(corpus), "--data.num_proc", "2", "--data.cache_dir", str(tmp_path / "cache")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def workers_of(process: subprocess.Popen, count: int = 2, seconds: float = 60) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = children(process.pid)
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"prepare never started {count} workers: {process.communicate()}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_prepare_alone_takes_its_workers_with_it(tmp_path):
    process = start_preparing(tmp_path)
    workers = workers_of(process)
    process.kill()  # SIGKILL to the main process only, as the OOM killer does
    process.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"orphaned tokenizer workers {survivors}"


def test_sigterm_during_prepare_says_so_and_exits_143(tmp_path):
    process = start_preparing(tmp_path)
    workers_of(process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM while preparing" in err and "run the command again" in err
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # the partial one removed
