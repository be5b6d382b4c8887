"""LightningModules: optimisation, logging and metrics around a model and its objectives."""

from vlp.tasks.pretrain import PretrainTask

__all__ = ["PretrainTask"]
