"""rock_jax: ROCK, a residual auxiliary block for multi-task object detection, in JAX/Flax."""

__version__ = '0.1.0'
