"""The objective checks the tasks share (:func:`vlp.tasks.base.check_views`, ``check_objective_types``)."""

from __future__ import annotations

import pytest

from vlp.models.layers.heads import ClassifierHead, ITMHead, MLMHead
from vlp.objectives import ITMObjective, MLMObjective, VQAObjective
from vlp.tasks.base import check_objective_types, check_views

OBJECTIVES = {"mlm": MLMObjective(MLMHead(8, vocab_size=10)), "itm": ITMObjective(ITMHead(8))}


def test_objectives_of_the_views_and_kind_a_task_takes_pass() -> None:
    check_views(OBJECTIVES, ("mlm", "itm"), "PretrainTask runs ['mlm', 'itm']")
    check_objective_types({"itm": OBJECTIVES["itm"]}, ITMObjective, "RetrievalTask scores pairs with")


def test_an_objective_reading_another_view_is_named_with_what_the_task_runs() -> None:
    with pytest.raises(ValueError) as error:
        check_views(OBJECTIVES, (None,), "VQATask runs one pass (question with its image)")
    assert str(error.value) == (
        "objectives.mlm: MLMObjective reads view 'mlm'; VQATask runs one pass (question with its image)"
    )


def test_an_objective_of_another_kind_is_named_with_what_the_task_does() -> None:
    objectives = {"vqa": VQAObjective(ClassifierHead(8, 3)), "itm": ITMObjective(ITMHead(8))}
    with pytest.raises(ValueError) as error:
        check_objective_types(objectives, VQAObjective, "VQATask scores answers with")
    assert (
        str(error.value) == "objectives.itm: VQATask scores answers with VQAObjective heads, got ITMObjective"
    )
