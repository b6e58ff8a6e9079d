"""Tests of `layers.Conv` (1x1 convs as dots, spatial kernel gradients as dots per tap):
same parameters and numbers as `nn.Conv`.

Every module that holds 1x1 convs (backbone blocks, ROCK, flat-MTL heads, SSD head,
the whole detector) is run twice from the same variables, once with `conv_1x1='conv'`
(the old `lax.conv_general_dilated` path) and once with 'dot', and the outputs and the
gradients with respect to the parameters and the input are compared. Tiny shapes only.
"""

import functools
import importlib
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


@pytest.mark.parametrize(
  'kwargs,size',
  [
    (dict(kernel_size=(3, 3)), (7, 9)),
    (dict(kernel_size=(3, 3), kernel_dilation=2, padding=((2, 2), (2, 2))), (7, 9)),
    (dict(kernel_size=(2, 3), padding='VALID'), (7, 9)),
    # Wider than the kernel's reach: the flipped padding of the input gradient crops.
    (dict(kernel_size=(3, 3), padding=((3, 0), (1, 4))), (7, 9)),
    # Strided, fewer output pixels than channels (2 x 4 x 5 < 64): im2col dots.
    (dict(kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False), (7, 9)),
    (dict(kernel_size=(3, 2), strides=(2, 3), kernel_dilation=(1, 2), padding='SAME'), (7, 9)),
    (dict(kernel_size=(3, 3), strides=2, padding='VALID'), (7, 9)),
    # Strided, 2 x 8 x 9 >= 64 output pixels: XLA's forward, a kernel-gradient dot per tap.
    (dict(kernel_size=(3, 3), strides=2), (15, 17)),
  ],
)
def test_spatial_conv_gradients_match_nn_conv(kwargs, size):
  """'dot' takes the gradients of a spatial conv as dots (`layers.conv_tap_grad`)."""
  width = layers.TAP_GRAD_MIN_CHANNELS
  x = jax.random.normal(_key(1), (2, *size, width))
  variables = _compare(lambda mode: layers.Conv(width, conv_1x1=mode, **kwargs), x)
  conv = layers.Conv(width, conv_1x1='dot', **kwargs)
  _close(nn.Conv(width, **kwargs).apply(variables, x), conv.apply(variables, x))
  taps = np.prod(kwargs['kernel_size'])
  strided = np.any(np.asarray(kwargs.get('strides', 1)) != 1)
  im2col = np.prod(conv.apply(variables, x).shape[:3]) < width
  grads = _primitives(jax.grad(lambda v, x: conv.apply(v, x).sum(), argnums=(0, 1)), variables, x)
  if not strided:
    # XLA's forward convolution; dX and dW one dot each of the taps of dY side by side.
    assert grads == ['conv_general_dilated', 'dot_general', 'dot_general']
  elif im2col:
    # Forward and kernel gradient one im2col dot each; the input gradient a dot per tap.
    assert grads == ['dot_general'] * (2 + taps)
  else:
    assert grads.count('conv_general_dilated') == 1
    assert grads.count('dot_general') == 2 * taps


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(kernel_size=(3, 3)),
    dict(kernel_size=(3, 3), kernel_dilation=2, padding=((2, 1), (0, 2)), use_bias=False),
    dict(kernel_size=(2, 3), padding='VALID'),
  ],
)
def test_narrow_conv_forward_is_one_dot(kwargs):
  """At most a quarter as wide as its input (the SSD predictors): one dot forward."""
  width = 4 * 5
  x = jax.random.normal(_key(1), (2, 7, 9, width))
  variables = _compare(lambda mode: layers.Conv(5, conv_1x1=mode, **kwargs), x)
  conv = layers.Conv(5, conv_1x1='dot', **kwargs)
  _close(nn.Conv(5, **kwargs).apply(variables, x), conv.apply(variables, x))
  assert _primitives(conv.apply, variables, x) == ['dot_general']
  # One output channel more and it is not narrow: XLA's convolution.
  wider = layers.Conv(6, conv_1x1='dot', **kwargs)
  wide_vars = jax.eval_shape(wider.init, _key(0), x)
  assert _primitives(wider.apply, wide_vars, x) == ['conv_general_dilated']


@pytest.mark.parametrize('strides,features', [(1, 64), (2, 64), (1, 16)])
def test_spatial_conv_gradients_in_bfloat16(strides, features):
  width = layers.TAP_GRAD_MIN_CHANNELS
  x = jax.random.normal(_key(1), (2, 7, 9, width))
  conv = layers.Conv(features, (3, 3), strides, conv_1x1='dot', dtype=jnp.bfloat16)
  variables = conv.init(_key(0), x)

  def grad(c):
    loss = lambda v, x: jnp.sum(c.apply(v, x).astype(jnp.float32) ** 2)
    return jax.grad(loss, argnums=(0, 1))(variables, x.astype(jnp.bfloat16))

  assert conv.apply(variables, x).dtype == jnp.bfloat16
  grads = grad(conv)
  assert grads[0]['params']['kernel'].dtype == jnp.float32  # Params stay float32.
  assert grads[1].dtype == jnp.bfloat16
  _close(grad(nn.Conv(features, (3, 3), strides, dtype=jnp.bfloat16)), grads, rtol=2e-2)


