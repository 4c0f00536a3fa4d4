"""The `gpt2-lightning` command.

`fit | validate | test | predict` are LightningCLI (configs under configs/); `prepare` tokenizes a config's data
ahead of training (fit does it too, on first use); `generate` prints text from a
checkpoint, `download` fetches OpenAI's weights, `convert` re-saves a checkpoint (optionally as grouped-query
attention), `analyze` writes docs/analysis.md.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from gpt2_lightning.checkpoints import is_lightning_checkpoint, save_pretrained
from gpt2_lightning.data import GPT2DataModule
from gpt2_lightning.errors import CheckpointError, UsageError
from gpt2_lightning.hf import HUB_MODELS, download, save_hf
from gpt2_lightning.model import GPT, mha_to_gqa
from gpt2_lightning.module import GPT2LightningModule, load_trained_model
from gpt2_lightning.quantize import QUANTIZATIONS, quantize_weights
from gpt2_lightning.tokenizer import EOT_ID, get_tokenizer
from gpt2_lightning.training import (
    PREEMPTED_EXIT_STATUS,
    AtomicCheckpointIO,
    ConsoleLog,
    LoggedStepIsOptimizerStep,
    PreemptionCheckpoint,
    RunError,
    RunLock,
    StepCheckpoint,
    StepProgressBar,
    TokenThroughput,
    check_distributed_checkpoint,
    count_summary_flops,
    is_launching_process,
    recover_sharded_checkpoint,
)


def pick_device(name: str) -> torch.device:
    """`auto` → cuda, else mps, else cpu; any other name is taken as it is, if this machine has it."""
    if name != "auto":
        device = torch.device(name)
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


def load_any(name_or_path: str) -> GPT:
    """What `--checkpoint` accepts: a Lightning checkpoint `fit` wrote, else whatever GPT.from_pretrained reads."""
    if is_lightning_checkpoint(Path(name_or_path)):
        return load_trained_model(name_or_path)
    return GPT.from_pretrained(name_or_path)


def run_generate(args: argparse.Namespace) -> None:
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UsageError(f"--num-samples and --max-new-tokens must be >= 1, got {args.num_samples} and "
                         f"{args.max_new_tokens}")
    device = pick_device(args.device)
    if args.quantize is not None and args.dtype == "float32":
        raise UsageError(f"--quantize {args.quantize} runs with bfloat16 activations; drop --dtype float32")
    model = load_any(args.checkpoint).to(device)
    n_params = model.num_params()
    if args.quantize is not None:
        model = quantize_weights(model, args.quantize)
    elif args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode(args.prompt, allowed_special={"<|endoftext|>"}) or [EOT_ID]
    input_ids = torch.tensor([prompt_ids], device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    started, produced = time.perf_counter(), 0
    for sample in range(args.num_samples):
        if sample:
            print("\n" + "-" * 40)
        print(args.prompt, end="", flush=True)
        # A character may span several tokens: decode bytes incrementally and print whole characters only.
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stream = model.generate_stream(
            input_ids,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            eos_token_id=EOT_ID,
            generator=generator,
            compile=args.compile,
        )
        for token in stream:
            produced += 1
            if token.item() == EOT_ID:
                break
            print(text.decode(tokenizer.decode_single_token_bytes(token.item())), end="", flush=True)
        print(text.decode(b"", final=True))
    seconds = time.perf_counter() - started
    weights = f"{args.quantize} weights" if args.quantize else args.dtype or "float32"
    print(f"[{args.num_samples} sample(s), {produced} new tokens in {seconds:.1f} s "
          f"({produced / seconds:.1f} tokens/s) from {args.checkpoint} ({n_params:,} parameters, {weights}) "
          f"on {device}, seed {args.seed}]",
          file=sys.stderr)


def run_download(args: argparse.Namespace) -> None:
    path = download(args.name, args.dir)
    print(f"{args.name}: config.json and model.safetensors in {path}")


def run_convert(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty directory; choose a new directory")
    model = load_any(args.checkpoint)
    before = model.num_params()
    if args.n_kv_head is not None:
        model = mha_to_gqa(model, args.n_kv_head)
    # plain GPT-2 goes out in transformers' format (readable by both); any variant in this package's own
    save = save_pretrained if model.config.departures_from_gpt2() else save_hf
    save(model, args.out)
    if args.n_kv_head is None:
        change = f"re-saved unchanged ({before:,} parameters)"
    elif model.num_params() == before:
        change = f"already {args.n_kv_head} key/value heads: nothing to convert, re-saved ({before:,} parameters)"
    else:
        change = (f"n_kv_head={args.n_kv_head}: key/value heads mean-pooled per group, {before:,} → "
                  f"{model.num_params():,} parameters")
    print(f"{args.checkpoint}: {change}, in {'transformers' if save is save_hf else 'this package'}'s format, to {args.out}")


def run_analyze(args: argparse.Namespace) -> None:
    from gpt2_lightning.analysis import analyze  # needs matplotlib: pip install 'gpt2-lightning[analysis]'

    print(f"wrote {analyze(args.budget, args.out, args.runs)}")


LIGHTNING_HELP = {
    "fit": "train (or resume with --ckpt_path last) from YAML configs: --config configs/X.yaml, any key as --a.b.c",
    "validate": "validation loss of a checkpoint (--ckpt_path) on the config's validation split",
    "test": "test loss of a checkpoint (--ckpt_path) on the held-out split",
    "predict": "next-token predictions of a checkpoint (--ckpt_path) for the held-out windows",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2-lightning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    # listed for --help; main() hands these to LightningCLI (`gpt2-lightning fit --help` shows every option)
    for name, help in LIGHTNING_HELP.items():
        command(name, help + "; `gpt2-lightning " + name + " --help` lists every option")
    command("prepare", "tokenize a config's training data once, ahead of fit: takes fit's --config and --data.* "
            "arguments")

    gen = command("generate", "continue a prompt, printing the text as it is produced")
    gen.add_argument("--checkpoint", default="gpt2", help="a hub id (gpt2, gpt2-medium, ...), a checkpoint directory "
                     "(config.json + model.safetensors) or a Lightning .ckpt file or sharded checkpoint directory")
    gen.add_argument("--prompt", default="Hello, I'm a language model,", help="the text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=100, help="tokens to add to each sample (at most)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy decoding")
    gen.add_argument("--top-k", type=int, default=200, help="sample from the k most likely tokens only")
    gen.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of tokens whose "
                     "probability reaches p (nucleus sampling)")
    gen.add_argument("--seed", type=int, default=1337, help="the sampling generator's seed")
    gen.add_argument("--num-samples", type=int, default=1, help="independent continuations of the prompt")
    gen.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    gen.add_argument("--compile", action="store_true", help="decode through torch.compile: ~1.4× faster per token than "
                     "eager on CPUs (1.7× transformers) after a first compile of ~45 s (pays on long outputs)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="the weights' dtype; unset means float32 "
                     "(bfloat16 with --quantize): bfloat16 halves the bytes each token reads, ~2× faster on CPUs")
    gen.add_argument("--quantize", choices=QUANTIZATIONS, default=None, help="decode with int8 weights (torchao, weight-only, "
                     "bf16 activations): ~3× faster on CPUs, held-out loss within 1%% (docs/performance.md)")
    gen.set_defaults(run=run_generate)

    dl = command("download", "fetch OpenAI's GPT-2 weights from the Hugging Face Hub")
    dl.add_argument("name", help=f"one of {', '.join(HUB_MODELS)} or a hub repo id owner/name")
    dl.add_argument("--dir", default=None, help="target directory (default: checkpoints/<name>)")
    dl.set_defaults(run=run_download)

    conv = command("convert", "re-save any checkpoint (a Lightning .ckpt, sharded or not, included) as one "
                   "directory, optionally turning multi-head attention into grouped-query attention")
    conv.add_argument("--checkpoint", required=True, help="hub id, checkpoint directory or Lightning .ckpt")
    conv.add_argument("--n-kv-head", type=int, default=None, help="key/value heads to convert to (divides n_head)")
    conv.add_argument("--out", required=True, help="directory to write config.json + model.safetensors to")
    conv.set_defaults(run=run_convert)

    ana = command("analyze", "measure, probe and train every attention variant; write docs/analysis.md and its "
                  "plots")
    ana.add_argument("--budget", choices=["tiny", "small", "medium"], default="small",
                     help="tiny: a smoke test (seconds to a minute); small: <= 30 min on 2 CPU cores (docs/analysis.md); "
                     "medium: <= 3 hours on 2 CPU cores")
    ana.add_argument("--out", default="docs", help="where analysis.md and img/ go")
    ana.add_argument("--runs", default="runs/analysis", help="where each run's measurements and weights go (under <runs>/<budget>/; an interrupted analysis "
                     "reuses the runs it finished)")
    ana.set_defaults(run=run_analyze)
    return parser


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
QUICKSTART = Path(__file__).parent / "quickstart.yaml"  # the embedded default every Lightning command starts from


class GPT2LightningCLI(LightningCLI):
    """LightningCLI with the data's block_size tied to the model's and last.ckpt kept in a fixed place."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.config.block_size", "data.block_size")
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 100,
                             "checkpoint.save_top_k": 0})

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
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make its saves atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self.subcommand == "fit":
            trainer.callbacks[:0] = [LoggedStepIsOptimizerStep(), PreemptionCheckpoint(self._last_path())]
            trainer.callbacks.append(TokenThroughput())
            count_summary_flops(trainer)
            bar = trainer.progress_bar_callback
            if bar is not None:
                trainer.callbacks.remove(bar)
            if not sys.stdout.isatty():  # a file, a pipe, a batch job: lines, not a redrawn bar
                trainer.callbacks.append(ConsoleLog(trainer.log_every_n_steps))
            elif bar is not None:
                trainer.callbacks.append(StepProgressBar())
        return trainer

    def _last_path(self) -> Path:
        return self._last_checkpoint(self.config[self.subcommand])

    @staticmethod
    def _last_checkpoint(config) -> Path:
        """{checkpoint.dirpath}/last.ckpt: where every run of a directory keeps its newest state."""
        return Path(config.checkpoint.dirpath) / "last.ckpt"

    def after_fit(self) -> None:
        """Show what the model learned: a short sample from the trained weights, printed by rank 0 (a sharded model
        is gathered first, every rank taking part)."""
        trainer, module = self.trainer, self.model
        if any(isinstance(c, PreemptionCheckpoint) and c.preempted for c in trainer.callbacks):
            raise SIGTERMException()  # saved and stopped: exit as preempted, not as finished
        model = module.model
        if any(hasattr(p, "to_local") for p in model.parameters()):  # FSDP2: DTensors, gathered to one full copy
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not trainer.is_global_zero:
                return
            model = GPT(module.config)
            model.load_state_dict(state)
            model.to(module.device)
        if not trainer.is_global_zero:
            return
        tokenizer = get_tokenizer()
        prompt = torch.tensor([[EOT_ID]], device=module.device)
        model = model.eval()
        max_new = min(100, model.config.block_size - 1) if model.config.pos_encoding == "learned" else 100
        out = model.generate(prompt, max_new, temperature=0.8, top_k=200, generator=torch.Generator(module.device).manual_seed(0))
        print("\n--- sample from the trained model ---\n" + tokenizer.decode(out[0, 1:].tolist()) + "\n---")

    @staticmethod
    def _resume_without_init_from(config, path: Path) -> None:
        """A resume takes every weight from its checkpoint, so `model.init_from` is not read (its source may be
        gone): the architecture it gave is the checkpoint's, and config.yaml records that, with init_from null."""
        try:
            saved = torch.load(path / "meta.pt" if path.is_dir() else path, map_location="cpu", weights_only=True,
                               mmap=not path.is_dir())["hyper_parameters"]["config"]
        except Exception:
            return  # the checks before fit name what is wrong with it
        for key, value in saved.items():
            config.model.config[key] = value
        config.model.init_from = None

    def _parse_ckpt_path(self) -> None:
        """LightningCLI would overwrite the parsed config with the checkpoint's hyperparameters, so a resumed run
        silently ignored the command line (and config.yaml recorded the checkpoint's values). Here the command
        line stands, and the module refuses a resume whose architecture or optimisation settings differ."""

    @staticmethod
    def _checkpoint_to_load(config) -> Path | None:
        """The checkpoint a command will load: --ckpt_path, with `last` the run directory's last.ckpt if any."""
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None:
            return None
        if ckpt_path == "last":
            last = GPT2LightningCLI._last_checkpoint(config)
            return last if last.exists() else None
        return Path(ckpt_path)

    def _check_checkpoint_to_load(self) -> None:
        """Vet what will be loaded before Lightning does: a sharded checkpoint's index with the restricted
        unpickler (torch.distributed.checkpoint would unpickle it freely), its strategy, a single file's integrity;
        and a model whose vocabulary cannot hold GPT-2's token ids."""
        vocab = self.config[self.subcommand].model.config.vocab_size
        if vocab < EOT_ID + 1:
            raise RunError(f"model.config.vocab_size={vocab} cannot hold the GPT-2 token ids the data is encoded "
                           f"with (0 … {EOT_ID}); set it >= {EOT_ID + 1}")
        path = self._checkpoint_to_load(self.config[self.subcommand])
        if path is None or not path.exists():
            return  # Lightning reports a missing explicit path; `last` with nothing there starts fresh
        if path.is_dir():
            check_distributed_checkpoint(path)
            if not isinstance(self.trainer.strategy, ModelParallelStrategy):
                raise RunError(
                    f"{path} is a sharded (FSDP) checkpoint; resume it with --config configs/fsdp.yaml on the same "
                    "number of devices, or gather it (gpt2-lightning convert --checkpoint ... --out DIR) and start "
                    "a new run from it with model.init_from=DIR"
                )
            return
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise CheckpointError(
                f"{path} is truncated or corrupt ({type(err).__name__}: {str(err).splitlines()[0][:120]}); resume from "
                "another checkpoint, or start a new run"
            ) from None

    before_validate = before_test = before_predict = _check_checkpoint_to_load

    def before_fit(self) -> None:
        """One run per directory, and `last` always this directory's newest state: take the run lock, finish or
        discard an interrupted sharded save, refuse a fresh run where one already left checkpoints."""
        global _run_lock
        last = self._last_path()
        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy):
            dp, tp = strategy._data_parallel_size, strategy._tensor_parallel_size
            world = self.trainer.num_devices * self.trainer.num_nodes
            if "auto" not in (dp, tp) and dp * tp != world:
                raise RunError(
                    f"the strategy splits data_parallel_size={dp} × tensor_parallel_size={tp} = {dp * tp} ways, but "
                    f"the run has {world} devices (trainer.devices × trainer.num_nodes); set "
                    f"--trainer.strategy.init_args.data_parallel_size {world // tp if world % tp == 0 else world}"
                )
        if is_launching_process():
            _run_lock = RunLock(last.parent)
            _run_lock.acquire()
            recover_sharded_checkpoint(last)
        config = self.config[self.subcommand]
        if config.ckpt_path is None and any(last.parent.glob("last*.ckpt")):
            raise RunError(
                f"{last.parent} already holds a run's checkpoints: pass --ckpt_path last to continue that run, or "
                "another --trainer.default_root_dir for a new one"
            )
        self._check_checkpoint_to_load()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("checkpoint") and config.checkpoint.dirpath is None:
            # {default_root_dir}/checkpoints/last.ckpt, the same for every run, so `--ckpt_path last` finds it
            config.checkpoint.dirpath = os.path.join(config.trainer.default_root_dir or os.getcwd(), "checkpoints")
        if self.subcommand == "fit" and config.model.init_from is not None:
            path = self._checkpoint_to_load(config)
            if path is not None and path.exists():
                self._resume_without_init_from(config, path)


