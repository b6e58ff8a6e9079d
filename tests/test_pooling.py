"""Tests of `pooling.max_pool`: the values and gradients of `nn.max_pool`, exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rock_jax.models import pooling, resnet

SETTINGS = [
  # window, strides, padding: the ResNet stem's, then others.
  ((3, 3), (2, 2), ((1, 1), (1, 1))),
  ((2, 2), (2, 2), ((0, 0), (0, 0))),
  ((3, 3), (1, 1), ((1, 1), (1, 1))),
  ((3, 2), (2, 1), ((1, 0), (0, 1))),
]


def _inputs():
  rng = np.random.default_rng(0)
  # Random values after a ReLU (ties at zero, as after the stem), and small integers
  # (ties at positive values inside windows).
  relu = np.maximum(rng.normal(size=(2, 9, 11, 3)), 0).astype(np.float32)
  ints = rng.integers(0, 3, size=(2, 9, 11, 3)).astype(np.float32)
  return [jnp.asarray(relu), jnp.asarray(ints)]


@pytest.mark.parametrize('window,strides,padding', SETTINGS)
def test_values_and_gradients_equal_nn_max_pool(window, strides, padding):
  for x in _inputs():
    ref = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
    new = lambda x: pooling.max_pool(x, window, strides, padding, sliced_grad=True)
    y_ref, vjp_ref = jax.vjp(ref, x)
    y_new, vjp_new = jax.vjp(new, x)
    np.testing.assert_array_equal(np.asarray(y_new), np.asarray(y_ref))
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y_ref.shape).astype(np.float32))
    (g_ref,), (g_new,) = vjp_ref(dy), vjp_new(dy)
    # Ties go to the first maximum of the window in both: not merely the same sum.
    np.testing.assert_array_equal(np.asarray(g_new), np.asarray(g_ref))
    assert float(jnp.abs(g_new).sum()) > 0


def _grad_jaxpr(fn, x) -> str:
  return str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(fn(x) ** 2)))(x))


def test_sliced_gradient_has_no_select_and_scatter():
  x = _inputs()[0]
  window, strides, padding = SETTINGS[0]
  sliced = _grad_jaxpr(lambda x: pooling.max_pool(x, window, strides, padding, sliced_grad=True), x)
  plain = _grad_jaxpr(lambda x: pooling.max_pool(x, window, strides, padding, sliced_grad=False), x)
  assert 'select_and_scatter_add' not in sliced
  assert 'select_and_scatter_add' in plain


def test_resnet_stem_pool_follows_the_backend_and_size(monkeypatch):
  # 'auto': sliced gradient for a large pool on a CPU, nn.max_pool's own on an
  # accelerator; 'conv': never.
  model_for = lambda mode: resnet.ResNet(depth=18, width=4, stage_sizes=(1, 1, 1, 1), conv_1x1=mode)
  x = jnp.zeros((1, 16, 16, 3))

  def has_select_and_scatter(mode):
    model = model_for(mode)
    variables = model.init(jax.random.key(0), x, train=False)
    grad = jax.grad(lambda x: jnp.sum(model.apply(variables, x, train=False)))
    return 'select_and_scatter_add' in str(jax.make_jaxpr(grad)(x))

  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  # A small pool keeps select_and_scatter (the sliced one was slower there).
  assert has_select_and_scatter('auto') and has_select_and_scatter('dot')
  monkeypatch.setattr(pooling, 'SLICED_MIN_SIZE', 8 * 8 * 4)  # The stem's map: 8x8x4.
  assert not has_select_and_scatter('auto') and has_select_and_scatter('conv')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert has_select_and_scatter('auto') and not has_select_and_scatter('dot')


def test_rejects_other_layouts():
  with pytest.raises(ValueError, match='max_pool expects NHWC'):
    pooling.max_pool(jnp.zeros((2, 8, 3)), (3,), (2,), ((1, 1),), sliced_grad=True)
