"""Tests of `layers.Conv` (1x1 convs as dots): same parameters and numbers as `nn.Conv`.

Every module that holds 1x1 convs (backbone blocks, ROCK, flat-MTL heads, SSD head,
the whole detector) is run twice from the same variables, once with `conv_1x1='conv'`
(the old `lax.conv_general_dilated` path) and once with 'dot', and the outputs and the
gradients with respect to the parameters and the input are compared. Tiny shapes only.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector, layers, resnet, rock, ssd


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl='rbg')


def _close(a, b, *, rtol=1e-5):
  """Equal within float32 rounding, relative to the largest magnitude of each leaf.

  The scale of a leaf is at least 0.1 of the tree's largest value: a conv bias before a
  BatchNorm in training has a zero gradient, and both paths return rounding noise there.
  """
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  floor = 0.1 * max(float(jnp.max(jnp.abs(x))) for x in leaves_a)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert x.shape == y.shape and x.dtype == y.dtype
    scale = max(float(jnp.max(jnp.abs(x))), floor) or 1.0
    np.testing.assert_allclose(np.asarray(y) / scale, np.asarray(x) / scale, atol=rtol)


def _primitives(fn, *args) -> list[str]:
  """The convolutions and dots of the jaxpr of `fn(*args)` (nested jaxprs included), in order."""
  return re.findall(r'\b(conv_general_dilated|dot_general)\[', str(jax.make_jaxpr(fn)(*args)))


def _outputs_and_grads(module, variables, x, **kwargs):
  """Forward output and the gradients of a random projection of it."""

  def f(params, x):
    out = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'], **kwargs)[0]
    leaves = jax.tree.leaves(out)
    weights = [jax.random.normal(_key(i), leaf.shape) for i, leaf in enumerate(leaves)]
    return sum(jnp.sum(w * leaf) for w, leaf in zip(weights, leaves, strict=True)), out

  (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables['params'], x)
  return out, grads


def _compare(make, x, *, rtol=1e-5, **kwargs):
  """`make(mode)` builds a module; its two modes must agree, forward and backward."""
  old, new = make('conv'), make('dot')
  variables = old.init(_key(0), x, **kwargs)
  # The dot path creates the same parameter tree: names, shapes, and values for a key.
  _close(variables, new.init(_key(0), x, **kwargs), rtol=0)
  out_old, grads_old = _outputs_and_grads(old, variables, x, **kwargs)
  out_new, grads_new = _outputs_and_grads(new, variables, x, **kwargs)
  _close(out_old, out_new, rtol=rtol)
  _close(grads_old, grads_new, rtol=rtol)
  return variables


@pytest.mark.slow
@pytest.mark.parametrize(
  'kwargs',
  [
    dict(kernel_size=(1, 1)),
    dict(kernel_size=(1, 1), use_bias=False, padding='VALID'),
    dict(kernel_size=(1, 1), strides=2, padding=((0, 0), (0, 0))),
    dict(kernel_size=(1, 1), strides=(2, 3), padding='SAME'),
  ],
)
def test_pointwise_conv_matches_nn_conv(kwargs):
  x = jax.random.normal(_key(1), (2, 7, 9, 5))
  variables = _compare(lambda mode: layers.Conv(4, conv_1x1=mode, **kwargs), x)
  assert variables['params']['kernel'].shape == (1, 1, 5, 4)
  # And the reference is nn.Conv itself, not only the 'conv' mode of the subclass.
  _close(
    nn.Conv(4, **kwargs).apply(variables, x),
    layers.Conv(4, conv_1x1='dot', **kwargs).apply(variables, x),
  )


def test_dot_mode_has_no_conv_for_1x1_only():
  x = jnp.zeros((1, 6, 6, 3))
  for kernel, expected in (((1, 1), 0), ((3, 3), 1)):
    conv = layers.Conv(4, kernel, conv_1x1='dot')
    variables = conv.init(_key(0), x)
    prims = _primitives(conv.apply, variables, x)
    assert prims.count('conv_general_dilated') == expected
    assert ('dot_general' in prims) == (expected == 0)
    # Gradients too: the backward pass of a 1x1 has no convolution either.
    grad_prims = _primitives(jax.grad(lambda v, x, c=conv: c.apply(v, x).sum()), variables, x)
    assert ('conv_general_dilated' in grad_prims) == (expected == 1)


def test_use_dot_modes():
  assert layers.use_dot('dot', 'gpu') and layers.use_dot('dot', 'cpu')
  assert not layers.use_dot('conv', 'cpu')
  # 'auto' keeps convolutions on accelerators (cuDNN, the MXU) and uses dots on a CPU.
  assert layers.use_dot('auto', 'cpu')
  assert not layers.use_dot('auto', 'gpu') and not layers.use_dot('auto', 'tpu')
  with pytest.raises(ValueError, match='conv_1x1'):
    layers.use_dot('matmul')


@pytest.mark.slow
@pytest.mark.parametrize(
  'layout,stride,in_width', [('v1.5', 1, 16), ('v1', 2, 8), ('v1.5', 2, 8), ('v1', 1, 16)]
)
def test_bottleneck_block(layout, stride, in_width):
  # v1 strides the first 1x1 conv and the projection (slice, then multiply).
  x = jax.random.normal(_key(1), (2, 7, 9, in_width))
  make = lambda mode: resnet.Block(
    4, True, stride=stride, layout=layout, use_running_average=False, conv_1x1=mode
  )
  _compare(make, x)


@pytest.mark.slow
def test_resnet_backbone():
  x = jax.random.normal(_key(1), (2, 32, 48, 3))
  make = lambda mode: resnet.ResNet(
    depth=50, width=4, stage_sizes=(1, 1, 1, 1), layout='v1', conv_1x1=mode
  )
  _compare(make, x, train=True)


@pytest.mark.slow
@pytest.mark.parametrize('extra', [False, True])
def test_rock_block(extra):
  tasks = (
    tasks_lib.Task('scene', 'image_class', 5),
    tasks_lib.Task('depth', 'dense_scalar', 4),
    tasks_lib.Task('normals', 'dense_vector', 6, 3),
  )
  x = jax.random.normal(_key(1), (2, 4, 6, 16))
  make = lambda mode: rock.ROCK(
    tasks, trunk_width=8, extra_task_convs=extra, post_fusion_bn_relu=extra, conv_1x1=mode
  )
  _compare(make, x, train=True)
  flat = lambda mode: rock.FlatMTL(tasks, conv_1x1=mode)
  _compare(flat, x, train=True)


@pytest.mark.slow
@pytest.mark.parametrize('extras_bn', [True, False])
def test_ssd_head(extras_bn):
  x = jax.random.normal(_key(1), (2, 5, 6, 16))
  make = lambda mode: ssd.SSDHead(
    num_classes=3,
    extra_layers=((4, 8), (4, 8)),
    aspect_ratios=((2,), (2,), (2,)),
    extras_bn=extras_bn,
    conv_1x1=mode,
  )
  _compare(make, x, train=True)


@pytest.mark.slow
def test_detector():
  # The ROCK variant holds every kind of 1x1 conv but the flat-MTL heads (tested above).
  config = base.smoke(base.get_base_config())
  x = jax.random.normal(_key(1), (2, 32, 48, 3))

  def make(mode):
    model_config = config.model.copy_and_resolve_references()
    model_config.conv_1x1 = mode
    return detector.Detector(model_config)

  # Ten BatchNorms in training mode (batch statistics over 2 x 2 x 3 pixels in conv5)
  # amplify the rounding differences of the summation order. With the merged base config
  # the worst leaf (normals, values near +-1) differed by 8.2e-4 of its scale: bound 1e-3.
  _compare(make, x, rtol=1e-3, train=True)


def test_detector_auto_on_accelerators_is_the_old_graph(monkeypatch):
  """On GPU / TPU, 'auto' traces exactly the convolutions of 'conv' (the old model)."""
  config = base.smoke(base.get_base_config())
  images = jnp.zeros((1, 32, 48, 3))

  def primitives(mode):
    model_config = config.model.copy_and_resolve_references()
    model_config.conv_1x1 = mode
    model = detector.Detector(model_config)
    variables = jax.eval_shape(functools.partial(model.init, train=False), _key(0), images)
    return _primitives(lambda v: model.apply(v, images, train=False), variables)

  conv, dot = primitives('conv'), primitives('dot')
  assert conv.count('conv_general_dilated') > dot.count('conv_general_dilated') > 0
  monkeypatch.setattr(layers.jax, 'default_backend', lambda: 'gpu')
  assert primitives('auto') == conv
  monkeypatch.setattr(layers.jax, 'default_backend', lambda: 'cpu')
  assert primitives('auto') == dot


def test_detector_rejects_unknown_mode():
  config = base.smoke(base.get_base_config())
  config.model.conv_1x1 = 'einsum'
  model = detector.build_model(config)
  with pytest.raises(ValueError, match='conv_1x1'):
    jax.eval_shape(functools.partial(model.init, train=False), _key(0), jnp.zeros((1, 32, 48, 3)))
