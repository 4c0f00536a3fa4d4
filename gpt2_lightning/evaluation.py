"""Scoring any checkpoint of this package with EleutherAI's lm-evaluation-harness, the way it scores HF models.

`GPT2LightningLM` is an `lm_eval` model, registered as `gpt2-lightning`, over a `GPT` of any variant (RoPE, GQA,
sliding windows — which transformers cannot load, so the harness's `HFLM` cannot score them). It reproduces `HFLM`:

- `loglikelihood`: the harness's own tokenization of (context, continuation) (`TemplateLM`: trailing context
  whitespace moved to the continuation), the left of the sequence cut to `max_length` exactly as `HFLM` cuts it,
  and (sum of the continuation's log-probabilities, whether greedy decoding would produce it). Only the hidden
  states of continuation positions go through the LM head: the context's logits are never computed. Requests
  that share a context (a multiple-choice question's endings) run it once, into a KV cache, and only their
  endings after it; the others are batched by length, longest first, as the harness's collator batches them.
- `loglikelihood_rolling`: the harness's rolling windows of `max_length` tokens (default block_size; RoPE and
  windowed models may take longer ones), each scored as above, summed per document.
- `generate_until`: the package's own decoding (`generate_stream`: KV cache, the rolling cache of windowed
  models), greedy or sampled, stopped at the `until` strings, end-of-text or `max_gen_toks`.

A context longer than `max_length` is cut from the left (never an error mid-run), as `HFLM` does. `evaluate` is
what `gpt2-lightning evaluate` runs: task lookup (local task YAMLs through `include_path`, configs/eval/), the
offline checks, `lm_eval.simple_evaluate`, the harness's table and a results JSON. lm-evaluation-harness is the
optional `eval` extra: without it this module still imports, and each entry point says how to install it.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import importlib.metadata
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gpt2_lightning.checkpoints import load
from gpt2_lightning.errors import UsageError
from gpt2_lightning.generate import KVCache, Sampling, generate_stream, scale_rope_for_inference
from gpt2_lightning.lm_loss import chunk_rows
from gpt2_lightning.model import GPT
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer

try:  # the optional `eval` extra
    import lm_eval.models  # noqa: F401 - the harness's lazy model table, imported before we add to it
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    TemplateLM, register_model = object, None

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install -e '.[eval]' (the `eval` extra)"
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}  # `dataset_path`s read from local files
OFFLINE_HINT = ("set HF_DATASETS_OFFLINE=1 and pass --include-path configs/eval with local copies of the data "
                "(configs/eval/README.md says where to get them)")
DEFAULT_BATCH_SIZE = 16
MAX_GEN_TOKS = 256  # HFLM's default


def require_lm_eval() -> None:
    """Raise the one-line install hint when the `eval` extra is missing."""
    if register_model is None:
        raise UsageError(INSTALL_HINT)


class GPT2LightningLM(TemplateLM):
    """This package's GPT as an lm-evaluation-harness model (`--model gpt2-lightning` once this module is imported).

    Args:
        checkpoint: anything `gpt2_lightning.checkpoints.load` reads (hub id, directory, Lightning .ckpt file or
            sharded directory), or a `GPT` already in memory (scored as it is, on its device and in its dtype).
        batch_size: sequences per forward pass (rows of endings after a shared context count one each).
        max_length: tokens per scored window; default the model's block_size. Learned positions allow at most
            block_size; RoPE and windowed models may take longer windows.
        device: where to run a loaded checkpoint (default: CPU); ignored for a `GPT` given in memory.
        dtype: "float32" or "bfloat16" for a loaded checkpoint (default: as stored, float32).
        seed: the seed of sampled generation (`do_sample`); greedy generation uses none.
        rope_scaling, rope_scaling_factor: run a RoPE model past its training length ("linear" or "ntk" by the
            factor: `GPT.scale_rope`); for a loaded checkpoint.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | GPT = "gpt2",
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        seed: int = 1234,
        rope_scaling: str | None = None,
        rope_scaling_factor: float = 1.0,
    ) -> None:
        require_lm_eval()
        super().__init__()
        if isinstance(checkpoint, GPT):
            model, self.checkpoint = checkpoint, "(in memory)"
        else:
            model, self.checkpoint = load(checkpoint), str(checkpoint)
            if dtype not in (None, "float32", "bfloat16"):
                raise UsageError(f"dtype {dtype!r}: use float32 or bfloat16")
            model = model.to(device=device or "cpu", dtype=torch.bfloat16 if dtype == "bfloat16" else None)
            model = scale_rope_for_inference(model, rope_scaling, rope_scaling_factor)
        self.model = model.eval()
        self._device = model.transformer.wte.weight.device
        try:
            self.batch = int(batch_size)
        except ValueError:
            raise UsageError(f"batch_size {batch_size!r}: give a number of sequences (no 'auto')") from None
        self.max_length = max_length or model.config.block_size
        if self.batch < 1 or self.max_length < 2:
            raise UsageError(f"batch_size must be >= 1 and max_length >= 2, got {self.batch} and {self.max_length}")
        try:
            model.check_length(self.max_length)
        except ValueError as err:
            raise UsageError(f"max_length {self.max_length}: {err}") from None
        self.seed = seed
        self.tokenizer = get_tokenizer()

    # ---- what the harness asks of a model ----------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """GPT-2's BPE, `<|endoftext|>` in the text read as the special token (as transformers' GPT-2 tokenizer does);
        nothing is prepended (GPT-2 has no BOS)."""
        ids = self.tokenizer.encode(string, allowed_special="all")
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def get_model_info(self) -> dict[str, Any]:
        """What the results JSON records of the model: the checkpoint, its config, this package's version."""
        return {"checkpoint": self.checkpoint, "model_config": dataclasses.asdict(self.model.config),
                "model_num_parameters": self.model.num_params(),
                "model_dtype": str(self.model.transformer.wte.weight.dtype),
                "max_length": self.max_length, "gpt2_lightning_version": importlib.metadata.version("gpt2-lightning")}

    # ---- log-likelihoods ---------------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, is greedy) of each (strings, context ids, continuation ids) request."""
        groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...], list[int]]]] = defaultdict(list)
        for i, (_, context, continuation) in enumerate(requests):
            if not context or not continuation or len(continuation) > self.max_length:
                raise ValueError(f"request {i}: need a context and 1 … {self.max_length} continuation tokens")
            whole = (context + continuation)[-(self.max_length + 1):]  # cut from the left, as HFLM cuts it
            split = len(whole) - 1 - len(continuation)  # inputs are whole[:-1]; the last len(continuation) scored
            groups[tuple(whole[:split])].append((i, tuple(whole[split:-1]), continuation))
        # the harness's collator order: longest first (memory errors come at once, estimates are upper bounds)
        ordered = sorted(groups.items(), key=lambda g: -(len(g[0]) + max(len(s) for _, s, _ in g[1])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Scoring loglikelihood requests")
        singles = [(prefix + suffix, i, cont) for prefix, rows in ordered if len(rows) == 1 or not prefix
                   for i, suffix, cont in rows]
        for start in range(0, len(singles), self.batch):
            batch = singles[start:start + self.batch]
            self._score_batch(None, [ids for ids, _, _ in batch], [(i, c) for _, i, c in batch], results)
            bar.update(len(batch))
        for prefix, rows in ordered:
            if len(rows) > 1 and prefix:
                for start in range(0, len(rows), self.batch):
                    batch = rows[start:start + self.batch]
                    self._score_batch(prefix, [s for _, s, _ in batch], [(i, c) for i, _, c in batch], results)
                    bar.update(len(batch))
        bar.close()
        return results

    @torch.inference_mode()
    def _score_batch(self, prefix: tuple[int, ...] | None, inputs: list[tuple[int, ...]],
                     targets: list[tuple[int, list[int]]], results: list) -> None:
        """Score rows of `inputs` (right-padded into one batch), each row's last len(targets) positions, after the
        shared `prefix` (run once into a KV cache, copied to every row) when there is one."""
        length = max(map(len, inputs))
        ids = torch.zeros(len(inputs), length, dtype=torch.long)  # (B, T), right-padded: causal, so harmless
        for row, seq in enumerate(inputs):
            ids[row, :len(seq)] = torch.tensor(seq)
        cache = None
        if prefix is not None:
            cache = KVCache.for_model(self.model, 1, len(prefix) + length)
            self.model.hidden_states(torch.tensor([prefix], device=self._device), cache)
            cache.repeat_batch(len(inputs))
        hidden = self.model.hidden_states(ids.to(self._device), cache)  # (B, T, C)
        picked = [hidden[row, len(seq) - len(cont):len(seq)]  # (len(cont), C): the scored positions only
                  for row, (seq, (_, cont)) in enumerate(zip(inputs, targets))]
        wanted = torch.tensor([t for _, cont in targets for t in cont], device=self._device)  # (N,)
        log_probs, greedy = self._continuation_scores(torch.cat(picked), wanted)
        start = 0
        for i, cont in targets:
            end = start + len(cont)
            results[i] = (float(log_probs[start:end].double().sum()), bool(greedy[start:end].all()))
            start = end

    def _continuation_scores(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) hidden states of scored positions and their (N,) next tokens → (N,) float32 log-probabilities and
        (N,) whether each token is the argmax. The LM head runs on these rows only, in chunks (float32 softmax)."""
        log_probs, greedy = [], []
        rows = chunk_rows(self.model.config.vocab_size)
        for start in range(0, hidden.size(0), rows):
            logits = self.model.lm_head(hidden[start:start + rows]).float()  # (R, V)
            t = targets[start:start + rows]
            log_probs.append(torch.log_softmax(logits, dim=-1).gather(1, t[:, None]).squeeze(1))
            greedy.append(logits.argmax(dim=-1) == t)
        return torch.cat(log_probs).cpu(), torch.cat(greedy).cpu()

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents: the harness's disjoint rolling windows of max_length tokens."""
        windows, owner = [], []
        for doc, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, context, continuation))
                owner.append(doc)
        totals = [0.0] * len(requests)
        for doc, (log_prob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[doc] += log_prob
        return totals

    # ---- generation --------------------------------------------------------------------------------------------

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continue each context (one at a time) through `generate_stream` until a stop string, end-of-text or
        max_gen_toks; the text before the first stop string, as HFLM returns it."""
        out = []
        eos = self.tokenizer.decode([EOT_ID])
        generator = torch.Generator(self._device).manual_seed(self.seed)
        for context, gen_kwargs in tqdm([req.args for req in requests], disable=disable_tqdm or self.rank != 0,
                                        desc="Running generate_until requests"):
            kwargs = normalize_gen_kwargs(gen_kwargs, MAX_GEN_TOKS)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = kwargs.pop("max_gen_toks")
            room = self.max_length - max_new
            if room < 1:
                raise UsageError(f"max_gen_toks {max_new} leaves no room for the context in max_length "
                                 f"{self.max_length}: lower max_gen_toks (--gen-kwargs) or raise --max-length")
            ids = self.tok_encode(context, left_truncate_len=room) or [EOT_ID]
            sampling = Sampling(temperature=float(kwargs.get("temperature", 0.0)) if kwargs["do_sample"] else 0.0,
                                top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), eos_token_id=EOT_ID,
                                generator=generator)
            text, decoder = "", codecs.getincrementaldecoder("utf-8")(errors="replace")
            stream = generate_stream(self.model, torch.tensor([ids], device=self._device), max_new, sampling)
            for token in stream:
                if token.item() == EOT_ID:
                    break
                text += decoder.decode(self.tokenizer.decode_single_token_bytes(token.item()))
                if any(stop in text for stop in until):
                    break
            text += decoder.decode(b"", final=True)
            out.append(postprocess_generated_text(text, until, None))
        return out


if register_model is not None:
    register_model("gpt2-lightning")(GPT2LightningLM)


# ---- the command: tasks, offline checks, simple_evaluate, table and JSON ----------------------------------------


def task_manager(tasks: Sequence[str], include_path: str | os.PathLike | None = None):
    """A `lm_eval` TaskManager that knows every name in `tasks`; an unknown name is a one-line UsageError.

    Indexing the harness's ~15,000 built-in task YAMLs takes tens of seconds, so when `include_path` alone defines
    every task asked for, only it is indexed. A local task of a built-in's name replaces the built-in.
    """
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise UsageError(f"--include-path {include_path} is not a directory of task YAMLs")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    for name in tasks:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listing = f" --include_path {include_path}" if include_path is not None else ""
            raise UsageError(f"unknown task {name!r}; {hint}`lm-eval ls tasks{listing}` lists every task")
    return manager


def check_task_data(manager, tasks: Sequence[str]) -> None:
    """Before any model work: every local data file a task's YAML names exists, and a task read from the Hugging
    Face Hub can reach it (or runs offline), so a missing file or an unreachable Hub is one line, in seconds."""
    hub = []
    for name in tasks:
        entry = manager.task_index[name]
        config = entry.cfg or {}
        if config.get("dataset_path") in LOCAL_BUILDERS:
            files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
            for path in files.values() if isinstance(files, dict) else [files]:
                for file in [path] if isinstance(path, str) else path:
                    if not Path(file).is_file():
                        raise UsageError(f"task {name}: data file {file} does not exist (named in {entry.yaml_path}; "
                                         "relative paths are read from the current directory); see "
                                         "configs/eval/README.md for where to get it")
        elif config.get("dataset_path"):
            hub.append(f"{name} ({config['dataset_path']})")
    offline = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                  for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    if hub and not offline and not _hub_reachable():
        raise UsageError(f"the Hugging Face Hub is unreachable, and {', '.join(hub)} read from it: {OFFLINE_HINT}")


def _hub_reachable() -> bool:
    """One HEAD request to the Hub's endpoint through huggingface_hub's session (its proxies), 5 s at most."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:  # noqa: BLE001 - whatever the transport raises, the Hub cannot be reached
        return False
    return True


def evaluate(
    checkpoint: str | os.PathLike | GPT,
    tasks: Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    dtype: str | None = None,
    include_path: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    seed: int = 1234,
    rope_scaling: str | None = None,
    rope_scaling_factor: float = 1.0,
    bootstrap_iters: int = 100_000,
    log_samples: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run lm-evaluation-harness `tasks` on a checkpoint (or a GPT in memory); return the harness's results dict.

    Prints the harness's table unless `quiet`; writes the results (without per-sample records) as JSON to `output`.
    `limit` is the harness's: documents per task (a fraction of them when < 1). `seed` seeds the harness's
    python, numpy, torch and few-shot generators and sampled generation. `log_samples` keeps the per-request
    records under results["samples"].
    """
    require_lm_eval()
    import lm_eval
    from lm_eval.utils import handle_non_serializable, make_table

    if not tasks:
        raise UsageError("no task given: pass --tasks, e.g. --tasks hellaswag,lambada_openai,wikitext")
    manager = task_manager(tasks, include_path)
    check_task_data(manager, tasks)
    lm = GPT2LightningLM(checkpoint, batch_size=batch_size, max_length=max_length, device=device, dtype=dtype,
                         seed=seed, rope_scaling=rope_scaling, rope_scaling_factor=rope_scaling_factor)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            bootstrap_iters=bootstrap_iters, log_samples=log_samples)
    except ConnectionError as err:  # datasets: the Hub is unreachable, or offline without a cached copy
        raise UsageError(f"{str(err).splitlines()[0]}: {OFFLINE_HINT}") from err
    except FileNotFoundError as err:  # a data file named by a group's subtask, which check_task_data did not see
        raise UsageError(f"{str(err).splitlines()[0]}; check the data_files of the task YAMLs in "
                         f"{include_path or 'the harness'} (configs/eval/README.md)") from err
    if not quiet:
        print(make_table(results))
        if results.get("groups"):
            print(make_table(results, "groups"))
    if output is not None:
        path = Path(output)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2,
                                       default=handle_non_serializable, ensure_ascii=False))
        except OSError as err:
            raise UsageError(f"--output {output}: cannot write it ({err.strerror or err})") from err
        if not quiet:
            print(f"wrote {path}")
    return results
