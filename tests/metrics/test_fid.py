"""FID wrapper: a custom feature space, the local Inception weights, and the errors that name the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vlp.metrics.fid import INCEPTION_FILE, frechet_distance


class TinyFeatures(nn.Module):
    """A fixed random projection of 8x8-pooled images: [N, 3, H, W] in [0, 1] -> [N, 16]."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, self.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.adaptive_avg_pool2d(images, 8).flatten(1))


def fid_of(metric, real: torch.Tensor, fake: torch.Tensor) -> float:
    metric.reset()
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_a_set_against_itself_is_zero_and_the_distance_grows_with_a_shift() -> None:
    metric = frechet_distance(TinyFeatures())
    images = torch.rand(200, 3, 32, 32)
    same = fid_of(metric, images, images)
    assert abs(same) < 1e-3
    other = fid_of(metric, images, torch.rand(200, 3, 32, 32))  # same distribution, other draw
    shifted = [fid_of(metric, images, (images + s).clamp(0, 1)) for s in (0.1, 0.2, 0.4)]
    assert same < other < shifted[0] < shifted[1] < shifted[2]


def test_without_a_feature_space_the_error_says_how_to_get_inception_weights() -> None:
    with pytest.raises(ValueError, match=f"feature_extractor.*inception_weights.*{INCEPTION_FILE}"):
        frechet_distance()


def test_a_missing_weights_file_is_named_with_where_the_weights_come_from(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / INCEPTION_FILE
    with pytest.raises(FileNotFoundError, match=f"inception_weights: {missing} is not a file.*pytorch-fid"):
        frechet_distance(inception_weights=missing)


def test_both_feature_spaces_at_once_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        frechet_distance(TinyFeatures(), inception_weights="x.pth")


def test_inception_reads_a_local_file_and_never_downloads(tmp_path: Path, monkeypatch) -> None:
    """torch-fidelity's Inception with random weights saved here (the real file is never needed)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    with monkeypatch.context() as patch:  # build a random-weight Inception once, to save its state
        patch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        state = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["64"]).state_dict()
    path = tmp_path / INCEPTION_FILE
    torch.save(state, path)
    monkeypatch.setattr(inception, "load_state_dict_from_url", no_download)
    metric = frechet_distance(inception_weights=path, inception_features=64)
    images = torch.rand(6, 3, 32, 32)
    assert abs(fid_of(metric, images, images)) < 1e-2
    torch.save({"weights": [1, 2]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        frechet_distance(inception_weights=tmp_path / "bad.pth")
