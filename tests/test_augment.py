"""Tests of the augmentation ops, eagerly and inside `tf.data.Dataset.map`."""

import numpy as np
import pytest
import tensorflow as tf

from rock_jax import augment

H, W = 60, 80
BOXES = np.array([[0.1, 0.1, 0.5, 0.4], [0.55, 0.5, 0.95, 0.9]], np.float32)


def _example() -> dict:
  """Image whose channel 0 is the mask of the boxes; depth 2 m; normals (1, 0, 0)."""
  image = np.zeros((H, W, 3), np.uint8)
  for y0, x0, y1, x1 in BOXES:
    image[round(y0 * H) : round(y1 * H), round(x0 * W) : round(x1 * W), 0] = 255
  image[..., 1] = np.arange(W, dtype=np.uint8)[None] * 3  # A left-right ramp.
  normals = np.zeros((H, W, 3), np.float32)
  normals[..., 0] = 1.0
  return {
    'image': tf.constant(image),
    'boxes': tf.constant(BOXES),
    'labels': tf.constant([1, 2], tf.int32),
    'depth': tf.fill([H, W], 2.0),
    'normals': tf.constant(normals),
    'normals_mask': tf.ones([H, W], tf.bool),
  }


def _augment(ex, seed):
  return augment.augment_example(ex, seed, image_size=(48, 64), dense_size=(12, 16), jitter=None)


def _check_boxes_match_mask(out):
  """Each kept box covers mask pixels, and the mask lies inside the boxes."""
  mask = out['image'][..., 0].numpy() > 0.5
  boxes = out['boxes'].numpy()
  h, w = mask.shape
  covered = np.zeros_like(mask)
  for y0, x0, y1, x1 in boxes:
    r0, r1, c0, c1 = round(y0 * h), round(y1 * h), round(x0 * w), round(x1 * w)
    covered[r0:r1, c0:c1] = True
    if r1 - r0 > 2 and c1 - c0 > 2:
      assert mask[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1].mean() > 0.95
  # Mask pixels outside every kept box: only those of dropped boxes (centre outside).
  if len(boxes) == 2 or mask.sum() == 0:
    assert (mask & ~covered).sum() <= 0.02 * mask.size + 2 * (h + w)


@pytest.mark.parametrize('seed', range(12))
def test_boxes_follow_the_image_eagerly(seed):
  out = _augment(_example(), tf.constant([seed, 1], tf.int64))
  assert out['image'].shape == (48, 64, 3)
  assert out['depth'].shape == (12, 16) and out['normals'].shape == (12, 16, 3)
  assert out['boxes'].shape[0] == out['labels'].shape[0]
  _check_boxes_match_mask(out)


def test_boxes_follow_the_image_in_dataset_map():
  ds = tf.data.Dataset.range(16).map(
    lambda i: _augment(_example(), tf.stack([tf.constant(5, tf.int64), i]))
  )
  flipped = 0
  for out in ds:
    _check_boxes_match_mask(out)
    ramp = out['image'][..., 1].numpy()
    is_flipped = ramp[:, 0].mean() > ramp[:, -1].mean()
    flipped += is_flipped
    # The normals' x flips with the image.
    np.testing.assert_allclose(out['normals'][..., 0], -1.0 if is_flipped else 1.0)
  assert 2 <= flipped <= 14


def test_eager_and_map_agree():
  seed = tf.constant([3, 9], tf.int64)
  eager = _augment(_example(), seed)
  mapped = next(iter(tf.data.Dataset.from_tensors(seed).map(lambda s: _augment(_example(), s))))
  for key in eager:
    np.testing.assert_allclose(eager[key].numpy(), mapped[key].numpy(), atol=1e-6)


def test_crop_zoom_divides_depth():
  out = augment.crop(_example(), tf.constant([0.5, 0.5, 1.0, 1.0]))
  assert out['image'].shape == (30, 40, 3)
  np.testing.assert_allclose(out['depth'], 1.0)  # Zoom 2: depth 2 m -> 1 m.
  # Box 1 (centre (0.3, 0.25)) is dropped; box 2 is re-expressed in the crop and clipped.
  np.testing.assert_allclose(out['boxes'], [[0.1, 0.0, 0.9, 0.8]], atol=1e-6)
  np.testing.assert_array_equal(out['labels'], [2])