class GPT2PrepareCLI(GPT2LightningCLI):
    """`gpt2-lightning prepare`: fit's parser and configs, but only the data module is built, and prepared."""

    def instantiate_classes(self) -> None:
        self.datamodule = GPT2DataModule(**self.config.data.as_dict())


@contextmanager
def _argv_handed_over(argv: Sequence[str] | None):
    """LightningCLI reads either sys.argv or `args`, and warns when it sees both: with `args`, hide sys.argv."""
    command_line = sys.argv
    if argv is not None:
        sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = command_line


def run_prepare(argv: Sequence[str]) -> None:
    """Tokenize the data a config names into data.cache_dir, as `fit` would on local rank 0."""
    try:
        with _argv_handed_over(argv):
            cli = GPT2PrepareCLI(GPT2LightningModule, GPT2DataModule, args=list(argv), run=False,
                                 parser_kwargs={"default_config_files": [str(QUICKSTART)],
                                                "prog": "gpt2-lightning prepare",
                                                "description": "Tokenize a config's training data once, ahead of fit."})
        cli.datamodule.prepare_data()
    except UsageError as err:  # DataError included
        sys.exit(f"gpt2-lightning prepare: error: {err}")


_run_lock: RunLock | None = None  # held by `fit` in the launching process, released when the command ends


