"""vlp: vision-language pre-training from interchangeable parts."""

__version__ = "0.1.0"