def test_tap_gradient_thresholds():
  """Narrow strided convs and other modes keep nn.Conv's gradient; every unstrided one not."""
  wide = layers.TAP_GRAD_MIN_CHANNELS
  x = jnp.zeros((1, 8, 8, wide))
  cases = (
    (layers.Conv(wide, (3, 3), conv_1x1='dot'), x, True),
    (layers.Conv(wide // 2, (3, 3), conv_1x1='dot'), x, True),  # Narrow, unstrided.
    (layers.Conv(wide, (3, 3), padding='VALID', conv_1x1='dot'), x[:, :3, :3], True),
    (layers.Conv(wide, (3, 3), strides=2, conv_1x1='dot'), x, True),
    (layers.Conv(wide // 2, (3, 3), strides=2, conv_1x1='dot'), x, False),  # Narrow, strided.
    (layers.Conv(wide, (3, 3), conv_1x1='conv'), x, False),
    (layers.Conv(wide, (3, 3), padding='CIRCULAR', conv_1x1='dot'), x, False),
    (layers.Conv(wide, (3, 3), feature_group_count=2, conv_1x1='dot'), x, False),
  )
  for conv, x, dots in cases:
    variables = jax.eval_shape(conv.init, _key(0), x)
    grads = _primitives(jax.grad(lambda v, x, c=conv: c.apply(v, x).sum()), variables, x)
    assert ('dot_general' in grads) == dots, conv


@pytest.mark.parametrize(
  'config_name,expected',
  [
    # At 480x640: the 16 3x3 convs of the ResNet-50, 4 of ROCK, the 5 spatial SSD extras
    # and the 12 box and class predictors.
    ('rock_pytorch', 37),
    # The CPU demo: the ResNet-18's 3x3 convs but its one strided 32-wide conv (15), one of
    # ROCK, the 2 strided SSD extras (64 -> 128) and the 10 predictors.
    ('synthetic', 28),
  ],
)
def test_which_convs_take_the_tap_gradient(config_name, expected, monkeypatch):
  config = importlib.import_module(f'configs.{config_name}').get_config()
  calls = []
  original = layers.conv_tap_grad
  monkeypatch.setattr(
    layers, 'conv_tap_grad', lambda x, *args: calls.append(x.shape) or original(x, *args)
  )
  model = detector.build_model(config)
  images = jax.ShapeDtypeStruct((2, *config.data.image_size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), _key(0), images)
  calls.clear()
  jax.eval_shape(
    functools.partial(model.apply, train=True, mutable=['batch_stats']), variables, images
  )
  assert len(calls) == expected, calls


def test_taps_are_the_pixels_each_kernel_tap_reads():
  """Against a brute-force numpy gather, with stride, dilation and uneven padding."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 8, 3)).astype(np.float32)
  kernel, strides, padding, dilation = (3, 2), (2, 3), ((1, 2), (0, 3)), (2, 3)
  out = (
    (7 + 3 - (kernel[0] - 1) * dilation[0] - 1) // strides[0] + 1,
    (8 + 3 - (kernel[1] - 1) * dilation[1] - 1) // strides[1] + 1,
  )
  got = [
    np.asarray(t) for t in layers.taps(jnp.asarray(x), kernel, out, strides, padding, dilation)
  ]
  assert len(got) == kernel[0] * kernel[1] and got[0].shape == (2, *out, 3)
  for b, y, z, i, j in np.ndindex(2, *out, *kernel):
    row = y * strides[0] + i * dilation[0] - padding[0][0]
    col = z * strides[1] + j * dilation[1] - padding[1][0]
    inside = 0 <= row < 7 and 0 <= col < 8
    expected = x[b, row, col] if inside else np.zeros(3, np.float32)
    np.testing.assert_array_equal(got[i * kernel[1] + j][b, y, z], expected)


def test_untaps_is_the_transpose_of_taps():
  """Against a brute-force numpy scatter-add, and as `taps`' linear transpose."""
  rng = np.random.default_rng(0)
  kernel, strides, padding, dilation = (3, 2), (2, 3), ((1, 2), (0, 3)), (2, 3)
  in_size = (7, 8)
  out = (
    (7 + 3 - (kernel[0] - 1) * dilation[0] - 1) // strides[0] + 1,
    (8 + 3 - (kernel[1] - 1) * dilation[1] - 1) // strides[1] + 1,
  )
  parts = [rng.normal(size=(2, *out, 3)).astype(np.float32) for _ in range(6)]
  got = np.asarray(
    layers.untaps([jnp.asarray(p) for p in parts], in_size, kernel, strides, padding, dilation)
  )
  expected = np.zeros((2, *in_size, 3), np.float32)
  for b, y, z, i, j in np.ndindex(2, *out, *kernel):
    row = y * strides[0] + i * dilation[0] - padding[0][0]
    col = z * strides[1] + j * dilation[1] - padding[1][0]
    if 0 <= row < in_size[0] and 0 <= col < in_size[1]:
      expected[b, row, col] += parts[i * kernel[1] + j][b, y, z]
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  x = jnp.zeros((2, *in_size, 3))
  (transposed,) = jax.linear_transpose(
    lambda x: layers.taps(x, kernel, out, strides, padding, dilation), x
  )([jnp.asarray(p) for p in parts])
  np.testing.assert_allclose(got, np.asarray(transposed), rtol=1e-6, atol=1e-6)


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
@pytest.mark.parametrize('layout', ['v1', 'v1.5'])
def test_resnet_backbone(layout, monkeypatch):
  # v1.5 strides its 3x3 convs: at width 4 they take the strided tap gradients only when
  # the threshold is lowered.
  monkeypatch.setattr(layers, 'TAP_GRAD_MIN_CHANNELS', 4)
  x = jax.random.normal(_key(1), (2, 32, 48, 3))
  make = lambda mode: resnet.ResNet(
    depth=50, width=4, stage_sizes=(1, 1, 1, 1), layout=layout, conv_1x1=mode
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
