"""Max pooling (the ResNet stem's) with a gradient that XLA:CPU computes fast.

`nn.max_pool` differentiates through `select_and_scatter_add`, which XLA:CPU runs as a
slow scalar loop: 221 ms for the forward and backward passes of the stem's 3x3/2 pool
on 2x240x320x64 (480x640 images), against 60 ms for this version (issue #18). Here the
forward pass is `nn.max_pool` itself, and the backward pass routes each output's
gradient to the first position of its window that holds the maximum. That is the same
rule as `select_and_scatter_add` (window order, ties to the first), so values and
gradients equal `nn.max_pool`'s exactly. It is written as one strided slice per window
offset, which XLA fuses into a few elementwise loops. In a whole train step it paid only
on large maps (BENCHMARKS.md), hence `SLICED_MIN_SIZE`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]

# Pool inputs of at least this many values per image take the sliced gradient in the
# ResNet stem on a CPU. Measured in the whole train step (BENCHMARKS.md): 240x320x64 per
# image (480x640 inputs) x0.83 step time; 72x96x32 (the demo) x1.11, so it stays off there.
SLICED_MIN_SIZE = 2**20


def _window_views(
  x: jnp.ndarray, window: tuple[int, int], strides: tuple[int, int], padding: Padding
) -> list[jnp.ndarray]:
  """One `[N, Ho, Wo, C]` view per window offset (row-major), over the -inf padded input."""
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  n, h, w, c = x.shape
  out_h = (h - window[0]) // strides[0] + 1
  out_w = (w - window[1]) // strides[1] + 1
  views = []
  for i in range(window[0]):
    for j in range(window[1]):
      limit = (n, i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1, c)
      views.append(lax.slice(x, (0, i, j, 0), limit, (1, *strides, 1)))
  return views


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return nn.max_pool(x, window, strides=strides, padding=padding)


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  x, y = residuals
  views, views_vjp = jax.vjp(lambda x: _window_views(x, window, strides, padding), x)
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for view in views:
    first = (view == y) & ~taken  # The first maximum of each window gets the gradient.
    grads.append(jnp.where(first, dy, jnp.zeros_like(dy)))
    taken = taken | first
  return views_vjp(grads)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(
  x: jnp.ndarray,
  window_shape: Sequence[int],
  strides: Sequence[int],
  padding: Sequence[tuple[int, int]],
  *,
  sliced_grad: bool,
) -> jnp.ndarray:
  """`nn.max_pool` over the two spatial axes of NHWC `x`, explicit padding.

  Args:
    x: `[N, H, W, C]`.
    window_shape: `(kh, kw)`.
    strides: `(sh, sw)`.
    padding: `((top, bottom), (left, right))`, padded with -inf as `nn.max_pool` does.
    sliced_grad: the gradient through window slices (fast on XLA:CPU); False is
      `nn.max_pool` unchanged (its `select_and_scatter_add`, fine on GPU and TPU).

  Returns:
    `[N, Ho, Wo, C]`, equal to `nn.max_pool(x, window_shape, strides, padding)`.
  """
  window, strides = tuple(window_shape), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  if x.ndim != 4 or len(window) != 2 or len(strides) != 2 or len(padding) != 2:
    raise ValueError(
      f'max_pool expects NHWC input and 2-D window, strides and padding; got input '
      f'{x.shape}, window {window}, strides {strides}, padding {padding}.'
    )
  if not sliced_grad:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  return _max_pool(x, window, strides, padding)
