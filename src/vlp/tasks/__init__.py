"""LightningModules: optimisation, logging and metrics around a model and its objectives."""

from vlp.tasks.captioning import CaptioningTask
from vlp.tasks.detection import DetectionTask
from vlp.tasks.e2e_pretrain import E2EPretrainTask
from vlp.tasks.generative_vqa import GenerativeVQATask
from vlp.tasks.nlvr2 import NLVR2Task
from vlp.tasks.pretrain import PretrainTask
from vlp.tasks.retrieval import RetrievalTask
from vlp.tasks.text_to_image import ERNIEViLGTask
from vlp.tasks.vqa import VQATask

__all__ = [
    "CaptioningTask",
    "DetectionTask",
    "E2EPretrainTask",
    "ERNIEViLGTask",
    "GenerativeVQATask",
    "NLVR2Task",
    "PretrainTask",
    "RetrievalTask",
    "VQATask",
]
