"""The analysis's run cache: each run's measurements kept as JSON, reused only when they are what this code would
measure now, and counted, so that the document's header can say how much of it was reused.

An entry is reused when it was made with the same spec, by the same code (`code_key`: a hash of the source that
measures it — the library, the analysis's shared modules and the section that defines the run — and of the torch
and Lightning versions that ran it; the modules that only turn measurements into the document are left out, so
that editing prose, plots or a statistic re-measures nothing, and a change to one section re-measures only its
runs: `medium` resumes section by section), its numbers still hash to what was recorded and the
run's weights directory, if it has one, still hashes to the weights measured. Anything else — missing, damaged,
edited, another spec, other code — is measured again, never an error. The hashes guard against damage and mix-ups
(an edited number, swapped or truncated weights, runs of older code), not against someone who can also edit
the code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning
import torch

from gpt2_lightning.files import file_sha256, write_atomically

PACKAGE = Path(__file__).parents[1]  # gpt2_lightning/
SECTIONS = "analysis/sections/"
RENDERING = {"analysis/report.py", "analysis/plots.py", "analysis/statistics.py", "analysis/run.py"}


def measuring_sources(module: str | None = None) -> list[Path]:
    """The source files whose code a run defined in `module` (a dotted module name) measures with: every .py file
    of the package but the renderers and the sections, plus `module`'s own file when it is a section."""
    own = f"{SECTIONS}{module.rsplit('.', 1)[-1]}.py" if module and ".analysis.sections." in module else None
    sources = []
    for source in sorted(PACKAGE.rglob("*.py")):
        name = source.relative_to(PACKAGE).as_posix()
        if name not in RENDERING and (not name.startswith(SECTIONS) or name == own):
            sources.append(source)
    return sources


@functools.cache
def code_key(module: str | None = None) -> str:
    """The hash of `measuring_sources(module)` (by relative path) and of the torch and Lightning versions: a run
    measured by other code, or by the same code on another torch or Lightning, is measured again."""
    digest = hashlib.sha256(f"torch {torch.__version__}\0lightning {lightning.__version__}\0".encode())
    for source in measuring_sources(module):
        digest.update(source.relative_to(PACKAGE).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _numbers_sha256(result: dict) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


def _weights_sha256(weights: Path) -> str | None:
    """The hash of a run's weights directory (config.json + model.safetensors); None when a file is missing."""
    try:
        return hashlib.sha256("".join(file_sha256(weights / name) for name in ("config.json", "model.safetensors"))
                              .encode()).hexdigest()
    except OSError:
        return None


class RunCache:
    """The runs of one analysis under `directory` (`<key>.json` each), and what this call of the analysis took
    from them: `reused` runs that took `reused_seconds` when they were measured, and `measured` runs made now."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.reused = 0
        self.reused_seconds = 0.0
        self.measured = 0
        self._served: set[str] = set()  # keys this call has already counted: a second read counts as nothing

    def run(self, key: str, spec: dict, compute: Callable[[], dict], weights: Path | None = None) -> dict:
        """The measurements of run `key`: reused from `<directory>/<key>.json` when valid (see the module's
        docstring), otherwise `compute()`d now and saved there. `weights`: the directory the run saves its
        weights to, hashed with its entry."""
        path, code = self.directory / f"{key}.json", code_key(getattr(compute, "__module__", None))
        spec = json.loads(json.dumps(spec))  # as the entry holds it: a tuple in a spec reads back as a list
        try:
            saved = json.loads(path.read_text())
            same_weights = weights is None or (_weights_sha256(weights) or "missing") == saved.get("weights_sha256")
            if (same_weights and saved.get("spec") == spec and saved.get("code") == code
                    and saved.get("numbers_sha256") == _numbers_sha256(saved["result"])):
                if key not in self._served:  # reused from an earlier call, not read again by this one
                    self.reused += 1
                    self.reused_seconds += saved.get("seconds", 0.0)
                    self._served.add(key)
                return saved["result"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
            pass  # missing, damaged or not ours: measure again
        started = time.perf_counter()
        result = json.loads(json.dumps(compute()))  # as a reuse will read it back: lists, string keys
        saved = {"spec": spec, "code": code, "result": result, "numbers_sha256": _numbers_sha256(result),
                 "weights_sha256": None if weights is None else _weights_sha256(weights),
                 "seconds": time.perf_counter() - started}
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(saved)))
        self.measured += 1
        self._served.add(key)
        return result
