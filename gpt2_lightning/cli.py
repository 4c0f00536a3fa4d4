"""The `gpt2-lightning` command: one table of subcommands (`COMMANDS`), each parsed by jsonargparse.

- `fit | validate | test | predict`: LightningCLI over `GPT2LightningModule` and `GPT2DataModule`, from YAML
  configs (configs/), starting from the embedded quickstart config.
- `prepare`: fit's parser and configs, only the data module built, to tokenize a corpus ahead of training.
- `generate | download | convert | analyze`: typed functions below; their docstrings are their help, and each
  takes `--config FILE.yaml` and `--print_config` like the training commands.

Bad input (`UsageError`) ends in one line that says what to change; any other exception is a bug and keeps its
traceback. Run policy (the run lock, refusals, vetting) lives in `gpt2_lightning.train.run_dir`; this module wires.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import inspect
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI, ArgumentError
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from gpt2_lightning.checkpoints import load, save
from gpt2_lightning.checkpoints.convert import mha_to_gqa
from gpt2_lightning.data import GPT2DataModule
from gpt2_lightning.errors import UsageError
from gpt2_lightning.files import disk_of
from gpt2_lightning.generate import Sampling, generate_stream, scale_rope_for_inference
from gpt2_lightning.hub import download as fetch
from gpt2_lightning.quantize import QUANTIZATIONS, quantize_weights
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer, text_pieces
from gpt2_lightning.train.callbacks import (
    PREEMPTED_EXIT_STATUS,
    CheckpointBeforeFullDiskStop,
    ExplainStop,
    LoggedStepIsOptimizerStep,
    PreemptionCheckpoint,
    StepCheckpoint,
    TokenThroughput,
)
from gpt2_lightning.train.checkpoint_io import AtomicCheckpointIO
from gpt2_lightning.train.console import (
    ConsoleLog,
    RunSummary,
    StepProgressBar,
    TensorBoard,
    print_sample,
    quiet_lightning,
)
from gpt2_lightning.train.lightning_compat import CommandLineOverCheckpoint
from gpt2_lightning.train.lm_evaluation import LMEvaluation  # noqa: F401 (so --trainer.callbacks+=LMEvaluation resolves)
from gpt2_lightning.train.module import GPT2LightningModule
from gpt2_lightning.train.run_dir import (
    LAST,
    checkpoint_to_load,
    prepare_fit,
    record_architecture,
    resume_without_init_from,
    vet_checkpoint_to_load,
)

DESCRIPTION = "A hand-written GPT-2: train it from YAML configs, sample from it, convert and analyse checkpoints."
QUICKSTART = Path(__file__).parent / "quickstart.yaml"  # the embedded default every Lightning command starts from
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


# ---- generate, download, convert, analyze: typed functions, docstrings as help ----------------------------------


def pick_device(name: str) -> torch.device:
    """`auto` → cuda, else mps, else cpu; any other name is taken as it is, if this machine has it."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise UsageError(f"--device {name}: not a device torch knows ({str(err).splitlines()[0][:120]}); use "
                             "auto, cpu, cuda, cuda:N or mps") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); use "
                             "--device cpu or auto")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS is not available here; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def generate(
    *,
    checkpoint: str = "gpt2",
    prompt: str = "Hello, I'm a language model,",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    num_samples: int = 1,
    device: str = "auto",
    compile: bool = False,
    dtype: Literal["float32", "bfloat16"] | None = None,
    quantize: Literal[QUANTIZATIONS] | None = None,
    rope_scaling: Literal["linear", "ntk"] | None = None,
    rope_scaling_factor: float = 1.0,
) -> None:
    """Continue a prompt, printing the text as it is produced.

    Args:
        checkpoint: a hub id (gpt2, gpt2-medium, ...), a checkpoint directory (config.json + model.safetensors) or
            a Lightning .ckpt file or sharded checkpoint directory.
        prompt: the text to continue.
        max_new_tokens: tokens to add to each sample (at most).
        temperature: sampling temperature; 0 is greedy decoding.
        top_k: sample from the k most likely tokens only.
        top_p: sample from the smallest set of tokens whose probability reaches p (nucleus sampling).
        seed: the sampling generator's seed.
        num_samples: independent continuations of the prompt.
        device: auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.
        compile: decode through torch.compile: faster per token after a first compile of tens of seconds, so it
            pays on long outputs (docs/performance.md).
        dtype: the weights' dtype; unset means float32 (bfloat16 with --quantize). bfloat16 halves the bytes each
            token reads (docs/performance.md).
        quantize: decode with int8 weights (torchao, weight-only, bfloat16 activations; speed and held-out loss in
            docs/performance.md).
        rope_scaling: run a RoPE model past its training length: linear (position interpolation) or ntk
            (NTK-aware), by --rope_scaling_factor (docs/variants.md).
        rope_scaling_factor: the scaling factor, e.g. the new length over the training length.
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise UsageError(f"--num-samples and --max-new-tokens must be >= 1, got {num_samples} and {max_new_tokens}")
    if not 0 <= seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {seed}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # bytes that are not UTF-8 reach Python as lone surrogates
        raise UsageError(f"--prompt is not valid UTF-8 (bytes {prompt[err.start:err.end]!a} at character "
                         f"{err.start}); pass UTF-8 text") from err
    target = pick_device(device)
    if quantize is not None and dtype == "float32":
        raise UsageError(f"--quantize {quantize} runs with bfloat16 activations; drop --dtype float32")
    model = scale_rope_for_inference(load(checkpoint).to(target), rope_scaling, rope_scaling_factor)
    n_params = model.num_params()
    if quantize is not None:
        model = quantize_weights(model, quantize)
    elif dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    tokenizer = get_tokenizer()
    input_ids = torch.tensor([tokenizer.encode(prompt, allowed_special={"<|endoftext|>"}) or [EOT_ID]], device=target)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=EOT_ID,
                        generator=torch.Generator(device=target).manual_seed(seed))
    started, produced = time.perf_counter(), 0

    def sampled_ids() -> Iterator[int]:
        nonlocal produced
        for token in generate_stream(model, input_ids, max_new_tokens, sampling, compile=compile):
            produced += 1
            yield token.item()

    for sample in range(num_samples):
        if sample:
            print("\n" + "-" * 40)
        print(prompt, end="", flush=True)
        for piece in text_pieces(sampled_ids(), errors="replace"):  # whole characters, as they are completed
            print(piece, end="", flush=True)
        print()
    seconds = time.perf_counter() - started
    weights = f"{quantize} weights" if quantize else dtype or "float32"
    print(f"[{num_samples} sample(s), {produced} new tokens in {seconds:.1f} s ({produced / seconds:.1f} tokens/s) "
          f"from {checkpoint} ({n_params:,} parameters, {weights}) on {target}, seed {seed}]", file=sys.stderr)


def download(name: str, *, dir: str | None = None) -> None:
    """Fetch OpenAI's GPT-2 weights from the Hugging Face Hub.

    Args:
        name: one of gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a hub repo id owner/name.
        dir: the target directory (default: checkpoints/<name>).
    """
    path = fetch(name, dir)
    print(f"{name}: config.json and model.safetensors in {path}")


def convert(*, checkpoint: str, out: str, n_kv_head: int | None = None) -> None:
    """Re-save any checkpoint (a Lightning .ckpt, sharded or not, included) as one directory, optionally turning
    multi-head attention into grouped-query attention.

    Args:
        checkpoint: a hub id, checkpoint directory or Lightning .ckpt.
        out: the directory to write config.json + model.safetensors to (new or empty).
        n_kv_head: key/value heads to convert to (divides n_head).
    """
    target = Path(out)
    if target.is_file() or (target.is_dir() and any(target.iterdir())):
        raise UsageError(f"--out {target} already exists and is not an empty directory; choose a new directory")
    model = load(checkpoint)
    before = model.num_params()
    if n_kv_head is not None:
        model = mha_to_gqa(model, n_kv_head)
    # plain GPT-2 goes out in transformers' format (readable by both); any variant in this package's own
    as_hf = not model.config.departures_from_gpt2()
    try:
        save(model, out)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot write {err.filename or out} ({err.strerror or err}); choose a "
                         "writable directory with room for the weights") from err
    if n_kv_head is None:
        change = f"re-saved unchanged ({before:,} parameters)"
    elif model.num_params() == before:
        change = f"already {n_kv_head} key/value heads: nothing to convert, re-saved ({before:,} parameters)"
    else:
        change = (f"n_kv_head={n_kv_head}: key/value heads mean-pooled per group, {before:,} → "
                  f"{model.num_params():,} parameters")
    print(f"{checkpoint}: {change}, in {'transformers' if as_hf else 'this package'}'s format, to {out}")


def analyze(*, budget: Literal["tiny", "small", "medium"] = "small", out: str | None = None,
            runs: str = "runs/analysis", sections: str | None = None) -> None:
    """Measure, probe and train every attention variant; write analysis.md and its plots.

    Args:
        budget: tiny: a smoke test; small: <= 30 min on 2 CPU cores (docs/analysis.md); medium: <= 3 hours.
        out: where analysis.md and img/ go; unset: <runs>/<budget>/report. The repository's own findings are
            rewritten only when asked for: --out docs.
        runs: where each run's measurements and weights go (under <runs>/<budget>/; an interrupted analysis reuses
            the runs it finished).
        sections: measure only these, comma-separated (of size, speed, recall, passkey, copy, lm, ladder, uptraining,
            windows), into the run cache, writing no document; a later call without --sections reuses them and
            writes it.
    """
    from gpt2_lightning.analysis import analyze as run_analysis  # needs the `analysis` extra (matplotlib, scipy)

    report = out if out is not None else str(Path(runs) / budget / "report")
    names = None if sections is None else [name.strip() for name in sections.split(",") if name.strip()]
    written = run_analysis(budget, report, runs, names)
    print(f"wrote {written}" if written else f"measured {', '.join(names)} into {Path(runs) / budget}; run "
          f"without --sections to write the document (it reuses these runs)")


def evaluate(
    *,
    checkpoint: str = "gpt2",
    tasks: str = "hellaswag,lambada_openai,wikitext",
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    device: str = "auto",
    dtype: Literal["float32", "bfloat16"] | None = None,
    include_path: str | None = None,
    output: str | None = None,
    seed: int = 1234,
    rope_scaling: Literal["linear", "ntk"] | None = None,
    rope_scaling_factor: float = 1.0,
) -> None:
    """Score a checkpoint on lm-evaluation-harness tasks (HellaSwag, LAMBADA, WikiText, ...), as the harness scores
    HF models; prints its table (docs/evaluation.md).

    Args:
        checkpoint: a hub id, a checkpoint directory (any variant) or a Lightning .ckpt file or sharded directory.
        tasks: comma-separated harness task names (`lm-eval ls tasks` lists them).
        num_fewshot: few-shot examples per prompt (default: each task's own, 0 for these three).
        limit: documents per task (a fraction of them when < 1); for quick checks, not for reported numbers.
        batch_size: sequences per forward pass.
        max_length: tokens per scored window (default: the model's block_size; RoPE and windowed models may take
            more); longer contexts are cut from the left, as the harness's HFLM cuts them.
        device: auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps.
        dtype: the weights' dtype (default float32).
        include_path: a directory of task YAMLs, e.g. configs/eval (local JSONL copies, no Hub access; with
            HF_DATASETS_OFFLINE=1 on machines without it).
        output: write the results (with the checkpoint, its config and this package's version) as JSON here.
        seed: the harness's random seeds (few-shot sampling) and sampled generation's.
        rope_scaling: run a RoPE model past its training length: linear (position interpolation) or ntk
            (NTK-aware), by --rope_scaling_factor (docs/variants.md).
        rope_scaling_factor: the scaling factor, e.g. the scored length over the training length.
    """
    from gpt2_lightning.evaluation import evaluate as run_evaluation  # imports lm-eval: off the other commands' start

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    run_evaluation(checkpoint, names, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                   max_length=max_length, device=pick_device(device), dtype=dtype, include_path=include_path,
                   output=output, seed=seed, rope_scaling=rope_scaling, rope_scaling_factor=rope_scaling_factor)


def _accept_legacy_spellings(function: Callable, argv: Sequence[str]) -> list[str]:
    """The flags these commands took before jsonargparse: `--max-new-tokens` for `--max_new_tokens`, and a bare
    boolean flag (`--compile`) for `--compile true`."""
    flags = {name for name, p in inspect.signature(function).parameters.items() if p.annotation in (bool, "bool")}
    words = []
    for i, word in enumerate(argv):
        if word.startswith("--") and word != "--":
            name, sep, value = word[2:].partition("=")
            word = "--" + name.replace("-", "_") + sep + value
            if name.replace("-", "_") in flags and not sep and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                words += [word, "true"]
                continue
        words.append(word)
    return words


def parse_error(name: str, err: ArgumentError, keys: Iterable[str], argv: Sequence[str]) -> UsageError:
    """jsonargparse's error as one line (it prints the whole usage first), with the closest valid key for each
    unknown one (`unrecognized arguments: --model.config.n_layr 3; did you mean --model.config.n_layer?`) and the
    YAML files given when one of them does not parse."""
    message = " ".join(str(err).split())
    files = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--config"]
    if "parsing config" in message and files:
        message += f" (the --config files: {', '.join(files)})"
    keys = list(keys)
    hints = []
    for word in re.findall(r"--([\w.-]+)|['\"]([\w.]+)['\"]", message):
        key = (word[0] or word[1]).replace("-", "_")
        if key not in keys and (close := difflib.get_close_matches(key, keys, n=1, cutoff=0.75)):
            hints.append(f"did you mean --{close[0]}?")
    return UsageError("; ".join([message, *dict.fromkeys(hints)]) + f" (`gpt2-lightning {name} --help` lists every "
                      "option)")


def run_function(name: str, function: Callable, argv: Sequence[str]) -> None:
    """Parse `argv` into `function`'s typed parameters (jsonargparse) and call it."""
    try:
        CLI(function, args=_accept_legacy_spellings(function, argv), prog=f"gpt2-lightning {name}",
            exit_on_error=False)
    except ArgumentError as err:
        raise parse_error(name, err, inspect.signature(function).parameters, argv) from None


# ---- fit, validate, test, predict, prepare: LightningCLI ---------------------------------------------------------


class GPT2LightningCLI(CommandLineOverCheckpoint, LightningCLI):
    """LightningCLI with the data's block_size tied to the model's, last.ckpt kept in a fixed place, the run
    callbacks installed, and the run directory's policy applied (`train.run_dir`) before anything is loaded.

    `resources` holds what the command keeps until it ends (the run lock); the caller closes it.
    """

    def __init__(self, *args, resources: ExitStack, **kwargs) -> None:
        self.resources = resources
        # The module's configure_optimizers (AdamW groups, warmup + cosine) is the only optimizer: LightningCLI's
        # --optimizer / --lr_scheduler would silently replace it, groups and schedule included.
        super().__init__(*args, auto_configure_optimizers=False, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.config.block_size", "data.block_size")
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        # last.ckpt is overwritten in place (one run per directory: run_dir.RunLock); with Lightning's version
        # counter a run whose directory moved would fork its saves into last-v1.ckpt while readers stay on last.ckpt
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 100,
                             "checkpoint.save_top_k": 0, "checkpoint.enable_version_counter": False})

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            name = args[0] if args and args[0] in LIGHTNING_COMMANDS else None
            defaults = parser.parse_args([name] if name else [])  # every valid key, with its default
            prefix = f"{name}." if name else ""
            keys = [k.removeprefix(prefix) for k in defaults.keys() if k.startswith(prefix)]
            raise parse_error(name or "prepare", err, keys, args) from None

    def _section(self):
        """The parsed config of the running subcommand (prepare has none: the whole config)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._section()
        if config.get("checkpoint") and config.checkpoint.dirpath is None:
            # {default_root_dir}/checkpoints/last.ckpt, the same for every run, so `--ckpt_path last` finds it
            config.checkpoint.dirpath = str(Path(config.trainer.default_root_dir or Path.cwd()) / "checkpoints")
        if self.subcommand == "fit" and config.model.init_from is not None:
            path = checkpoint_to_load(config.ckpt_path, self._last_path())
            if path is not None and path.exists():
                resume_without_init_from(config.model, path)

    def instantiate_classes(self) -> None:
        """Build the module, data and Trainer from the config. A value Lightning or torch rejects here (a strategy
        name, a device count, a precision) is a config error, shown as one line like ours."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"{err} (check the config)") from err

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._section().trainer
        if trainer_config.logger in (None, True):  # Lightning's default logger, as Lightning would build it, with
            # TensorBoard's first screen on the run's own cards (console.TensorBoard); a configured logger stands
            kwargs.setdefault("logger", TensorBoard(save_dir=trainer_config.default_root_dir or os.getcwd(),
                                                    version=SLURMEnvironment.job_id()))
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make its saves atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self.subcommand == "fit":
            last = self._last_path()
            trainer.callbacks[:0] = [LoggedStepIsOptimizerStep(), PreemptionCheckpoint(last), ExplainStop(last),
                                     CheckpointBeforeFullDiskStop(last)]
            trainer.callbacks += [TokenThroughput(), RunSummary()]
            bar = trainer.progress_bar_callback
            if bar is not None:
                trainer.callbacks.remove(bar)
            if not sys.stdout.isatty():  # a file, a pipe, a batch job: lines, not a redrawn bar
                trainer.callbacks.append(ConsoleLog(trainer.log_every_n_steps))
            elif bar is not None:
                trainer.callbacks.append(StepProgressBar())
        return trainer

    def _last_path(self) -> Path:
        config = self._section()
        return Path(config.checkpoint.dirpath) / LAST

    def _hand_over(self, path: Path | None) -> None:
        """Lightning loads exactly the checkpoint that was vetted ("last" resolved here, once)."""
        self.config_init[self.subcommand]["ckpt_path"] = None if path is None else str(path)

    def _vet_checkpoint_to_load(self) -> None:
        config = self.config[self.subcommand]
        path = checkpoint_to_load(config.ckpt_path, self._last_path())
        vet_checkpoint_to_load(path, self.trainer, config.model.config.vocab_size)
        self._hand_over(path)

    before_validate = before_test = before_predict = _vet_checkpoint_to_load

    def _say_coverage(self) -> None:
        """A loss over part of the held-out split says so (the quickstart's limit_val_batches reads 4 of 12)."""
        stage = "val" if self.subcommand == "validate" else "test"
        read = sum(getattr(self.trainer, f"num_{stage}_batches"))
        total = len(self.datamodule.val_dataloader())
        if read < total and self.trainer.is_global_zero:
            print(f"{self.subcommand}: read {read} of the {total} batches of the held-out split "
                  f"(trainer.limit_{stage}_batches); --trainer.limit_{stage}_batches 1.0 reads all of it", flush=True)

    after_validate = after_test = _say_coverage

    def before_fit(self) -> None:
        config = self.config.fit
        if config.model.init_from is not None:  # config.yaml records what init_from built, not the config's defaults
            record_architecture(config.model, dataclasses.asdict(self.model.config))
        path = prepare_fit(self.trainer, self._last_path(), config.ckpt_path, config.model.config.vocab_size,
                           self.resources)
        self.datamodule.resume_from = path  # whose prepared data must not be replaced by re-tokenizing
        self._hand_over(path)

    def after_fit(self) -> None:
        if any(isinstance(c, PreemptionCheckpoint) and c.preempted for c in self.trainer.callbacks):
            raise SIGTERMException()  # saved and stopped: exit as preempted, not as finished
        print_sample(self.trainer, self.model)
        summary = next(c for c in self.trainer.callbacks if isinstance(c, RunSummary))
        config = Path(self.trainer.log_dir or "", self.save_config_kwargs.get("config_filename", "config.yaml"))
        summary.print(self.trainer, self._last_path(), config if config.is_file() else None)


class GPT2PrepareCLI(GPT2LightningCLI):
    """`gpt2-lightning prepare`: fit's parser and configs (the same files must describe the same data), but only
    the data module is built, and prepared."""

    def instantiate_classes(self) -> None:
        self.datamodule = GPT2DataModule(**self.config.data.as_dict())


def run_lightning(name: str, argv: Sequence[str]) -> None:
    """LightningCLI on `name` + `argv`; bad input ends in one line saying what to change."""
    defaults = {"default_config_files": [str(QUICKSTART)], "exit_on_error": False, "prog": f"gpt2-lightning {name}"}
    with ExitStack() as resources:
        try:
            GPT2LightningCLI(GPT2LightningModule, GPT2DataModule, args=[name, *argv], resources=resources,
                             save_config_kwargs={"overwrite": True},
                             parser_kwargs={"exit_on_error": False, "prog": "gpt2-lightning",
                                            **{command: defaults for command in LIGHTNING_COMMANDS}})
        except FileNotFoundError as err:
            sys.exit(f"gpt2-lightning {name}: error: {err}. Pass an existing checkpoint to --ckpt_path, or "
                     "`--ckpt_path last` to resume the latest run under --trainer.default_root_dir.")
        except SIGTERMException:
            print(f"gpt2-lightning {name}: stopped by SIGTERM; the state at the last optimizer step is in last.ckpt: "
                  "continue with the same command and --ckpt_path last", file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_STATUS)
        except (UsageError, FloatingPointError, MisconfigurationException) as err:  # config, data, run, divergence
            sys.exit(f"gpt2-lightning {name}: error: {err}")
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise
            where = f"{err.filename} (on the disk mounted at {disk_of(err.filename)})" if err.filename else \
                "the run directory"
            sys.exit(f"gpt2-lightning {name}: error: cannot write {where}: {err.strerror}; the last complete "
                     "checkpoint is intact: free space or fix permissions, then resume with --ckpt_path last")
    # A run that ended well destroys its process group here: left to interpreter shutdown, gloo's worker threads now
    # and then abort the process ("terminate called without an active exception", status -6; pytorch #190489).
    # On success only, as torchtitan does: after a failure another rank may still wait in a collective.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_prepare(argv: Sequence[str]) -> None:
    """Tokenize the data a config names into data.cache_dir, as `fit` would on local rank 0."""
    with ExitStack() as resources:
        cli = GPT2PrepareCLI(GPT2LightningModule, GPT2DataModule, args=list(argv), run=False, resources=resources,
                             parser_kwargs={"default_config_files": [str(QUICKSTART)], "prog": "gpt2-lightning prepare",
                                            "exit_on_error": False,
                                            "description": "Tokenize a config's training data once, ahead of fit."})
    cli.datamodule.prepare_data()


# ---- the table ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One subcommand: what `--help` says of it, and what runs it on the words after its name."""

    summary: str
    run: Callable[[Sequence[str]], None]


def _lightning(name: str, summary: str) -> Command:
    return Command(summary, lambda argv: run_lightning(name, argv))


def _function(name: str, function: Callable) -> Command:
    summary = " ".join(inspect.getdoc(function).split("\n\n")[0].split()).rstrip(".")  # the docstring's first paragraph
    return Command(summary[0].lower() + summary[1:], lambda argv: run_function(name, function, argv))


COMMANDS: dict[str, Command] = {
    "fit": _lightning("fit", "train (or resume with --ckpt_path last) from YAML configs: --config configs/X.yaml, "
                             "any key as --a.b.c"),
    "validate": _lightning("validate", "validation loss of a checkpoint (--ckpt_path) on the config's validation "
                                       "split"),
    "test": _lightning("test", "test loss of a checkpoint (--ckpt_path) on the held-out split (the corpus's last "
                               "data.val_size, which validation reads too)"),
    "predict": _lightning("predict", "next-token predictions of a checkpoint (--ckpt_path) for the held-out split's "
                                     "windows"),
    "prepare": Command("tokenize a config's training data once, ahead of fit: takes fit's --config and --data.* "
                       "arguments", run_prepare),
    "generate": _function("generate", generate),
    "download": _function("download", download),
    "convert": _function("convert", convert),
    "analyze": _function("analyze", analyze),
    "evaluate": _function("evaluate", evaluate),
}


def usage() -> str:
    """`gpt2-lightning --help`: every command of the table, one line each."""
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"    {name:<{width}}  {command.summary}" for name, command in COMMANDS.items())
    return (f"usage: gpt2-lightning COMMAND [options]\n\n{DESCRIPTION}\n\ncommands:\n{listing}\n\n"
            "`gpt2-lightning COMMAND --help` lists a command's options.")


def main(argv: Sequence[str] | None = None) -> None:
    quiet_lightning()
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if words else 2)
    name, rest = words[0], words[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; choose one of {', '.join(COMMANDS)}"
        sys.exit(f"gpt2-lightning: error: unknown command {name!r}{hint}")
    try:
        COMMANDS[name].run(rest)
    except UsageError as err:  # bad input: one line with the fix; anything else is a bug and keeps its traceback
        sys.exit(f"gpt2-lightning {name}: error: {err}")
