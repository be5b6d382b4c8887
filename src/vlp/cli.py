"""Command line: ``python -m vlp <command> [options]``; ``python -m vlp --help`` lists every command.

- ``fit|validate|test|predict --config RECIPE.yaml``: Lightning's own ``LightningCLI`` (:class:`VLPCLI`) in
  omegaconf+ parser mode with subclass mode for model and data, so ``--print_config`` shows the resolved recipe
  and a misspelt key or a wrong type fails before any work starts, naming the key. Options are never
  abbreviated (``--trainer.max_step`` is refused, not taken as ``max_steps``). Before anything runs, the
  data is checked against the model (:mod:`vlp.checks`).
- ``data``, ``zoo``, ``bench``, ``sweep``: tool commands, dispatched before Lightning.

A user error (a bad recipe, value, data folder or checkpoint; :mod:`vlp.errors` says which errors count)
prints one line, ``vlp: error: ...``, and exits with status 2. ``--traceback`` anywhere on the command line
(removed before parsing) or ``VLP_DEBUG=1`` prints the full traceback instead.
"""

from __future__ import annotations

import logging
import sys
import traceback
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import set_parsing_settings
from lightning import Callback, LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vlp.allocator import configure_from_env
from vlp.errors import UserError, debug_requested, is_user_error, unwrap
from vlp.parse_errors import describe_parse_error, did_you_mean, error_text, option_strings
from vlp.tool_commands import HELP_FLAGS, print_help

log = logging.getLogger("vlp")

PROG = "python -m vlp"
TRACEBACK_FLAG = "--traceback"
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a recipe: fit --config RECIPE.yaml [--config more.yaml] [--trainer.max_steps=100]",
    "validate": "run a recipe's validation loop, e.g. on a checkpoint: --ckpt_path CKPT",
    "test": "run a recipe's test loop",
    "predict": "run a recipe's predictions (captions, generated images, ...)",
}


class FirstBatch(Callback):
    """Records that a run's first batch has started: errors before it are about the set-up
    (:func:`vlp.errors.is_user_error`)."""

    def __init__(self) -> None:
        self.started = False

    def _start(self, *args: Any) -> None:
        self.started = True

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _start


class VLPCLI(LightningCLI):
    """LightningCLI that refuses abbreviated options, turns parse errors into one-line
    :class:`~vlp.errors.UserError` s, checks the data against the model once both are built, prints the
    final validation metrics of a fit, and takes only weights from ``--ckpt_path``.

    Lightning re-applies the hyperparameters saved in a ``--ckpt_path`` checkpoint over the parsed
    configuration, so evaluation settings given on the command line (``--model.init_args.predict_dir``,
    ``num_beams``, ``judge_checkpoint`` ...) would be silently replaced by the training run's. A vlp
    recipe is the whole configuration (its tasks save only such settings, never the model's structure),
    so here the recipe and the command line decide and the checkpoint gives the weights and the state.
    """

    def __init__(self, *args: Any, parser_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # Subcommand parsers inherit allow_abbrev and exit_on_error from the main parser (jsonargparse).
        # omegaconf+: interpolations (a recipe's ``${trainer.default_root_dir}``, a head's width read from the
        # model's encoder) are resolved once every --config file and command-line value is merged, relative
        # to the subcommand's config, so an override is followed.
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        parser_kwargs = {
            "prog": PROG,
            "allow_abbrev": False,
            "exit_on_error": False,
            "parser_mode": "omegaconf+",
            **(parser_kwargs or {}),
        }
        super().__init__(*args, parser_kwargs=parser_kwargs, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's parsing, without its warning that both ``args`` and ``sys.argv`` are given (``main``
        passes the command line minus its own ``--traceback``), and with a parse error as a one-line
        :class:`~vlp.errors.UserError`."""
        try:
            if isinstance(args, dict):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except ArgumentError as error:
            given = sys.argv[1:] if args is None else [] if isinstance(args, dict) else list(args)
            command = given[0] if given and given[0] in getattr(self, "_subcommand_parsers", {}) else None
            options = option_strings(self._subcommand_parsers[command] if command else parser)
            help_command = " ".join(filter(None, [PROG, command, "--help"]))
            raise UserError(
                describe_parse_error(error, given, options, help_command, LIGHTNING_COMMANDS)
            ) from error

    def _parse_ckpt_path(self) -> None:
        """Lightning's hook that merges the checkpoint's hyperparameters into the config: not done."""

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Check the data against the model (:mod:`vlp.checks`) once both are built, before the trainer;
        only ``fit`` writes the resolved recipe (``config.yaml``) into the run folder."""
        from vlp.checks import check_data_fits_model

        check_data_fits_model(self.model, self.datamodule)
        if self.subcommand != "fit":  # the run folder's config.yaml is the training run's: keep it
            self.save_config_callback = None
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """The run-folder rules of :func:`vlp.runs.prepare_fit`: ``--ckpt_path last`` is the run's own
        ``checkpoints/last.ckpt`` (or an error saying where it looked), and a new run never starts in a
        folder that holds another."""
        from vlp.runs import prepare_fit

        config = self.config_init[self.subcommand]
        config["ckpt_path"] = prepare_fit(self.trainer.default_root_dir, config.get("ckpt_path"))

    def after_fit(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if self.trainer.is_global_zero and metrics:
            print("final validation metrics:")
            for name in sorted(metrics):
                print(f"  {name:<28s} {metrics[name]:.4f}")


def run_lightning(args: Sequence[str], first_batch: FirstBatch | None = None) -> VLPCLI:
    """``fit|validate|test|predict``; ``first_batch`` is added to the trainer's callbacks."""
    return VLPCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [first_batch]} if first_batch is not None else None,
        args=list(args),
        auto_configure_optimizers=False,
    )


