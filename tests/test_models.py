"""Tests of the backbone, ROCK block, SSD head and assembled detector.

Full-size shapes and parameter counts use `jax.eval_shape` only; anything computed runs
on the tiny `smoke` models at 64x96.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from rock_jax import boxes as box_lib
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector, resnet, rock, ssd

VARIANTS = ('baseline', 'flat_mtl', 'rock_no_fusion', 'rock')
FULL = (480, 640)
TINY = (64, 96)


def _key(seed: int) -> jax.Array:
  # The 'rbg' generator compiles much faster than threefry on CPU; values are irrelevant.
  return jax.random.key(seed, impl='rbg')


def _config(variant='rock', *, tiny=False):
  config = base.get_base_config()
  if tiny:
    config = base.smoke(config)
  config.model.variant = variant
  return config


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _abstract_init(model, image_size, batch=1, **kwargs):
  images = jax.ShapeDtypeStruct((batch, *image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(_key(0), x, train=False, **kwargs), images), images


def _expected_anchors(model_config, image_size, output_stride=16):
  """Default boxes of the SSD maps: conv5 at ceil(H / s), then ceil-halving per extra."""
  h, w = (math.ceil(n / output_stride) for n in image_size)
  total = 0
  for ratios in model_config.ssd.aspect_ratios:
    total += h * w * (2 + 2 * len(ratios))
    h, w = math.ceil(h / 2), math.ceil(w / 2)
  return total


def _init(config, image_size=TINY, batch=2, seed=0):
  model = detector.build_model(config)
  images = jax.random.normal(_key(seed + 1), (batch, *image_size, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(_key(seed), images)
  return model, variables, images


# ------------------------------------------------------------------- full size


@pytest.mark.parametrize('variant', VARIANTS)
def test_full_size_output_shapes(variant):
  config = _config(variant)
  model = detector.build_model(config)
  variables, images = _abstract_init(model, FULL, batch=2)
  assert set(variables) == {'params', 'batch_stats'}
  block = {'flat_mtl': 'flat_mtl', 'rock_no_fusion': 'rock', 'rock': 'rock'}.get(variant)
  assert set(variables['params']) == {'backbone', 'ssd'} | ({block} if block else set())

  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  anchors = _expected_anchors(config.model, FULL)
  assert anchors == 7236
  assert out['boxes'].shape == (2, anchors, 4) and out['boxes'].dtype == jnp.float32
  assert out['logits'].shape == (2, anchors, 20) and out['logits'].dtype == jnp.float32
  aux = {k: (v.shape, v.dtype) for k, v in out['aux'].items()}
  if variant == 'baseline':
    assert aux == {}
  else:
    f32 = jnp.float32
    assert aux == {
      'scene': ((2, 27), f32),
      'scene_map': ((2, 30, 40, 27), f32),
      'depth': ((2, 30, 40), f32),
      'normals': ((2, 30, 40, 3), f32),
    }
  no_aux = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False, with_aux=False), variables, images
  )
  assert no_aux['aux'] == {}


def test_anchor_count_matches_default_boxes():
  boxes = pytest.importorskip('rock_jax.boxes')
  config = _config('baseline')
  model = detector.build_model(config)
  variables, images = _abstract_init(model, FULL)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert out['boxes'].shape[1] == len(boxes.default_boxes(config.model, FULL))


def test_parameter_budget():
  counts = {}
  for variant in VARIANTS:
    variables, _ = _abstract_init(detector.build_model(_config(variant)), FULL)
    counts[variant] = {k: _count(v) for k, v in variables['params'].items()}
  baseline = sum(counts['baseline'].values())
  assert counts['baseline']['backbone'] == 23_508_032
  assert abs(baseline / 27.8e6 - 1) <= 0.02, baseline  # Paper Table 4.
  rock_params = counts['rock']['rock']
  assert rock_params == 4_802_587  # Hand arithmetic (REFERENCE.md).
  assert abs((sum(counts['rock'].values()) - baseline) / 4.80e6 - 1) <= 0.01
  assert abs(sum(counts['rock'].values()) / 32.6e6 - 1) <= 0.02
  # Without fusion the decoders are gone: 2048 x (27 + 128 + 384) weights + BN.
  assert rock_params - counts['rock_no_fusion']['rock'] == 2048 * 539 + 3 * 2 * 2048
  # Flat MTL heads: 1x1 convs with bias into 27, 1 and 3 maps.
  assert counts['flat_mtl']['flat_mtl'] == 2049 * (27 + 1 + 3)


def test_ssd_parameters_by_hand():
  """Extras and predictors against hand arithmetic of the documented design."""
  config = _config('baseline')
  variables, _ = _abstract_init(detector.build_model(config), FULL)
  params = variables['params']['ssd']
  extras = sum(_count(v) for k, v in params.items() if k.startswith('extra'))
  heads = sum(_count(v) for k, v in params.items() if not k.startswith('extra'))
  expected_extras, cin = 0, 2048
  for mid, out in config.model.ssd.extra_layers:
    expected_extras += cin * mid + 9 * mid * out + 2 * (mid + out)  # BN, no conv bias.
    cin = out
  widths = [2048] + [out for _, out in config.model.ssd.extra_layers]
  expected_heads = sum(
    (9 * c + 1) * k * (4 + 20)
    for c, k in zip(widths, box_lib.boxes_per_location(config.model.ssd.aspect_ratios), strict=True)
  )
  assert (extras, heads) == (expected_extras, expected_heads) == (1_223_680, 2_931_504)


@pytest.mark.parametrize(
  'depth,layout,expected',
  [
    (18, 'v1.5', 11_176_512),
    (34, 'v1.5', 21_284_672),
    (50, 'v1.5', 23_508_032),
    (101, 'v1.5', 42_500_160),
    # Keras ResNet50(include_top=False): 23,587,712 weights less 53,120 moving statistics.
    (50, 'v1', 23_534_592),
  ],
)
def test_resnet_parameter_counts(depth, layout, expected):
  model = resnet.ResNet(depth=depth, layout=layout)
  variables, _ = _abstract_init(model, (64, 64))
  assert _count(variables['params']) == expected


@pytest.mark.parametrize('output_stride,size', [(8, (60, 80)), (16, (30, 40)), (32, (15, 20))])
def test_output_stride_shapes(output_stride, size):
  model = resnet.ResNet(depth=50, output_stride=output_stride)
  variables, images = _abstract_init(model, FULL)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert out.shape == (1, *size, 2048)
  # Odd sizes round up at every stride-2 layer.
  variables, images = _abstract_init(model, (65, 97))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert out.shape[1:3] == (math.ceil(65 / output_stride), math.ceil(97 / output_stride))


# ------------------------------------------------------------------- backbone


def _conv_dilations(model, variables, images, kernel=3):
  """(dilation, stride) of every kernel x kernel conv in network order, from the jaxpr."""
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
  result = []
  for eqn in jaxpr.jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      if eqn.invars[1].aval.shape[:2] == (kernel, kernel):
        result.append((eqn.params['rhs_dilation'][0], eqn.params['window_strides'][0]))
  return result


@pytest.mark.parametrize(
  'output_stride,stage_sizes,expected',
  [
    # torchvision replace_stride_with_dilation: first block of a dilated stage keeps the
    # previous dilation on its 3x3 (stride removed), later blocks use the new one.
    (32, (1, 1, 1, 2), [(1, 1), (1, 2), (1, 2), (1, 2), (1, 1)]),
    (16, (1, 1, 1, 2), [(1, 1), (1, 2), (1, 2), (1, 1), (2, 1)]),
    (8, (1, 1, 2, 2), [(1, 1), (1, 2), (1, 1), (2, 1), (2, 1), (4, 1)]),
  ],
)
def test_dilation_semantics(output_stride, stage_sizes, expected):
  # 'conv': every conv a top-level convolution of the jaxpr ('dot' wraps the spatial ones
  # in `layers.conv_tap_grad`, whose forward is the same convolution).
  model = resnet.ResNet(
    depth=50, width=4, stage_sizes=stage_sizes, output_stride=output_stride, conv_1x1='conv'
  )
  images = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda x: model.init(_key(0), x, train=False), images)
  assert _conv_dilations(model, variables, images) == expected


def test_v1_layout_strides_first_conv():
  # 1x1 convs kept as convolutions, so that their strides show in the jaxpr (with 'dot'
  # they slice then multiply: tests/test_layers.py checks that path against this one).
  model = resnet.ResNet(depth=50, width=4, stage_sizes=(1, 1, 1, 1), layout='v1', conv_1x1='conv')
  images = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda x: model.init(_key(0), x, train=False), images)
  # In v1 no 3x3 conv is strided; the stride sits on the 1x1 convs.
  assert all(stride == 1 for _, stride in _conv_dilations(model, variables, images))
  strided_1x1 = [s for _, s in _conv_dilations(model, variables, images, kernel=1) if s == 2]
  assert len(strided_1x1) == 2 * 2  # conv1 and projection of stages 3 and 4 (os 16).
  assert 'bias' in variables['params']['stage1_block1']['conv1']


@pytest.mark.slow
@pytest.mark.parametrize('freeze', [True, False])
def test_freeze_bn_stats(freeze):
  config = _config('rock', tiny=True)
  config.model.backbone.freeze_bn_stats = freeze
  model, variables, images = _init(config)
  _, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'], updates['batch_stats']
  )
  assert any(jax.tree.leaves(changed['backbone'])) != freeze
  assert all(jax.tree.leaves(changed['rock'])) and all(jax.tree.leaves(changed['ssd']))


@pytest.mark.slow
def test_frozen_bn_still_trains_scale_and_offset():
  model = resnet.ResNet(depth=18, width=4, stage_sizes=(1, 1, 1, 1), freeze_bn_stats=True)
  images = jax.random.normal(_key(1), (2, 32, 32, 3))
  variables = model.init(_key(0), images, train=False)

  def loss(params):
    out, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      images,
      train=True,
      mutable=['batch_stats'],
    )
    return jnp.square(out).sum()

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert float(jnp.abs(grads['stem_bn']['scale']).sum()) > 0
  assert float(jnp.abs(grads['stage4_block1']['bn2']['bias']).sum()) > 0


@pytest.mark.slow
def test_bn_momentum():
  config = _config('baseline', tiny=True)
  config.model.backbone.freeze_bn_stats = False
  model, variables, images = _init(config)
  _, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  # Flax: new = momentum * old + (1 - momentum) * batch; old mean is 0 at init.
  new = updates['batch_stats']['backbone']['stem_bn']['mean']
  conv = jax.lax.conv_general_dilated(
    images,
    variables['params']['backbone']['stem_conv']['kernel'],
    (2, 2),
    ((3, 3), (3, 3)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  np.testing.assert_allclose(new, 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- ROCK block


def test_pooling_predictors():
  encoding = jax.random.normal(_key(0), (2, 3, 4, 6))
  scene = rock.pool(tasks_lib.Task('scene', 'image_class', 6), encoding)
  np.testing.assert_allclose(scene['scene'], encoding.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(scene['scene_map'], encoding)
  depth = rock.pool(tasks_lib.Task('depth', 'dense_scalar', 6), encoding)
  np.testing.assert_allclose(depth['depth'], encoding.mean(axis=-1), rtol=1e-6)
  normals = rock.pool(tasks_lib.Task('normals', 'dense_vector', 6, 3), encoding)['normals']
  assert normals.shape == (2, 3, 4, 3)
  # Groups are contiguous blocks of width / components channels.
  np.testing.assert_allclose(normals[..., 1], encoding[..., 2:4].mean(axis=-1), rtol=1e-6)


def test_parse_tasks():
  config = _config().model
  tasks = tasks_lib.parse(config)
  assert [t.name for t in tasks] == ['scene', 'depth', 'normals']
  assert tasks[2] == tasks_lib.Task('normals', 'dense_vector', 384, 3, 'normals')
  config.tasks = 'depth'
  assert [t.name for t in tasks_lib.parse(config)] == ['depth']
  config.tasks = ''
  assert tasks_lib.parse(config) == ()
  config.tasks = 'depth,edges'
  with pytest.raises(ValueError, match='edges'):
    tasks_lib.parse(config)


def _set_decoders(variables, tasks, scale, bias):
  """Makes every decoder output relu(bias) everywhere (BN scale 0 ignores its input)."""
  params = jax.tree.map(lambda x: x, variables['params'])
  for task in tasks:
    bn = params[f'{task.name}_dec']['bn']
    bn['scale'] = jnp.full_like(bn['scale'], scale)
    bn['bias'] = jnp.full_like(bn['bias'], bias)
  return {'params': params, 'batch_stats': variables['batch_stats']}


@pytest.mark.slow
@pytest.mark.parametrize('fusion', ['add', 'product'])
def test_fusion(fusion):
  tasks = tasks_lib.parse(_config(tiny=True).model)
  block = rock.ROCK(tasks, trunk_width=8, fusion=fusion)
  x = jax.random.normal(_key(0), (2, 4, 6, 16))
  variables = block.init(_key(1), x, train=False)
  # Decoders at zero: the block is the identity on X for both fusions.
  refined, _ = block.apply(_set_decoders(variables, tasks, 0.0, 0.0), x, train=False)
  np.testing.assert_allclose(refined, x, rtol=1e-6)
  # Decoders at a constant c: X + T c (Eq. 1) or X (1 + c)^T.
  c = 0.5
  refined, _ = block.apply(_set_decoders(variables, tasks, 0.0, c), x, train=False)
  expected = x + len(tasks) * c if fusion == 'add' else x * (1 + c) ** len(tasks)
  np.testing.assert_allclose(refined, expected, rtol=1e-5)
  # Negative pre-activations are cut by the decoders' ReLU.
  refined, _ = block.apply(_set_decoders(variables, tasks, 0.0, -1.0), x, train=False)
  np.testing.assert_allclose(refined, x, rtol=1e-6)
  # With the real (random) decoders the map changes.
  refined, _ = block.apply(variables, x, train=False)
  assert float(jnp.abs(refined - x).max()) > 1e-3


def test_rock_options():
  tasks = tasks_lib.parse(_config(tiny=True).model)
  x = jnp.ones((1, 4, 6, 16))
  plain = rock.ROCK(tasks, trunk_width=8).init(_key(0), x, train=False)['params']
  extra = rock.ROCK(tasks, trunk_width=8, extra_task_convs=True, post_fusion_bn_relu=True)
  params = extra.init(_key(0), x, train=False)['params']
  added = _count(params) - _count(plain)
  per_task = (8 * 4 + 2 * 4) + (9 * 4 * 4 + 2 * 4) + (4 * 8 + 2 * 8)
  assert added == len(tasks) * per_task + 2 * 16
  refined, _ = extra.apply(extra.init(_key(0), x, train=False), -10 * x, train=False)
  assert float(refined.min()) >= 0  # BN + ReLU after fusion.


@pytest.mark.slow
def test_no_fusion_and_flat_mtl_leave_conv5_unchanged():
  config = _config('baseline', tiny=True)
  _, base_vars, images = _init(config)
  base_out = detector.build_model(config).apply(base_vars, images, train=False)
  for variant in ('rock_no_fusion', 'flat_mtl', 'rock'):
    config = _config(variant, tiny=True)
    model, variables, _ = _init(config)
    merged = {
      col: {**variables[col], **{k: base_vars[col][k] for k in ('backbone', 'ssd')}}
      for col in ('params', 'batch_stats')
    }
    out = model.apply(merged, images, train=False)
    same = np.allclose(out['logits'], base_out['logits'], rtol=1e-5, atol=1e-5)
    assert same == (variant != 'rock'), variant


# ---------------------------------------------------------------- SSD / detector


@pytest.mark.slow
@pytest.mark.parametrize('variant', VARIANTS)
def test_tiny_forward_train(variant):
  config = _config(variant, tiny=True)
  model, variables, images = _init(config)
  out, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  anchors = _expected_anchors(config.model, TINY)
  assert out['boxes'].shape == (2, anchors, 4)
  assert out['logits'].shape == (2, anchors, 20)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  if variant != 'baseline':
    aux = out['aux']
    assert aux['scene'].shape == (2, 27) and aux['normals'].shape == (2, 4, 6, 3)
    np.testing.assert_allclose(aux['scene'], aux['scene_map'].mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.slow
def test_class_bias_prior():
  config = _config('baseline', tiny=True)
  _, variables, _ = _init(config)
  per_location = box_lib.boxes_per_location(config.model.ssd.aspect_ratios)
  for index, k in enumerate(per_location):
    bias = variables['params']['ssd'][f'cls{index}']['bias'].reshape(k, 20)
    np.testing.assert_array_equal(bias[:, 0], 0.0)
    np.testing.assert_allclose(bias[:, 1:], -math.log(99.0), rtol=1e-6)
    np.testing.assert_array_equal(variables['params']['ssd'][f'box{index}']['bias'], 0.0)
  # At init the foreground probability of a box is about pi (background dominates).
  head = ssd.SSDHead(num_classes=19, extra_layers=((4, 8),), aspect_ratios=((2,), (2,)))
  x = jnp.zeros((1, 4, 4, 8))
  _, logits = head.apply(head.init(_key(0), x, train=False), x, train=False)
  probs = jax.nn.softmax(logits, axis=-1)
  np.testing.assert_allclose(probs[..., 1:] / probs[..., :1], 0.01 / 0.99, rtol=1e-4)


@pytest.mark.slow
def test_head_ordering_matches_reshape():
  """Anchor (map, y, x, box) of the flat output is the conv channel it came from."""
  head = ssd.SSDHead(num_classes=1, extra_layers=((4, 8),), aspect_ratios=((2, 3), (2,)))
  x = jax.random.normal(_key(0), (1, 3, 5, 8))
  variables = head.init(_key(1), x, train=False)
  boxes, logits = head.apply(variables, x, train=False)
  assert boxes.shape == (1, 3 * 5 * 6 + 2 * 3 * 4, 4)
  conv = jax.lax.conv_general_dilated(
    x,
    variables['params']['box0']['kernel'],
    (1, 1),
    ((1, 1), (1, 1)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  conv = conv + variables['params']['box0']['bias']
  y, xx, k = 1, 3, 4
  index = (y * 5 + xx) * 6 + k
  np.testing.assert_allclose(boxes[0, index], conv[0, y, xx, 4 * k : 4 * k + 4], rtol=1e-5)
  assert logits.shape == (1, boxes.shape[1], 2)


@pytest.mark.slow
def test_bfloat16():
  config = _config('rock', tiny=True)
  model, variables, images = _init(config)
  reference = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  config.model.dtype = 'bfloat16'
  model = detector.build_model(config)
  abstract = jax.eval_shape(lambda x: model.init(_key(0), x, train=False), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract))
  out = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  for ref, got in zip(jax.tree.leaves(reference), jax.tree.leaves(out), strict=True):
    assert got.dtype == jnp.float32
    scale = float(jnp.abs(ref).max()) + 1e-6
    assert float(jnp.abs(got - ref).max()) / scale < 0.1


def test_config_errors():
  config = _config('rock', tiny=True)
  config.model.ssd.aspect_ratios = ((2,),) * 3
  with pytest.raises(ValueError, match='aspect_ratios'):
    _init(config)
  config = _config('unknown', tiny=True)
  with pytest.raises(ValueError, match='variant'):
    _init(config)
  config = _config('rock', tiny=True)
  config.model.tasks = ''
  with pytest.raises(ValueError, match='task'):
    _init(config)
