"""Tests for rock_jax.boxes: default boxes, conversions, IoU, coding and numpy matching."""

import math

import hypothesis
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import strategies as st

from configs.base import get_base_config, smoke
from rock_jax import boxes

_SETTINGS = hypothesis.settings(max_examples=40, deadline=None, derandomize=True)


def _random_corners(rng: np.random.Generator, n: int, min_size: float = 0.02) -> np.ndarray:
  centres = rng.uniform(0.0, 1.0, (n, 2))
  sizes = rng.uniform(min_size, 0.6, (n, 2))
  return np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)


def _corners_strategy(n_min: int = 1, n_max: int = 6):
  """Boxes with positive size, as [ymin, xmin, ymax, xmax]."""

  def build(raw):
    raw = np.asarray(raw, np.float64).reshape(-1, 4)
    y0, x0 = raw[:, 0], raw[:, 1]
    h, w = 0.01 + raw[:, 2] * 0.9, 0.01 + raw[:, 3] * 0.9
    return np.stack([y0, x0, np.minimum(y0 + h, 1.5), np.minimum(x0 + w, 1.5)], -1)

  return st.lists(
    st.tuples(*[st.floats(0.0, 1.0, allow_nan=False)] * 4), min_size=n_min, max_size=n_max
  ).map(build)


def test_feature_map_sizes_paper():
  assert boxes.feature_map_sizes((480, 640), 16, 6) == [
    (30, 40),
    (15, 20),
    (8, 10),
    (4, 5),
    (2, 3),
    (1, 2),
    (1, 1),
  ]
  assert boxes.feature_map_sizes((64, 96), 16, 4) == [(4, 6), (2, 3), (1, 2), (1, 1), (1, 1)]
  assert boxes.feature_map_sizes((100, 90), 8, 1) == [(13, 12), (7, 6)]


def test_box_shapes_order_and_sizes():
  shapes = boxes.box_shapes(0.2, 0.45, (2, 3))
  assert len(shapes) == 6
  assert shapes[0] == (0.2, 0.2)
  np.testing.assert_allclose(shapes[1], (0.3, 0.3))
  np.testing.assert_allclose(shapes[2], (0.2 / math.sqrt(2), 0.2 * math.sqrt(2)))  # wide
  np.testing.assert_allclose(shapes[3], (0.2 * math.sqrt(2), 0.2 / math.sqrt(2)))  # tall
  np.testing.assert_allclose(shapes[4], (0.2 / math.sqrt(3), 0.2 * math.sqrt(3)))


def test_default_boxes_paper_config_order():
  config = get_base_config()
  d = boxes.default_boxes(config.model, (480, 640))
  per_loc = boxes.boxes_per_location(config.model.ssd.aspect_ratios)
  sizes = boxes.feature_map_sizes((480, 640), 16, 6)
  assert per_loc == (4, 6, 6, 6, 4, 4, 4)
  assert d.shape == (sum(h * w * k for (h, w), k in zip(sizes, per_loc, strict=True)), 4)
  assert d.dtype == np.float32
  # First map, location (0, 0): four boxes at the same centre, square s_0 first.
  np.testing.assert_allclose(d[:4, :2], [[0.5 / 30, 0.5 / 40]] * 4, rtol=1e-6)
  np.testing.assert_allclose(d[0, 2:], [0.07, 0.07], rtol=1e-6)
  np.testing.assert_allclose(d[1, 2:], [math.sqrt(0.07 * 0.15)] * 2, rtol=1e-6)
  # Row-major: the next location is (0, 1).
  np.testing.assert_allclose(d[4, :2], [0.5 / 30, 1.5 / 40], rtol=1e-6)
  # Second row of the first map starts after 40 locations.
  np.testing.assert_allclose(d[40 * 4, :2], [1.5 / 30, 0.5 / 40], rtol=1e-6)
  # The last map is 1x1 at the centre; sizes > 1 are clipped to the image.
  np.testing.assert_allclose(d[-4:, :2], 0.5)
  np.testing.assert_allclose(d[-4:-2, 2:], 1.0)
  assert (d[:, 2:] > 0).all() and (d[:, 2:] <= 1).all()


def test_default_boxes_smoke_and_validation():
  config = smoke(get_base_config())
  d = boxes.default_boxes(config.model, config.data.image_size)
  assert d.shape == ((24 + 6 + 2 + 1 + 1) * 4, 4)
  bad = ml_collections.ConfigDict(config.model.to_dict())
  bad.ssd.scales = (0.1, 0.2)
  with pytest.raises(ValueError, match='scales'):
    boxes.default_boxes(bad, config.data.image_size)


def test_conversions_round_trip():
  rng = np.random.default_rng(0)
  corners = _random_corners(rng, 20)
  np.testing.assert_allclose(
    boxes.center_to_corners(boxes.corners_to_center(corners)), corners, atol=1e-6
  )


