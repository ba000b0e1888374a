"""medseg_jax: pure-functional JAX/Flax medical image segmentation."""
