"""Visual embedders: pixels → :class:`VisualTokens`."""

from vlp.models.embedders.base import VisualEmbedder, VisualTokens
from vlp.models.embedders.cnn_grid import CNNGridEmbedder
from vlp.models.embedders.vit_patch import ViTPatchEmbedder
from vlp.models.embedders.vq_tokens import VQTokenEmbedder

__all__ = ["CNNGridEmbedder", "VQTokenEmbedder", "ViTPatchEmbedder", "VisualEmbedder", "VisualTokens"]
