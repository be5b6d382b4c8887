"""vlp.checkpoints: every key that does not fit is named, a matching state passes."""

from __future__ import annotations

import pytest
import torch

from vlp.checkpoints import check_state_matches


def test_names_every_missing_unexpected_and_misshaped_key() -> None:
    own = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}
    given = {"a": torch.ones(2), "b": torch.ones(4, 3), "d": torch.ones(1)}
    with pytest.raises(KeyError) as error:
        check_state_matches(own, given, "ckpt.pt: test weights")
    message = str(error.value)
    assert "ckpt.pt: test weights do not match" in message
    assert "missing ['c']" in message and "unexpected ['d']" in message
    assert "b: (4, 3) given vs (3, 4)" in message and "a:" not in message


def test_a_matching_state_passes() -> None:
    own = {"a": torch.zeros(2, 2)}
    check_state_matches(own, {"a": torch.ones(2, 2)}, "weights")
