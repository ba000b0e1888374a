"""medseg_jax: pure-functional JAX/Flax medical image segmentation."""

from medseg_jax import xla_cpu as _xla_cpu

# Faster XLA:CPU convolutions (YNNPACK), before any JAX backend starts.
_xla_cpu.enable_ynn()