def test_flip_rules():
  out = augment.flip(_example())
  np.testing.assert_allclose(out['boxes'][0], [0.1, 0.6, 0.5, 0.9], atol=1e-6)
  np.testing.assert_allclose(out['normals'][..., 0], -1.0)
  np.testing.assert_array_equal(out['image'][:, 0, 1], _example()['image'][:, -1, 1])


@pytest.mark.parametrize('seed', range(20))
def test_crop_window_is_square_and_large_enough(seed):
  window = augment.sample_crop_window(tf.constant(BOXES), tf.constant([seed, 0])).numpy()
  side_y, side_x = window[2] - window[0], window[3] - window[1]
  np.testing.assert_allclose(side_y, side_x, atol=1e-6)
  assert 0.1 - 1e-6 <= side_y * side_x <= 1 + 1e-6
  assert (window >= 0).all() and (window <= 1 + 1e-6).all()


@pytest.mark.parametrize('mode', [1, 2, 3])
def test_min_iou_modes_hold_their_constraint(mode):
  min_iou = {1: 0.1, 2: 0.3, 3: 0.5}[mode]  # 0.9 is out of reach of these boxes.
  centres = (BOXES[:, :2] + BOXES[:, 2:]) / 2
  cropped = 0
  for s in range(20):
    c = augment.sample_crop_window(tf.constant(BOXES), tf.constant([s, 3]), mode=mode)
    c = c.numpy()
    if (c == [0, 0, 1, 1]).all():
      continue
    cropped += 1
    assert ((centres > c[:2]) & (centres < c[2:])).all(1).any()
    assert augment._iou(tf.constant(c[None]), tf.constant(BOXES)).numpy().max() >= min_iou
  assert cropped > 0


def test_no_crop_mode_and_no_boxes():
  full = [0.0, 0.0, 1.0, 1.0]
  np.testing.assert_array_equal(
    augment.sample_crop_window(tf.constant(BOXES), tf.constant([0, 0]), mode=0), full
  )
  empty = tf.zeros([0, 4])
  for mode in (1, 3, 5):  # Nothing to overlap: no crop.
    np.testing.assert_array_equal(
      augment.sample_crop_window(empty, tf.constant([0, 0]), mode=mode), full
    )
  assert (augment.sample_crop_window(empty, tf.constant([0, 0]), mode=6).numpy() != full).any()


def test_color_jitter_is_deterministic_and_bounded():
  image = tf.random.stateless_uniform([16, 16, 3], [0, 0])
  a = augment.color_jitter(image, tf.constant([1, 2]))
  b = augment.color_jitter(image, tf.constant([1, 2]))
  c = augment.color_jitter(image, tf.constant([1, 3]))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(tf.reduce_min(a)) >= 0.0 and float(tf.reduce_max(a)) <= 1.0


def test_color_jitter_identity_and_grey_preserving():
  image = tf.random.stateless_uniform([8, 8, 3], [0, 1])
  same = augment.color_jitter(
    image, tf.constant([4, 5]), brightness=0, contrast=0, saturation=0, hue=0
  )
  np.testing.assert_allclose(same, image, atol=1e-5)
  # Saturation and hue act on chroma only: a grey image stays grey, at its grey level.
  grey = tf.fill([8, 8, 3], 0.4)
  out = augment.color_jitter(
    grey, tf.constant([4, 5]), brightness=0, contrast=0.0, saturation=0.5, hue=0.5
  )
  np.testing.assert_allclose(out, grey, atol=1e-5)
  # Brightness alone scales every channel by one factor in [0.85, 1.15].
  out = augment.color_jitter(
    image, tf.constant([4, 5]), brightness=0.15, contrast=0, saturation=0, hue=0
  )
  ratio = (out / image).numpy()
  assert np.ptp(ratio) < 1e-4 and 0.85 <= ratio.mean() <= 1.15
