"""Fréchet distance between image sets (FID) through torchmetrics, with a configurable feature space.

:func:`frechet_distance` returns torchmetrics' ``FrechetInceptionDistance`` over one of two feature
extractors, and both take the same images: float ``[N, 3, H, W]`` in [0, 1], ``update(images, real=...)``.

- ``feature_extractor``: any ``nn.Module`` mapping such images to features ``[N, D]`` (on shapes, the
  judge trained here: :meth:`vlp.metrics.shapes_judge.ShapesJudge.feature_extractor`). Give it a
  ``num_features`` attribute, or torchmetrics probes it once with a random image of ``input_img_size``.
- ``inception_weights``: the path of the FID Inception v3 weights (TensorFlow's 2015-12-05 graph converted
  to PyTorch; pytorch-fid calls the file ``pt_inception-2015-12-05-6726825d.pth``, torch-fidelity
  ``weights-inception-2015-12-05-6726825d.pth``: the same file). torch-fidelity builds the network; the
  file is checked to be a plain tensor state dict (``torch.load(weights_only=True)``) before torch-fidelity
  reads it, since it unpickles without that restriction.

Nothing is downloaded at run time: with neither option, or a path that is not a file, the error names the
option and says where the Inception weights come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from vlp.checkpoints import torch_load

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_HELP = (
    f"FID's Inception v3 weights are the file {INCEPTION_FILE} (a release asset of pytorch-fid, "
    "github.com/mseitzer/pytorch-fid; torch-fidelity publishes the same file as "
    "weights-inception-2015-12-05-6726825d.pth): download it once where there is network access and pass "
    "its local path as inception_weights. vlp never downloads weights at run time."
)
INCEPTION_FEATURES = (64, 192, 768, 2048)


def check_inception_weights(path: str | Path) -> Path:
    """``path`` as a ``Path`` after checking it is a file holding a plain state dict of tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"inception_weights: {path} is not a file. {INCEPTION_HELP}")
    state = torch_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"inception_weights: {path} is not a state dict of tensors. {INCEPTION_HELP}")
    return path


def frechet_distance(
    feature_extractor: nn.Module | None = None,
    inception_weights: str | Path | None = None,
    inception_features: int = 2048,
    **kwargs: Any,
) -> FrechetInceptionDistance:
    """FID over ``feature_extractor``'s features, or Inception's from the local ``inception_weights``.

    Exactly one of the two. ``inception_features`` picks Inception's pooled layer (64, 192, 768 or 2048,
    the standard FID's). ``kwargs`` go to ``FrechetInceptionDistance`` (``reset_real_features``,
    ``input_img_size`` for the probe of an extractor without ``num_features`` ...). Images are float in
    [0, 1] either way (``normalize=True``: torchmetrics hands Inception uint8, a custom extractor the floats).
    """
    if feature_extractor is not None and inception_weights is not None:
        raise ValueError("give feature_extractor or inception_weights, not both")
    if feature_extractor is not None:
        return FrechetInceptionDistance(feature=feature_extractor, normalize=True, **kwargs)
    if inception_weights is None:
        raise ValueError(
            "FID needs a feature space: feature_extractor (an nn.Module mapping images in [0, 1] to [N, D] "
            f"features) or inception_weights (a local path). {INCEPTION_HELP}"
        )
    if inception_features not in INCEPTION_FEATURES:
        raise ValueError(f"inception_features must be one of {INCEPTION_FEATURES}, got {inception_features}")
    path = check_inception_weights(inception_weights)
    return FrechetInceptionDistance(
        feature=inception_features, normalize=True, feature_extractor_weights_path=str(path), **kwargs
    )
