"""C++ kernels built on first use for the host CPU (:mod:`rwkv_jax.native.build`)."""
