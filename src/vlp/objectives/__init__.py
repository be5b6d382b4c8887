"""Losses, one file per family. ``Objective.forward(outputs, batch) -> ObjectiveOutput``."""

from vlp.objectives.base import Objective, ObjectiveOutput
from vlp.objectives.captioning import CaptioningObjective
from vlp.objectives.detection import DetectionObjective
from vlp.objectives.generative_vqa import AnswerLM
from vlp.objectives.itm import ITMObjective
from vlp.objectives.lm_directions import ImageToTextLM, TextToImageLM
from vlp.objectives.mlm import MLMObjective
from vlp.objectives.nlvr2 import NLVR2Objective
from vlp.objectives.reconstruction import ReconstructionObjective
from vlp.objectives.retrieval import RetrievalObjective
from vlp.objectives.vqa import VQAObjective
from vlp.objectives.wpa import WPAObjective

__all__ = [
    "AnswerLM",
    "CaptioningObjective",
    "DetectionObjective",
    "ITMObjective",
    "ImageToTextLM",
    "MLMObjective",
    "NLVR2Objective",
    "Objective",
    "ObjectiveOutput",
    "ReconstructionObjective",
    "RetrievalObjective",
    "TextToImageLM",
    "VQAObjective",
    "WPAObjective",
]
