"""Layers every assembly shares: attention (SDPA and the explicit CPU bf16 path), transformer blocks and
encoders, the cross-attending decoder with its KV cache, heads, and autoregressive generation."""
