"""Losses, one file per family. ``Objective.forward(outputs, batch) -> ObjectiveOutput``."""

from vlp.objectives.base import Objective, ObjectiveOutput
from vlp.objectives.detection import DetectionObjective
from vlp.objectives.itm import ITMObjective
from vlp.objectives.mlm import MLMObjective
from vlp.objectives.wpa import WPAObjective

__all__ = [
    "DetectionObjective",
    "ITMObjective",
    "MLMObjective",
    "Objective",
    "ObjectiveOutput",
    "WPAObjective",
]