# ---- tool commands -----------------------------------------------------------------------------------

DATA_HELP = f"""usage: {PROG} data synth shapes --out DIR [--config.resolution 64 --config.train_samples N ...]
       {PROG} data convert <dataset> --root RAW --out DIR [options]

Write a dataset as webdataset shards.

commands:
  synth shapes        the seeded shapes scenes (images, captions, boxes, QA, image pairs) into DIR
  convert <dataset>   a published dataset's raw download (coco, flickr30k, web, vqav2, nlvr2, ...) into DIR

`{PROG} data synth shapes --help` and `{PROG} data convert --help` list their options."""


def run_data(args: Sequence[str]) -> None:
    """``python -m vlp data synth shapes --out DIR [--config.resolution 64 --config.train_samples N ...]``
    and ``python -m vlp data convert <dataset> --root RAW --out DIR`` (:mod:`vlp.datamodules.convert`)."""
    args = list(args)
    if args[:2] == ["synth", "shapes"]:
        synth_shapes(args[2:])
        return
    if args[:1] == ["convert"]:
        from vlp.datamodules.convert.command import main as convert_main

        convert_main(args[1:])
        return
    if not args or args == ["synth"] or any(arg in HELP_FLAGS for arg in args):
        print_help(DATA_HELP, asked=any(arg in HELP_FLAGS for arg in args))
    raise UserError(
        f"unknown data command {' '.join(args[:2])!r}; the data commands are `{PROG} data synth shapes` "
        f"and `{PROG} data convert <dataset>`"
    )


