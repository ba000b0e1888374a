"""medseg_jax: pure-functional JAX/Flax medical image segmentation.

Importing the package changes no global state: XLA flags are set by the
entry points (`medseg_jax.xla_cpu.configure_flags`).
"""
