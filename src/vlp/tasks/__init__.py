"""LightningModules: optimisation, logging and metrics around a model and its objectives."""

from vlp.tasks.nlvr2 import NLVR2Task
from vlp.tasks.pretrain import PretrainTask
from vlp.tasks.retrieval import RetrievalTask
from vlp.tasks.vqa import VQATask

__all__ = ["NLVR2Task", "PretrainTask", "RetrievalTask", "VQATask"]
