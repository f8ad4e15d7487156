"""Pallas kernels for the WKV hot loop (TPU via Mosaic, GPU via Triton). Imports jax only, never rwkv_jax."""