def test_iou_known_values():
  a = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
  b = np.array([[0.0, 0.0, 0.5, 1.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
  expected = np.array([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
  np.testing.assert_allclose(boxes.iou(a, b), expected)
  np.testing.assert_allclose(np.asarray(boxes.iou(jnp.asarray(a), jnp.asarray(b))), expected)


@_SETTINGS
@hypothesis.given(_corners_strategy(), _corners_strategy())
def test_iou_symmetric_and_bounded(a, b):
  ab = boxes.iou(a, b)
  ba = boxes.iou(b, a)
  np.testing.assert_allclose(ab, ba.T, atol=1e-12)
  assert (ab >= 0).all() and (ab <= 1 + 1e-12).all()
  np.testing.assert_allclose(np.diag(boxes.iou(a, a)), 1.0, atol=1e-12)


@pytest.mark.slow
@_SETTINGS
@hypothesis.given(
  _corners_strategy(),
  st.floats(0.05, 0.8),
  st.floats(0.05, 0.8),
  st.sampled_from([(0.1, 0.2), (1.0, 1.0)]),
)
def test_encode_decode_round_trip(corners, ah, aw, variances):
  anchors = np.tile(np.array([[0.5, 0.5, ah, aw]]), (corners.shape[0], 1))
  offsets = boxes.encode(corners, anchors, variances)
  np.testing.assert_allclose(boxes.decode(offsets, anchors, variances), corners, atol=1e-9)
  # The same code on jnp gives the same numbers (float32).
  offsets_j = boxes.encode(jnp.asarray(corners, jnp.float32), jnp.asarray(anchors, jnp.float32))
  np.testing.assert_allclose(
    np.asarray(offsets_j), boxes.encode(corners, anchors), rtol=1e-4, atol=1e-4
  )


def test_encode_matches_design_formula():
  anchor = np.array([0.5, 0.4, 0.2, 0.1])
  box = np.array([0.45, 0.38, 0.65, 0.5])  # centre (0.55, 0.44), size (0.2, 0.12).
  t = boxes.encode(box, anchor)
  expected = [0.05 / (0.1 * 0.2), 0.04 / (0.1 * 0.1), math.log(1.0) / 0.2, math.log(1.2) / 0.2]
  np.testing.assert_allclose(t, expected, atol=1e-9)


def test_decode_is_jittable():
  anchors = jnp.array([[0.5, 0.5, 0.2, 0.3]])
  out = jax.jit(boxes.decode)(jnp.zeros((1, 4)), anchors)
  np.testing.assert_allclose(np.asarray(out), [[0.4, 0.35, 0.6, 0.65]], atol=1e-6)


def test_match_thresholds_and_claims():
  # Three default boxes; the gt overlaps them at IoU 1.0, ~0.45 and 0.
  anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.45, 0.5, 0.5], [0.8, 0.8, 0.1, 0.1]])
  gt = np.array([[0.0, 0.0, 0.5, 0.5]])
  overlaps = boxes.iou(boxes.center_to_corners(anchors), gt)[:, 0]
  assert overlaps[0] == 1.0 and 0.4 <= overlaps[1] < 0.5 and overlaps[2] == 0.0
  box_targets, cls_targets = boxes.match(gt, np.array([7]), anchors)
  np.testing.assert_array_equal(cls_targets, [7, -1, 0])
  np.testing.assert_allclose(box_targets[0], 0.0, atol=1e-6)
  np.testing.assert_allclose(box_targets[1:], 0.0)
  # A small gt under every threshold still claims its best default box.
  small = np.array([[0.78, 0.78, 0.8, 0.8]])
  _, cls_targets = boxes.match(small, np.array([3]), anchors)
  np.testing.assert_array_equal(cls_targets, [0, 0, 3])
  # Two gts claiming the same box: the last one wins.
  two = np.array([[0.78, 0.78, 0.8, 0.8], [0.79, 0.79, 0.81, 0.81]])
  idx = boxes.match_indices(two, anchors)
  np.testing.assert_array_equal(idx, [-1, -1, 1])


def test_match_no_boxes_is_background():
  anchors = boxes.default_boxes(smoke(get_base_config()).model, (64, 96))
  box_targets, cls_targets = boxes.match(np.zeros((0, 4)), np.zeros((0,), np.int32), anchors)
  assert (cls_targets == 0).all() and (box_targets == 0).all()


@_SETTINGS
@hypothesis.given(st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_match_every_gt_gets_a_positive(seed, num_gt):
  anchors = boxes.default_boxes(smoke(get_base_config()).model, (64, 96))
  rng = np.random.default_rng(seed)
  gt = _random_corners(rng, num_gt).clip(0.0, 1.0)
  labels = rng.integers(1, 5, num_gt)
  overlaps = boxes.iou(boxes.center_to_corners(anchors), gt)
  best_anchor = overlaps.argmax(0)
  # Only when gts do not share their best default box can each be guaranteed a positive.
  hypothesis.assume(len(set(best_anchor.tolist())) == num_gt)
  idx = boxes.match_indices(gt, anchors)
  box_targets, cls_targets = boxes.match(gt, labels, anchors)
  for j in range(num_gt):
    assert (idx == j).any()
  pos = idx >= 0
  np.testing.assert_array_equal(cls_targets[pos], labels[idx[pos]])
  # Positives decode back to their ground-truth box; the rest are background or ignored.
  np.testing.assert_allclose(boxes.decode(box_targets[pos], anchors[pos]), gt[idx[pos]], atol=1e-5)
  assert set(np.unique(cls_targets[~pos]).tolist()) <= {0, -1}
  best_iou = overlaps.max(1)
  assert (best_iou[~pos] < 0.5).all()
  assert (cls_targets[(~pos) & (best_iou >= 0.4)] == -1).all()