def synth_shapes(args: Sequence[str]) -> None:
    from jsonargparse import ArgumentParser

    from vlp.datamodules.synth.scenes import ShapesConfig
    from vlp.datamodules.synth.shapes import write_shapes

    parser = ArgumentParser(
        prog=f"{PROG} data synth shapes",
        description="Write the shapes dataset as shards.",
        allow_abbrev=False,
        exit_on_error=False,
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_class_arguments(ShapesConfig, "config", as_group=False)
    try:
        cfg = parser.parse_args(list(args))
    except ArgumentError as error:
        options, help_command = option_strings(parser), f"{PROG} data synth shapes --help"
        raise UserError(describe_parse_error(error, list(args), options, help_command)) from error
    config = ShapesConfig(**cfg.config.as_dict())
    stats = write_shapes(cfg.out, config)
    for split, info in stats["splits"].items():
        print(f"{split:<12s} {info['samples']:>7d} samples in {info['shards']} shards")


def run_bench(args: Sequence[str]) -> None:
    """``python -m vlp bench <name> [options]``: see :mod:`vlp.bench`."""
    from vlp.bench import main as bench_main

    bench_main(args)


def run_zoo(args: Sequence[str]) -> None:
    """``python -m vlp zoo <command> [options]``: see :mod:`vlp.zoo.commands`."""
    from vlp.zoo.commands import main as zoo_main

    zoo_main(args)


def run_sweep(args: Sequence[str]) -> None:
    """``python -m vlp sweep run|status|report SWEEP.yaml``: see :mod:`vlp.sweep.command`."""
    from vlp.sweep.command import main as sweep_main

    sweep_main(args)


COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], object]]] = {
    "data": ("write datasets as webdataset shards: data synth shapes | data convert <dataset>", run_data),
    "zoo": (
        "published checkpoints by name and your own exported: zoo list | info | fetch | convert | export",
        run_zoo,
    ),
    "bench": ("benchmarks side by side with peer implementations: bench vilt, bench scaling, ...", run_bench),
    "sweep": (
        "comparative sweeps of recipes over settings and seeds: sweep run|status|report SWEEP.yaml",
        run_sweep,
    ),
}


# ---- top level ---------------------------------------------------------------------------------------


def top_level_help() -> str:
    summaries = {**LIGHTNING_COMMANDS, **{name: summary for name, (summary, _) in COMMANDS.items()}}
    lines = [f"  {name:<10s} {summary}" for name, summary in summaries.items()]
    return "\n".join(
        [
            f"usage: {PROG} <command> [options] [--traceback]",
            "",
            "vlp: vision-language pre-training (ViLT, E2E-VLP, ERNIE-ViLG) on PyTorch Lightning.",
            "",
            "commands:",
            *lines,
            "",
            f"`{PROG} <command> --help` lists a command's options. An error in a recipe, a value, the data or a",
            "checkpoint prints one line and exits with status 2; add --traceback (or set VLP_DEBUG=1) for the",
            "full traceback.",
        ]
    )


def dispatch(args: list[str], first_batch: FirstBatch) -> None:
    if not args or args[0] in HELP_FLAGS:
        print_help(top_level_help(), asked=bool(args))
    command = args[0]
    if command in COMMANDS:
        COMMANDS[command][1](args[1:])
    elif command in LIGHTNING_COMMANDS:
        run_lightning(args, first_batch)
    else:
        names = [*LIGHTNING_COMMANDS, *COMMANDS]
        what = "expected a command before the option" if command.startswith("-") else "unknown command"
        hint = did_you_mean(command, names)
        raise UserError(f"{what} {command!r}{hint}; the commands are {', '.join(names)} (`{PROG} --help`)")


def report_user_error(error: BaseException, full_traceback: bool) -> None:
    """Print a user error: its traceback when asked for, else one line naming the class being built when
    it came from a recipe's constructor."""
    if full_traceback:
        traceback.print_exception(error)
        return
    cause = unwrap(error)
    built = _class_being_built(cause) if cause is not error else None
    print(f"vlp: error: {built + ': ' if built else ''}{error_text(cause)}", file=sys.stderr)


def _class_being_built(error: BaseException) -> str | None:
    """The class whose constructor raised ``error`` (the outermost ``__init__`` on its traceback)."""
    tb = error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self") if tb.tb_frame.f_code.co_name == "__init__" else None
        if owner is not None:
            return f"{type(owner).__module__}.{type(owner).__qualname__}"
        tb = tb.tb_next
    return None


def main(argv: Sequence[str] | None = None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    args = [arg for arg in given if arg != TRACEBACK_FLAG]
    full_traceback = len(args) < len(given) or debug_requested()
    configure_from_env()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    first_batch = FirstBatch()
    try:
        dispatch(args, first_batch)
    except Exception as error:
        if not is_user_error(error, setting_up=not first_batch.started):
            raise
        report_user_error(error, full_traceback)
        raise SystemExit(2) from None
