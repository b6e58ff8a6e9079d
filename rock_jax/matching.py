"""Default-box matching and target encoding in TensorFlow ops, for `tf.data` maps.

Matching runs in the input pipeline so the accelerator sees fixed-shape targets
(`[A, 4]` offsets and `[A]` labels). The semantics are those of the numpy reference
`rock_jax.boxes.match` (and of the reference SSD): IoU >= `pos_iou` positive,
< `neg_iou` background, in between ignored (-1); each real ground-truth box also
claims its best default box, the last one winning when several claim the same box.
Ground truth is padded to a fixed `M` with a mask; padded rows never match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from rock_jax import boxes as box_lib


def match_and_encode(
  gt_boxes: tf.Tensor,
  gt_labels: tf.Tensor,
  gt_mask: tf.Tensor,
  default_boxes: tf.Tensor | np.ndarray,
  *,
  pos_iou: float = 0.5,
  neg_iou: float = 0.4,
  variances: Sequence[float] = (0.1, 0.2),
) -> tuple[tf.Tensor, tf.Tensor]:
  """Matches padded ground truth to default boxes and encodes the targets.

  Works eagerly and in graph mode (`tf.data.Dataset.map`, `tf.function`); every shape
  is static given static `M` and `A`. No real box (all masked, or `M = 0`) gives all
  background.

  Args:
    gt_boxes: `[M, 4]` float corner boxes `[ymin, xmin, ymax, xmax]`, normalised.
    gt_labels: `[M]` int labels in 1..C.
    gt_mask: `[M]` bool, True for real boxes.
    default_boxes: `[A, 4]` default boxes `(cy, cx, h, w)`.
    pos_iou: IoU at or above which a default box is positive.
    neg_iou: IoU below which a default box is background.
    variances: box coding variances `(centre, size)`.

  Returns:
    `(box_targets [A, 4] float32, cls_targets [A] int32)`: offsets of the matched
    ground-truth box (zeros where not positive) and labels (0 background, -1 ignored).
  """
  gt_boxes = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
  gt_labels = tf.cast(tf.convert_to_tensor(gt_labels), tf.int32)
  gt_mask = tf.cast(tf.convert_to_tensor(gt_mask), tf.bool)
  anchors = tf.cast(tf.convert_to_tensor(default_boxes), tf.float32)
  num_gt = tf.shape(gt_boxes)[0]

  overlaps = box_lib.iou(box_lib.center_to_corners(anchors, xp=tnp), gt_boxes, xp=tnp)
  # Padded rows get -1 so they are never anyone's best match ([A, M]).
  overlaps = tf.where(gt_mask[None, :], tf.cast(overlaps, tf.float32), -1.0)

  # Per default box: best real ground-truth box. With M = 0 (or all padded) the best IoU
  # is -1 (or below), i.e. background.
  overlaps_or_empty = tf.concat([overlaps, tf.fill([tf.shape(anchors)[0], 1], -1.0)], axis=1)
  best_gt = _argmax_first(overlaps_or_empty, axis=1)
  best_iou = tf.reduce_max(overlaps_or_empty, axis=1)

  # Per ground-truth box: its best default box (first on ties, like numpy argmax).
  best_anchor = _argmax_first(overlaps, axis=0)  # [M]
  claims = tf.logical_and(gt_mask, tf.reduce_max(overlaps, axis=0) > 0.0)
  # [A, M]: default box a is claimed by ground-truth box j. The last claimer wins,
  # computed with a max over indices rather than a scatter (whose order on duplicate
  # indices is unspecified).
  claim_matrix = tf.logical_and(
    tf.equal(tf.range(tf.shape(anchors)[0])[:, None], best_anchor[None, :]), claims[None, :]
  )
  claimer = _last_true_index(claim_matrix)
  claimed = claimer >= 0

  matched = tf.where(claimed, claimer, best_gt)
  positive = tf.logical_or(claimed, best_iou >= pos_iou)
  ignored = tf.logical_and(
    tf.logical_not(positive), tf.logical_and(best_iou >= neg_iou, best_iou < pos_iou)
  )

  safe_matched = tf.minimum(matched, tf.maximum(num_gt - 1, 0))
  # Gather from a padded copy so M = 0 still has a row to gather (never used).
  padded_boxes = tf.concat([gt_boxes, tf.constant([[0.0, 0.0, 1.0, 1.0]])], axis=0)
  padded_labels = tf.concat([gt_labels, tf.zeros([1], tf.int32)], axis=0)
  matched_boxes = tf.gather(padded_boxes, safe_matched)
  matched_labels = tf.gather(padded_labels, safe_matched)

  cls_targets = tf.where(positive, matched_labels, tf.where(ignored, -1, 0))
  offsets = tf.cast(box_lib.encode(matched_boxes, anchors, variances, xp=tnp), tf.float32)
  box_targets = tf.where(positive[:, None], offsets, tf.zeros_like(offsets))
  return box_targets, tf.cast(cls_targets, tf.int32)


def _argmax_first(x: tf.Tensor, axis: int) -> tf.Tensor:
  """Argmax with ties resolved to the first index, as numpy (tf.argmax leaves it open)."""
  is_max = tf.equal(x, tf.reduce_max(x, axis=axis, keepdims=True))
  size = tf.shape(x)[axis]
  positions = tf.range(size)
  positions = positions[:, None] if axis == 0 else positions[None, :]
  return tf.reduce_min(tf.where(is_max, positions, size), axis=axis)


def _last_true_index(mask: tf.Tensor) -> tf.Tensor:
  """Returns, per row of a bool `[A, M]` matrix, the largest True column index or -1."""
  positions = tf.range(tf.shape(mask)[1])[None, :]
  indices = tf.where(mask, positions, -tf.ones_like(mask, tf.int32))
  # A -1 column keeps the reduction defined when M = 0.
  indices = tf.concat([indices, -tf.ones([tf.shape(mask)[0], 1], tf.int32)], axis=1)
  return tf.reduce_max(indices, axis=1)
