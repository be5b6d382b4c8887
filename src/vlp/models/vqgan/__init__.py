"""The VQGAN image tokenizer (taming-transformers' layout): encoder, vector quantizer, decoder, and the
PatchGAN discriminator that trains it."""

from vlp.models.vqgan.model import VQGAN

__all__ = ["VQGAN"]
