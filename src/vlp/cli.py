"""Command line: ``python -m vlp {fit,validate,test,predict} --config X.yaml`` plus tool commands.

Training commands are Lightning's own ``LightningCLI`` in omegaconf parser mode with subclass mode for
model and data, so ``--print_config`` shows the resolved recipe and a misspelt key or a wrong type
fails before any work starts, naming the key. Tool commands (``data`` ...) are dispatched first.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from vlp.allocator import configure_from_env

log = logging.getLogger("vlp")


class VLPCLI(LightningCLI):
    """LightningCLI that prints the final validation metrics of a fit, and takes only weights from
    ``--ckpt_path``.

    Lightning re-applies the hyperparameters saved in a ``--ckpt_path`` checkpoint over the parsed
    configuration, so evaluation settings given on the command line (``--model.init_args.predict_dir``,
    ``num_beams``, ``judge_checkpoint`` ...) would be silently replaced by the training run's. A vlp
    recipe is the whole configuration (its tasks save only such settings, never the model's structure),
    so here the recipe and the command line decide and the checkpoint gives the weights and the state.
    """

    def _parse_ckpt_path(self) -> None:
        """Lightning's hook that merges the checkpoint's hyperparameters into the config: not done."""

    def after_fit(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if self.trainer.is_global_zero and metrics:
            print("final validation metrics:")
            for name in sorted(metrics):
                print(f"  {name:<28s} {metrics[name]:.4f}")


def run_lightning(args: Sequence[str]) -> VLPCLI:
    return VLPCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=list(args),
        auto_configure_optimizers=False,
    )


def run_data(args: Sequence[str]) -> None:
    """``python -m vlp data synth shapes --out DIR [--resolution 64 --train_samples N ...]``."""
    from jsonargparse import ArgumentParser

    from vlp.datamodules.synth.shapes import ShapesConfig, write_shapes

    parser = ArgumentParser(
        prog="python -m vlp data synth shapes", description="Write the shapes dataset as shards."
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_class_arguments(ShapesConfig, "config", as_group=False)
    if list(args[:2]) != ["synth", "shapes"]:
        raise SystemExit("usage: python -m vlp data synth shapes --out DIR [options]  (see --help)")
    cfg = parser.parse_args(list(args[2:]))
    config = ShapesConfig(**cfg.config.as_dict())
    stats = write_shapes(cfg.out, config)
    for split, info in stats["splits"].items():
        print(f"{split:<12s} {info['samples']:>7d} samples in {info['shards']} shards")


def run_bench(args: Sequence[str]) -> None:
    """``python -m vlp bench scaling [options]``: see :mod:`vlp.bench`."""
    from vlp.bench import main as bench_main

    bench_main(args)


def run_zoo(args: Sequence[str]) -> None:
    """``python -m vlp zoo convert-vilt [options]``: see :mod:`vlp.zoo.commands`."""
    from vlp.zoo.commands import main as zoo_main

    zoo_main(args)


COMMANDS: dict[str, Callable[[Sequence[str]], object]] = {
    "data": run_data,
    "bench": run_bench,
    "zoo": run_zoo,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    configure_from_env()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args and args[0] in COMMANDS:
        COMMANDS[args[0]](args[1:])
        return
    run_lightning(args)
