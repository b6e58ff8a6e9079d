"""Tests for rock_jax.matching: TensorFlow matching against the numpy reference."""

import hypothesis
import numpy as np
import tensorflow as tf
from hypothesis import strategies as st

from configs.base import get_base_config, smoke
from rock_jax import boxes, matching

_ANCHORS = boxes.default_boxes(smoke(get_base_config()).model, (64, 96))
_MAX_BOXES = 6


def _random_gt(rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
  centres = rng.uniform(0.0, 1.0, (num, 2))
  sizes = rng.uniform(0.02, 0.8, (num, 2))
  gt = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).clip(0, 1)
  return gt.astype(np.float32), rng.integers(1, 9, num).astype(np.int32)


def _pad(gt: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
  """Pads to _MAX_BOXES with junk rows (not zeros) so a leak through the mask shows."""
  num = gt.shape[0]
  boxes_p, _ = _random_gt(rng, _MAX_BOXES)
  labels_p = np.full([_MAX_BOXES], 5, np.int32)
  boxes_p[:num], labels_p[:num] = gt, labels
  return boxes_p, labels_p, np.arange(_MAX_BOXES) < num


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(st.integers(0, 2**31 - 1), st.integers(0, _MAX_BOXES))
def test_tf_matches_numpy_eagerly(seed, num):
  rng = np.random.default_rng(seed)
  gt, labels = _random_gt(rng, num)
  expected_boxes, expected_cls = boxes.match(gt, labels, _ANCHORS)
  box_targets, cls_targets = matching.match_and_encode(*_pad(gt, labels, rng), _ANCHORS)
  assert box_targets.dtype == tf.float32 and cls_targets.dtype == tf.int32
  np.testing.assert_array_equal(cls_targets.numpy(), expected_cls)
  np.testing.assert_allclose(box_targets.numpy(), expected_boxes, atol=1e-4)


def test_tf_matches_numpy_in_dataset_map():
  rng = np.random.default_rng(1)
  examples = [_random_gt(rng, n) for n in (0, 1, 3, _MAX_BOXES)]
  padded = [_pad(g, lab, rng) for g, lab in examples]
  ds = tf.data.Dataset.from_tensor_slices(tuple(np.stack(x) for x in zip(*padded, strict=True)))
  ds = ds.map(lambda b, lab, m: matching.match_and_encode(b, lab, m, _ANCHORS, pos_iou=0.5))
  assert ds.element_spec[0].shape == (_ANCHORS.shape[0], 4)
  assert ds.element_spec[1].shape == (_ANCHORS.shape[0],)
  for (gt, labels), (box_targets, cls_targets) in zip(examples, ds, strict=True):
    expected_boxes, expected_cls = boxes.match(gt, labels, _ANCHORS)
    np.testing.assert_array_equal(cls_targets.numpy(), expected_cls)
    np.testing.assert_allclose(box_targets.numpy(), expected_boxes, atol=1e-4)


def test_no_boxes_all_background():
  for num_pad in (0, 3):
    box_targets, cls_targets = matching.match_and_encode(
      tf.zeros([num_pad, 4]), tf.zeros([num_pad], tf.int32), tf.zeros([num_pad], tf.bool), _ANCHORS
    )
    assert (cls_targets.numpy() == 0).all()
    assert (box_targets.numpy() == 0).all()


def test_thresholds_are_configurable():
  rng = np.random.default_rng(3)
  gt, labels = _random_gt(rng, 3)
  padded = _pad(gt, labels, rng)
  _, strict_cls = matching.match_and_encode(*padded, _ANCHORS, pos_iou=0.7, neg_iou=0.3)
  _, expected = boxes.match(gt, labels, _ANCHORS, pos_iou=0.7, neg_iou=0.3)
  np.testing.assert_array_equal(strict_cls.numpy(), expected)


def test_every_real_gt_claims_a_positive():
  rng = np.random.default_rng(4)
  gt = np.array([[0.1, 0.1, 0.12, 0.13], [0.5, 0.5, 0.9, 0.95]], np.float32)  # tiny + large
  labels = np.array([2, 4], np.int32)
  box_targets, cls_targets = matching.match_and_encode(*_pad(gt, labels, rng), _ANCHORS)
  cls_targets = cls_targets.numpy()
  assert (cls_targets == 2).sum() >= 1 and (cls_targets == 4).sum() >= 1
  decoded = boxes.decode(box_targets.numpy(), _ANCHORS)
  np.testing.assert_allclose(
    decoded[cls_targets == 2], np.repeat(gt[:1], (cls_targets == 2).sum(), 0), atol=1e-5
  )