def run_lightning(argv: Sequence[str] | None, command: str) -> None:
    """LightningCLI on `argv` (None: the command line); bad input ends in one line saying what to change."""
    defaults = {"default_config_files": [str(QUICKSTART)]}
    try:
        with _argv_handed_over(argv):
            GPT2LightningCLI(
                GPT2LightningModule,
                GPT2DataModule,
                args=argv,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={name: defaults for name in LIGHTNING_COMMANDS},
            )
    except FileNotFoundError as err:
        sys.exit(
            f"gpt2-lightning {command}: error: {err}. Pass an existing checkpoint to --ckpt_path, or `--ckpt_path "
            "last` to resume the latest run under --trainer.default_root_dir."
        )
    except SIGTERMException:
        print(f"gpt2-lightning {command}: stopped by SIGTERM; the state at the last optimizer step is in last.ckpt: "
              "continue with the same command and --ckpt_path last", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_STATUS)
    except (UsageError, FloatingPointError, MisconfigurationException) as err:  # config, data, run, divergence
        sys.exit(f"gpt2-lightning {command}: error: {err}")
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        sys.exit(f"gpt2-lightning {command}: error: cannot write {err.filename or 'the run directory'} ({err.strerror}); "
                 "the last complete checkpoint is intact: free space or fix permissions, then resume with "
                 "--ckpt_path last")
    finally:
        if _run_lock is not None:
            _run_lock.release()


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip")


def _quiet_lightning() -> None:
    """Keep out of the console what no user can act on: Lightning's advertisements for its cloud products, a
    deprecation warning Lightning raises against its own use of torch, and its warning that an iterable dataset
    with a length may repeat data across workers (ours gives each worker its own batches: data.py)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_not_an_advertisement)  # one function: a second main() call adds nothing


def main(argv: Sequence[str] | None = None) -> None:
    _quiet_lightning()
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv, words[0])
    if words and words[0] == "prepare":
        return run_prepare(words[1:])
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as err:  # bad input: one line with the fix; anything else is a bug and keeps its traceback
        sys.exit(f"gpt2-lightning {args.command}: error: {err}")
