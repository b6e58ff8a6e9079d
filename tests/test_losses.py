"""Tests for rock_jax.losses against hand-written numpy on small fixed inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_base_config
from rock_jax import losses
from rock_jax import tasks as tasks_lib


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_hnm(ce: np.ndarray, cls_targets: np.ndarray, ratio: int) -> np.ndarray:
  """Reference hard negative mining: per image a Python loop over sorted negatives."""
  mask = np.zeros_like(cls_targets, bool)
  for b in range(ce.shape[0]):
    num_pos = int((cls_targets[b] > 0).sum())
    neg_idx = np.flatnonzero(cls_targets[b] == 0)
    order = neg_idx[np.argsort(-ce[b, neg_idx], kind='stable')]
    mask[b, order[: ratio * num_pos]] = True
  return mask


def _fixture(seed: int = 0, batch: int = 3, anchors: int = 40, classes: int = 4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, anchors, classes + 1)).astype(np.float32)
  cls_targets = rng.choice([-1, 0, 0, 0, 0, 0, 1, 2, 3, 4], size=(batch, anchors)).astype(np.int32)
  cls_targets[1, :] = np.where(cls_targets[1] > 0, 0, cls_targets[1])  # No positives.
  cls_targets[2, :5] = [1, 2, 3, 4, 1]  # Many positives: fewer negatives than 3x.
  cls_targets[2, 5:] = np.where(cls_targets[2, 5:] == 0, -1, cls_targets[2, 5:])
  cls_targets[2, 5:9] = 0
  box_preds = rng.normal(size=(batch, anchors, 4)).astype(np.float32) * 2
  box_targets = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
  return logits, cls_targets, box_preds, box_targets


def _dense_batch(seed: int = 0, batch: int = 4, h: int = 3, w: int = 5):
  rng = np.random.default_rng(seed)
  depth = rng.uniform(0.0, 12.0, (batch, h, w)).astype(np.float32)  # Some out of range.
  depth_mask = (rng.uniform(size=(batch, h, w)) > 0.3).astype(np.float32)
  normals = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  return {
    'scene': rng.integers(0, 27, batch).astype(np.int32),
    'has_scene': np.array([1, 0, 1, 1], np.float32),
    'depth': depth,
    'depth_mask': depth_mask,
    'has_depth': np.array([1, 1, 0, 1], np.float32),
    'normals': normals,
    'normals_mask': (rng.uniform(size=(batch, h, w)) > 0.2).astype(np.float32),
    'has_normals': np.array([0, 1, 1, 1], np.float32),
  }, {
    'scene': rng.normal(size=(batch, 27)).astype(np.float32),
    'depth': rng.normal(size=(batch, h, w)).astype(np.float32),
    'normals': rng.normal(size=(batch, h, w, 3)).astype(np.float32),
  }


def test_hard_negative_mining_matches_numpy():
  logits, cls_targets, _, _ = _fixture()
  ce = -np.take_along_axis(_log_softmax(logits), np.maximum(cls_targets, 0)[..., None], -1)[..., 0]
  mask = np.asarray(
    losses.hard_negative_mask(
      jnp.asarray(ce), jnp.asarray(cls_targets == 0), jnp.sum(cls_targets > 0, -1), 3
    )
  )
  expected = _np_hnm(ce, cls_targets, 3)
  np.testing.assert_array_equal(mask, expected)
  num_pos = (cls_targets > 0).sum(-1)
  num_neg_available = (cls_targets == 0).sum(-1)
  np.testing.assert_array_equal(mask.sum(-1), np.minimum(3 * num_pos, num_neg_available))
  # Every picked negative has a loss at least as high as every unpicked negative.
  for b in range(mask.shape[0]):
    picked, rest = ce[b, mask[b]], ce[b, (cls_targets[b] == 0) & ~mask[b]]
    if picked.size and rest.size:
      assert picked.min() >= rest.max()


def test_detection_loss_values():
  config = get_base_config()
  logits, cls_targets, box_preds, box_targets = _fixture()
  cls_loss, loc_loss = losses.detection_loss(
    box_preds, logits, box_targets, cls_targets, loss_config=config.loss
  )
  ce = -np.take_along_axis(_log_softmax(logits), np.maximum(cls_targets, 0)[..., None], -1)[..., 0]
  selected = (cls_targets > 0) | _np_hnm(ce, cls_targets, 3)
  num_pos = (cls_targets > 0).sum()
  np.testing.assert_allclose(cls_loss, ce[selected].sum() / num_pos, rtol=1e-5)
  d = np.abs(box_preds - box_targets)
  sl1 = np.where(d < 1, 0.5 * d**2, d - 0.5).sum(-1)
  np.testing.assert_allclose(loc_loss, sl1[cls_targets > 0].sum() / num_pos, rtol=1e-5)


def test_detection_loss_without_positives_is_zero_with_finite_grads():
  config = get_base_config()
  logits, cls_targets, box_preds, box_targets = _fixture()
  cls_targets = np.minimum(cls_targets, 0)

  def f(logits, box_preds):
    c, lo = losses.detection_loss(
      box_preds, logits, box_targets, cls_targets, loss_config=config.loss
    )
    return c + lo

  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
    jnp.asarray(logits), jnp.asarray(box_preds)
  )
  assert value == 0.0
  assert all(np.isfinite(g).all() and (np.asarray(g) == 0).all() for g in grads)


def test_focal_loss_values():
  config = get_base_config()
  config.loss.cls = 'focal'
  logits, cls_targets, box_preds, box_targets = _fixture(seed=2)
  cls_loss, _ = losses.detection_loss(
    box_preds, logits, box_targets, cls_targets, loss_config=config.loss
  )
  log_p = np.take_along_axis(_log_softmax(logits), np.maximum(cls_targets, 0)[..., None], -1)[
    ..., 0
  ]
  alpha = np.where(cls_targets > 0, 0.25, 0.75)
  per = -alpha * (1 - np.exp(log_p)) ** 2 * log_p
  expected = per[cls_targets >= 0].sum() / (cls_targets > 0).sum()
  np.testing.assert_allclose(cls_loss, expected, rtol=1e-5)


def _np_example_mean(per_pixel, weights, present):
  values = []
  for b in range(per_pixel.shape[0]):
    if present[b] > 0 and weights[b].sum() > 0:
      values.append((per_pixel[b] * weights[b]).sum() / weights[b].sum())
  return float(np.mean(values)) if values else 0.0


@pytest.mark.parametrize('kind', ['berhu', 'berhu_fixed', 'huber'])
def test_depth_loss_values(kind):
  batch, aux = _dense_batch()
  c = 0.2
  value = losses.log_space_regression_loss(
    aux['depth'],
    batch['depth'],
    batch['depth_mask'],
    batch['has_depth'],
    kind=kind,
    c=c,
    min_value=0.1,
    max_value=10.0,
  )
  x = np.abs(aux['depth'] - np.log(np.clip(batch['depth'], 0.1, 10.0)))
  weights = batch['depth_mask'] * batch['has_depth'][:, None, None]
  if kind == 'berhu':
    threshold = c * x[weights > 0].max()
    per = np.where(x <= threshold, x, (x**2 + threshold**2) / (2 * threshold))
  elif kind == 'berhu_fixed':
    per = np.where(x <= c, x, (x**2 + c**2) / (2 * c))
  else:
    per = np.where(x < c, 0.5 * x**2 / c, x - 0.5 * c)
  np.testing.assert_allclose(value, _np_example_mean(per, weights, batch['has_depth']), rtol=1e-5)


def test_normals_and_scene_values():
  batch, aux = _dense_batch(seed=1)
  value = losses.normals_loss(
    aux['normals'], batch['normals'], batch['normals_mask'], batch['has_normals'], offset=1.0
  )
  n = aux['normals'] / np.linalg.norm(aux['normals'], axis=-1, keepdims=True)
  g = batch['normals']
  per = -(n * g).sum(-1) + ((n - g) ** 2).sum(-1) + 1.0
  weights = batch['normals_mask'] * batch['has_normals'][:, None, None]
  np.testing.assert_allclose(value, _np_example_mean(per, weights, batch['has_normals']), rtol=1e-5)

  value = losses.classification_loss(aux['scene'], batch['scene'], batch['has_scene'])
  ce = -np.take_along_axis(_log_softmax(aux['scene']), batch['scene'][:, None], -1)[:, 0]
  np.testing.assert_allclose(value, ce[batch['has_scene'] > 0].mean(), rtol=1e-5)


def test_multi_loss_parts_total_and_missing_gradients():
  config = get_base_config()
  logits, cls_targets, box_preds, box_targets = _fixture(batch=4)
  batch, aux = _dense_batch()
  batch.update(box_targets=box_targets, cls_targets=cls_targets)
  outputs = {'boxes': box_preds, 'logits': logits, 'aux': aux}

  def f(aux):
    return losses.multi_loss({**outputs, 'aux': aux}, batch, config=config)

  (total, parts), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(aux)
  assert set(parts) == {'cls', 'loc', 'scene', 'depth', 'normals'}
  w = config.loss.weights
  expected = sum(w[k] * parts[k] for k in parts)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  # Missing annotations: zero gradient for those examples, non-zero for present ones.
  for task in ('scene', 'depth', 'normals'):
    g = np.asarray(grads[task])
    present = batch[f'has_{task}'] > 0
    assert np.isfinite(g).all()
    assert (g[~present] == 0).all()
    assert np.abs(g[present]).sum() > 0


@pytest.mark.slow
def test_multi_loss_all_missing_and_no_tasks():
  config = get_base_config()
  logits, cls_targets, box_preds, box_targets = _fixture(batch=4)
  batch, aux = _dense_batch()
  for task in ('scene', 'depth', 'normals'):
    batch[f'has_{task}'] = np.zeros(4, np.float32)
  batch.update(box_targets=box_targets, cls_targets=np.minimum(cls_targets, 0))
  outputs = {'boxes': box_preds, 'logits': logits, 'aux': aux}
  total, parts = jax.jit(lambda o: losses.multi_loss(o, batch, config=config))(outputs)
  assert float(total) == 0.0
  assert all(float(v) == 0.0 for v in parts.values())
  grads = jax.jit(
    jax.grad(lambda a: losses.multi_loss({**outputs, 'aux': a}, batch, config=config)[0])
  )(aux)
  assert all(np.isfinite(g).all() and (np.asarray(g) == 0).all() for g in grads.values())

  config.model.tasks = ''
  total, parts = losses.multi_loss({'boxes': box_preds, 'logits': logits}, batch, config=config)
  assert set(parts) == {'cls', 'loc'}


def test_aux_weights_zero_and_kind_fallback():
  # A task with no loss of its own name takes the loss of its kind.
  config = get_base_config()
  config.model.tasks = 'height'
  config.model.task_specs.height = dict(kind='dense_scalar', width=8, components=1)
  config.loss.weights.height = 0.0
  logits, cls_targets, box_preds, box_targets = _fixture(batch=3)
  rng = np.random.default_rng(0)
  batch = {
    'box_targets': box_targets,
    'cls_targets': cls_targets,
    'height': rng.uniform(0, 100, (3, 3, 4)).astype(np.float32),
    'height_mask': np.ones((3, 3, 4), np.float32),
    'has_height': np.ones(3, np.float32),
  }
  aux = {'height': rng.normal(size=(3, 3, 4)).astype(np.float32)}
  total, parts = losses.multi_loss(
    {'boxes': box_preds, 'logits': logits, 'aux': aux}, batch, config=config
  )
  assert float(parts['height']) > 0
  np.testing.assert_allclose(total, parts['cls'] + 3.0 * parts['loc'], rtol=1e-6)
  with pytest.raises(ValueError, match='No loss'):
    losses.task_loss_fn(tasks_lib.Task('unknown', 'dense_matrix', 4))


def test_every_logged_part_is_non_negative_by_default():
  """A total near 0 means good: the normals part carries the reference's +1 offset."""
  config = get_base_config()
  assert config.loss.normals_offset == 1.0
  logits, cls_targets, box_preds, box_targets = _fixture(batch=4)
  batch, aux = _dense_batch()
  batch.update(box_targets=box_targets, cls_targets=cls_targets)
  # Normals along the targets (the optimum, -cos = -1), opposite to them, and random.
  # Float rounding may leave -1e-8 at the optimum.
  for sign in (1.0, -1.0, None):
    normals = aux['normals'] if sign is None else sign * batch['normals']
    outputs = {'boxes': box_preds, 'logits': logits, 'aux': {**aux, 'normals': normals}}
    total, parts = losses.multi_loss(outputs, batch, config=config)
    for name, value in parts.items():
      assert float(value) >= -1e-6, (name, float(value))
    assert float(total) >= 0.0
    if sign == 1.0:  # A perfect normals prediction costs 0.
      assert float(parts['normals']) == pytest.approx(0.0, abs=1e-5)
    if sign == -1.0:  # Opposite: -cos + ||n - g||^2 + 1 = 1 + 4 + 1 per pixel.
      assert float(parts['normals']) == pytest.approx(6.0, rel=1e-5)
