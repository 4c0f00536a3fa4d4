"""The analysis run cache (issue 19, item 6; issue 22, item 3): a cached run is reused only when its spec, the code (the
package's source, torch and Lightning versions), its numbers and its weights are what was measured; anything else is
measured again, never an error; the cache counts what it reused."""

import json
import pickle

import lightning
import pytest
import torch

from gpt2_lightning.analysis import run_cache
from gpt2_lightning.analysis.run_cache import RunCache, code_key
from gpt2_lightning.checkpoints import save
from gpt2_lightning.config import GPTConfig
from gpt2_lightning.model import GPT


@pytest.fixture
def run(tmp_path):
    """A cached run with weights: (runs directory, weights directory, the call that reads it, how often it measured)."""
    weights, measured = tmp_path / "weights", []

    def compute():
        measured.append(1)
        torch.manual_seed(len(measured))
        save(GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)), weights)
        return {"loss": 1.25}

    cache = RunCache(tmp_path)

    def call(spec=None):
        return cache.run("run", spec or {"steps": 8}, compute, weights)

    assert call() == {"loss": 1.25} and call() == {"loss": 1.25} and len(measured) == 1  # measured once, reused
    assert (cache.measured, cache.reused) == (1, 0)  # read again by the same call: not a reuse from an earlier one
    return tmp_path, weights, call, measured


def test_an_edited_number_is_measured_again(run):
    runs, _, call, measured = run
    saved = json.loads((runs / "run.json").read_text())
    saved["result"]["loss"] = 0.5  # forged
    (runs / "run.json").write_text(json.dumps(saved))
    assert call() == {"loss": 1.25} and len(measured) == 2


@pytest.mark.parametrize("damage", ["swapped", "truncated", "deleted"])
def test_swapped_or_damaged_weights_are_measured_again(run, tmp_path, damage):
    _, weights, call, measured = run
    tensors = weights / "model.safetensors"
    if damage == "swapped":
        save(GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)), tmp_path / "other")
        tensors.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    elif damage == "truncated":
        tensors.write_bytes(tensors.read_bytes()[:100])
    else:
        tensors.unlink()
    assert call() == {"loss": 1.25} and len(measured) == 2
    assert call() == {"loss": 1.25} and len(measured) == 2  # the new weights are recorded: reused again


def test_other_code_or_another_spec_is_measured_again(run, monkeypatch):
    _, _, call, measured = run
    call({"steps": 16})
    assert len(measured) == 2
    monkeypatch.setattr(run_cache, "code_key", lambda module=None: "other code")
    call({"steps": 16})
    assert len(measured) == 3


@pytest.mark.parametrize("library", [torch, lightning])
def test_the_code_key_changes_with_the_torch_and_lightning_versions(library, monkeypatch):
    before = code_key()
    code_key.cache_clear()
    monkeypatch.setattr(library, "__version__", library.__version__ + "+other")
    try:
        assert code_key() != before
    finally:
        code_key.cache_clear()


def test_a_run_is_keyed_on_the_code_that_measures_it_not_on_the_renderers():
    """Editing the report, a plot or a statistic re-measures nothing; a change to one section re-measures only the
    runs that section defines (its lambdas carry its module); shared code re-measures everything."""
    names = {name: {s.relative_to(run_cache.PACKAGE).as_posix() for s in run_cache.measuring_sources(name)}
             for name in (None, "gpt2_lightning.analysis.sections.recall", "gpt2_lightning.analysis.lm_runs")}
    shared = names[None]
    assert {"model.py", "attention.py", "analysis/probes.py", "analysis/lm_runs.py"} <= shared
    assert not shared & {"analysis/report.py", "analysis/plots.py", "analysis/statistics.py", "analysis/run.py"}
    assert not any(name.startswith("analysis/sections/") for name in shared)
    assert names["gpt2_lightning.analysis.sections.recall"] == shared | {"analysis/sections/recall.py"}
    assert names["gpt2_lightning.analysis.lm_runs"] == shared
    recall, copying = "gpt2_lightning.analysis.sections.recall", "gpt2_lightning.analysis.sections.copying"
    assert len({code_key(), code_key(recall), code_key(copying)}) == 3


def test_a_run_from_another_section_module_is_measured_again(tmp_path):
    cache = RunCache(tmp_path)
    compute = lambda: {"x": 1}  # noqa: E731
    cache.run("a", {}, compute)
    compute.__module__ = "gpt2_lightning.analysis.sections.recall"  # the same entry, defined by another section
    assert cache.run("a", {}, lambda: {"x": 2}) == {"x": 1}  # same module (this test's): reused
    assert cache.run("a", {}, compute) == {"x": 1} and cache.measured == 2


def test_a_run_read_twice_in_one_call_is_counted_once(tmp_path):
    """Sections share runs (the GQA ladder reads section 4's): a second read within one call is neither a reuse
    "from an earlier call" nor a new measurement."""
    first = RunCache(tmp_path)
    assert first.run("a", {}, lambda: {"x": 1}) == first.run("a", {}, lambda: {"x": 2}) == {"x": 1}
    assert (first.measured, first.reused) == (1, 0)
    again = RunCache(tmp_path)
    again.run("a", {}, lambda: {"x": 0})
    again.run("a", {}, lambda: {"x": 0})
    assert (again.measured, again.reused) == (0, 1)


def test_the_cache_counts_what_it_reused_and_measured_per_instance(tmp_path):
    first = RunCache(tmp_path)
    first.run("a", {}, lambda: {"x": 1})
    first.run("b", {}, lambda: {"x": 2})
    again = RunCache(tmp_path)  # a later analysis over the same runs: its own counters
    assert again.run("a", {}, lambda: {"x": 0}) == {"x": 1}
    again.run("c", {}, lambda: {"x": 3})
    assert (first.measured, first.reused) == (2, 0) and (again.measured, again.reused) == (1, 1)
    assert again.reused_seconds >= 0.0


def test_a_spec_holding_tuples_is_reused(tmp_path):
    """A probe's spec holds its task's tuples (pairs (4, 8, …)); JSON reads them back as lists, which still match."""
    calls = []
    for _ in range(2):
        RunCache(tmp_path).run("run", {"task": {"train_pairs": (4, 8)}}, lambda: calls.append(1) or {"x": 1})
    assert calls == [1]


def test_a_result_reads_the_same_measured_or_reused(tmp_path):
    cache = RunCache(tmp_path)
    measured = cache.run("run", {}, lambda: {"curve": [(1, 0.5)], "by": {2: 0.1}})
    assert measured == cache.run("run", {}, lambda: {}) == {"curve": [[1, 0.5]], "by": {"2": 0.1}}


def test_run_cache_is_data_only_and_a_foreign_entry_is_measured_again(tmp_path):
    """Each run's measurements are JSON (weights safetensors): nothing read back can run code."""
    calls = []
    cache = RunCache(tmp_path)
    (tmp_path / "run.json").write_bytes(pickle.dumps({"spec": {"steps": 8}}))  # not JSON: measured again
    assert cache.run("run", {"steps": 8}, lambda: calls.append(1) or {"loss": 1.5}) == {"loss": 1.5}
    assert calls == [1]


def test_a_damaged_cache_file_is_measured_again(run):
    runs, _, call, measured = run
    (runs / "run.json").write_text('{"spec": ')
    assert call() == {"loss": 1.25} and len(measured) == 2
