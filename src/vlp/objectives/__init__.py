"""Losses, one file per family. ``Objective.forward(outputs, batch) -> ObjectiveOutput``."""

from vlp.objectives.base import Objective, ObjectiveOutput
from vlp.objectives.itm import ITMObjective
from vlp.objectives.mlm import MLMObjective

__all__ = ["ITMObjective", "MLMObjective", "Objective", "ObjectiveOutput"]
