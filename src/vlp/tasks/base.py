"""What every task shares: objectives with real weights, optimiser and schedule, logging."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch import Tensor, nn
from torch.optim import Optimizer

from vlp.batch import Batch
from vlp.models.layers.transformer import TransformerEncoder
from vlp.objectives.base import Objective
from vlp.tasks.compile import CompileConfig, check_backend, compile_blocks, compile_config
from vlp.tasks.init_from import InitReport, load_matching, log_report, read_init_source, resample_positions
from vlp.tasks.optim import build_adamw, linear_warmup_decay, param_groups, schedule_steps
from vlp.tasks.predict_files import PredictionWriter
from vlp.tasks.rng import CHECKPOINT_KEY, gather_rng_states, restore_rank_rng_state


def check_views(objectives: Mapping[str, Objective], views: Collection[str | None], runs: str) -> None:
    """Refuse an objective that reads a view not in ``views``; ``runs`` ends the message, saying which
    passes the task runs."""
    for name, objective in objectives.items():
        if objective.view not in views:
            raise ValueError(
                f"objectives.{name}: {type(objective).__name__} reads view {objective.view!r}; {runs}"
            )


def check_objective_types(objectives: Mapping[str, Objective], kind: type[Objective], use: str) -> None:
    """Refuse an objective that is not a ``kind``; ``use`` says what the task does with them."""
    for name, objective in objectives.items():
        if not isinstance(objective, kind):
            raise ValueError(
                f"objectives.{name}: {use} {kind.__name__} heads, got {type(objective).__name__}"
            )


def has_grad_scaler(plugin: Precision) -> bool:
    """Whether a GradScaler steps the optimiser (``16-mixed`` on CUDA); bf16 and fp32 have none."""
    return isinstance(plugin, MixedPrecision) and plugin.scaler is not None


class ObjectiveTask(PredictionWriter, LightningModule, ABC):
    """A model plus a dict of objectives; the loss is ``sum(weight * objective.loss)``.

    Args:
        model: the assembly (a plain ``nn.Module``).
        objectives: name → objective; logged as ``train/<name>_loss`` and ``val/<metric>``.
        loss_weights: name → multiplier; a missing name weighs 1.0 and 0 skips the objective entirely.
        lr, weight_decay, betas, eps: AdamW; no decay on biases, norms, embeddings.
        warmup: warm-up length, a fraction of the total steps when < 1, else a number of steps.
        end_lr_ratio: the linear decay ends at this fraction of ``lr``.
        lr_multipliers: parameter-name prefix → learning-rate factor (e.g. heads 10x in fine-tuning).
        activation_checkpointing: ``True``/``False`` switches per-block activation checkpointing in
            every :class:`~vlp.models.layers.transformer.TransformerEncoder` of the task (blocks recompute
            their activations in backward instead of storing them: less memory for about a third
            more compute, same numbers); ``None`` leaves each encoder's own setting.
        init_from: start from another run's weights or a zoo entry (a checkpoint path or
            ``zoo:<family>:<tag>``, see :mod:`vlp.tasks.init_from`): keys are matched by name, and which were loaded, newly
            initialised or dropped is logged and kept in :attr:`init_report`.
        predict_dir: where ``predict`` writes its files (:mod:`vlp.tasks.predict_files`); ``None``:
            ``<trainer.default_root_dir>/predictions``.
        compile: ``torch.compile`` every transformer block in place (:mod:`vlp.tasks.compile`): ``true``
            for the defaults of :class:`~vlp.tasks.compile.CompileConfig` (inductor, dynamic shapes, one
            graph per block), or a mapping of its fields (``backend``, ``mode``, ``dynamic``,
            ``fullgraph``); ``false`` runs eagerly.
    """

    def __init__(
        self,
        model: nn.Module,
        objectives: dict[str, Objective],
        loss_weights: dict[str, float] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        warmup: float = 0.1,
        end_lr_ratio: float = 0.0,
        lr_multipliers: dict[str, float] | None = None,
        activation_checkpointing: bool | None = None,
        init_from: str | None = None,
        predict_dir: str | None = None,
        compile: bool | CompileConfig = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "objectives", "compile"])
        self.compile_config = compile_config(compile)
        # plain values in the hyper-parameters: a checkpoint stays loadable with weights_only=True
        self.hparams["compile"] = False if self.compile_config is None else asdict(self.compile_config)
        self._compile_checked = False
        weights = dict(loss_weights or {})
        unknown = sorted(set(weights) - set(objectives))
        if unknown:
            raise ValueError(f"loss_weights names {unknown}, which are not objectives {sorted(objectives)}")
        if not objectives:
            raise ValueError("a task needs at least one objective")
        model_dim = getattr(model, "dim", None)
        for name, objective in objectives.items():
            if model_dim is not None and getattr(objective, "input_dim", model_dim) != model_dim:
                raise ValueError(
                    f"objectives.{name}: head width {objective.input_dim} does not match the model width {model_dim}"
                )
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.predict_dir = predict_dir
        # a prediction's metrics over all its predictions, set by tasks that compute some at the end of
        # ``predict`` (flat ``predict/<name>``); a sweep's predict stage records them (vlp.sweep.callback)
        self.predict_metrics: dict[str, float] = {}
        self._saved_rng_states: list[dict[str, Any]] | None = None
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in objectives}
        if all(w == 0 for w in self.loss_weights.values()):
            raise ValueError("every loss weight is 0: nothing would be trained")
        if activation_checkpointing is not None:
            encoders = [m for m in self.modules() if isinstance(m, TransformerEncoder)]
            if activation_checkpointing and not encoders:
                raise ValueError("activation_checkpointing=True, but the task has no TransformerEncoder")
            for encoder in encoders:
                encoder.activation_checkpointing = activation_checkpointing
        self.init_report: InitReport | None = None
        if init_from is not None:
            state, source = read_init_source(init_from)
            adapted = {**resample_positions(self, state), **self.adapt_init_state(state)}
            self.init_report = load_matching(self, state, source, adapted)
            log_report(self.init_report)

    def adapt_init_state(self, state: dict[str, Tensor]) -> dict[str, str]:
        """Make an ``init_from`` checkpoint fit this task, in place, before keys are matched; return
        ``{task key: how it was made}`` for the report. The default changes nothing."""
        return {}

    @property
    def active_objectives(self) -> dict[str, Objective]:
        """The objectives with a non-zero weight (the others are not computed at all)."""
        return {name: obj for name, obj in self.objectives.items() if self.loss_weights[name] != 0}

    @abstractmethod
    def forward_model(self, batch: Batch) -> Any:
        """Run the assembly on a batch and return what the objectives read: one output, or a dict of
        outputs by view name when the objectives read different passes (``Objective.view``)."""

    def compute_losses(self, batch: Batch, stage: str, outputs: Any = None) -> Tensor:
        """The weighted loss of ``batch``, each objective's loss and figures logged under ``stage``;
        ``outputs``: the batch's :meth:`forward_model` result when the caller has it already."""
        if outputs is None:
            outputs = self.forward_model(batch)
        batch_size = len(batch)
        total = torch.zeros((), device=self.device)
        for name, objective in self.active_objectives.items():
            weight = self.loss_weights[name]
            result = objective(outputs[objective.view] if isinstance(outputs, dict) else outputs, batch)
            total = total + weight * result.loss
            self.log(
                f"{stage}/{name}_loss",
                result.loss.detach(),
                batch_size=batch_size,
                sync_dist=stage != "train",
            )
            for key, value in result.logs.items():
                self.log(f"{stage}/{key}", value, batch_size=batch_size, sync_dist=stage != "train")
        self.log(
            f"{stage}/loss", total.detach(), batch_size=batch_size, prog_bar=True, sync_dist=stage != "train"
        )
        if batch.num_skipped:
            self.log(
                f"{stage}/skipped_samples",
                float(batch.num_skipped),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
            )
        return total

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if len(batch) == 0:  # every sample of this batch was skipped (and counted) by the loader
            return None
        return self.compute_losses(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch):
            self.evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch):
            self.evaluate(batch, "test")

    def evaluate(self, batch: Batch, stage: str) -> None:
        """A non-empty validation (``stage="val"``) or test batch: its losses. Tasks with figures of their
        own (captions, detections) override this."""
        self.compute_losses(batch, stage)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save every rank's RNG states (Lightning saves none), so a resumed run draws the same
        dropout and patch-sampling masks as an uninterrupted one. Lightning calls this on all ranks."""
        checkpoint[CHECKPOINT_KEY] = gather_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the saved RNG states until training starts (:meth:`on_train_start` restores them)."""
        self._saved_rng_states = checkpoint.get(CHECKPOINT_KEY)

    def on_train_start(self) -> None:
        """Restore the checkpoint's RNG states here, after set-up and the sanity check have drawn
        whatever they draw, right before the first resumed step."""
        if self._saved_rng_states is not None:
            states, self._saved_rng_states = self._saved_rng_states, None
            restore_rank_rng_state(states, self.global_rank, self.trainer.world_size)

    def compile_model(self) -> None:
        """With ``compile``, check the backend on the run's device (once), then compile every block in
        place (:func:`~vlp.tasks.compile.compile_blocks`; blocks compiled already are kept).

        Called first in :meth:`configure_model`: before sharding, as ``fully_shard`` then wraps the
        compiled blocks (their hooks run around the compiled code), and before the strategy wraps the
        task (DDP) or the optimiser is built. Compilation itself is lazy: each block compiles at its
        first call, under the precision and sharding it trains with.
        """
        config = self.compile_config
        if config is None:
            return
        if not self._compile_checked:
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            check_backend(config, device)
            self._compile_checked = True
        compile_blocks(self, config)

    def configure_model(self) -> None:
        """Compile the blocks when asked (:meth:`compile_model`); under ``ModelParallelStrategy``, shard
        with FSDP2 (per block / embedder, then each root).

        Lightning calls this after the process group and device mesh exist and before
        ``configure_optimizers``, so the optimiser is built on the sharded (DTensor) parameters. The mesh
        must be all data-parallel (:func:`~vlp.tasks.sharding.fsdp2_mesh`).
        """
        from vlp.tasks.sharding import apply_fsdp2, check_sharded, fsdp2_mesh

        self.compile_model()
        mesh = fsdp2_mesh(self)
        if mesh is None:
            return
        bf16 = str(self.trainer.precision).startswith("bf16")
        apply_fsdp2([self.model, *self.objectives.values()], mesh, bf16=bf16)
        check_sharded(self.named_parameters(), "the model and objectives")

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, also with the fused AdamW under ``bf16-mixed``.

        Lightning's mixed-precision plugin refuses to clip for an optimiser that "unscales its own
        gradients" (the fused AdamW of :func:`~vlp.tasks.optim.build_adamw`), which matters only with a
        gradient scaler: bf16 has none, its gradients are already the true ones, so they are clipped
        here with the plugin's own norm or value clipping. With a scaler (``16-mixed``) the optimiser is
        not fused (:meth:`configure_optimizers`), so Lightning's own path applies.
        """
        plugin = self.trainer.precision_plugin
        if not isinstance(plugin, MixedPrecision) or has_grad_scaler(plugin):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if not gradient_clip_val or gradient_clip_val <= 0:
            return
        if gradient_clip_algorithm == "value":
            plugin.clip_grad_by_value(optimizer, gradient_clip_val)
        else:
            plugin.clip_grad_by_norm(optimizer, gradient_clip_val)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = build_adamw(  # a GradScaler (16-mixed) steps the non-fused AdamW, so Lightning can clip
            param_groups(self, hp.lr, hp.weight_decay, hp.lr_multipliers),
            hp.lr,
            tuple(hp.betas),
            hp.eps,
            fused=not has_grad_scaler(self.trainer.precision_plugin),
        )
        total, warmup = schedule_steps(self.trainer, hp.warmup)
        scheduler = linear_warmup_decay(optimizer, warmup, total, hp.end_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
