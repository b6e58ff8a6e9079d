"""Jittable, fixed-shape detection post-processing: decode, score filter, per-class NMS.

Per image: softmax scores; per foreground class keep the `pre_nms_top_k` best default
boxes with score > `score_threshold`; greedy NMS per class at IoU `nms_iou` (a box is
suppressed by a kept, higher-scored box of the same class with IoU > `nms_iou`); then the
`max_detections` best boxes over all classes. Every shape is static: outputs are padded
and come with a count, so the whole thing runs on the accelerator under `jax.jit`.

Clipping: by default the decoded boxes are clipped to the image before NMS. With
`clip_before_nms=False` (`config.eval.clip_before_nms`, set by configs/rock_pytorch.py)
NMS compares the unclipped boxes and only the returned boxes are clipped, as rock-pytorch
decodes. The two differ when boxes cross the border: clipping changes their overlaps,
so NMS suppresses a different set (mostly among low scores).

NMS is greedy over the (at most `pre_nms_top_k`) sorted candidates of each class: a
`fori_loop` over candidate positions, vectorised over images and classes, on a
precomputed `[B, C, K, K]` IoU matrix. Candidate `i` is kept if it is valid and no kept
candidate before it overlaps it; this is exactly the sequential greedy algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rock_jax import boxes as box_lib

Array = jax.Array


def nms_mask(boxes: Array, valid: Array, iou_threshold: float) -> Array:
  """Greedy NMS over candidates sorted by decreasing score.

  Args:
    boxes: `[..., K, 4]` corner boxes, sorted by decreasing score along K.
    valid: `[..., K]` bool, candidates that take part (invalid ones neither survive nor
      suppress).
    iou_threshold: suppress boxes whose IoU with a kept box is strictly above this.

  Returns:
    `[..., K]` bool, the kept candidates.
  """
  k = boxes.shape[-2]
  overlaps = box_lib.iou(boxes, boxes, xp=jnp) > iou_threshold  # [..., K, K]
  earlier = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]  # [i, j]: i before j.
  overlaps = overlaps & earlier

  def body(i, keep):
    # Candidate i survives if no kept earlier candidate overlaps it. Candidates before i
    # are final by now, candidates after i are still False, so one masked any() suffices.
    suppressed = jnp.any(keep & overlaps[..., :, i], axis=-1)
    return keep.at[..., i].set(valid[..., i] & ~suppressed)

  return jax.lax.fori_loop(0, k, body, jnp.zeros_like(valid))


def sorted_top_k(x: Array, k: int) -> tuple[Array, Array]:
  """`jax.lax.top_k` through a stable sort: the same values and indices (ties: lower index).

  For artifacts read by an older StableHLO consumer (TensorFlow's `XlaCallModule`,
  `rock_jax.export`): jax lowers `top_k` to a composite op that it cannot read.
  """
  idx = jnp.argsort(-x, axis=-1, stable=True)[..., :k]
  return jnp.take_along_axis(x, idx, axis=-1), idx


def postprocess(
  boxes: Array,
  logits: Array,
  default_boxes: Array,
  *,
  score_threshold: float = 0.05,
  pre_nms_top_k: int = 200,
  nms_iou: float = 0.3,
  max_detections: int = 100,
  variances: Sequence[float] = (0.1, 0.2),
  clip_before_nms: bool = True,
  top_k: Callable[[Array, int], tuple[Array, Array]] = jax.lax.top_k,
) -> dict[str, Array]:
  """Turns the head's outputs into detections with fixed shapes.

  Args:
    boxes: `[B, A, 4]` encoded offsets.
    logits: `[B, A, C + 1]` class logits (0 = background).
    default_boxes: `[A, 4]` default boxes `(cy, cx, h, w)`.
    score_threshold: keep scores strictly above this.
    pre_nms_top_k: candidates per class before NMS.
    nms_iou: NMS IoU threshold.
    max_detections: detections per image.
    variances: box coding variances.
    clip_before_nms: clip the boxes to [0, 1] before NMS (True) or only on output.
    top_k: the top-k op (`sorted_top_k` for exported artifacts).

  Returns:
    A dict with `boxes` `[B, N, 4]` normalised corner boxes clipped to [0, 1], `scores`
    `[B, N]`, `classes` `[B, N]` int32 in 1..C, `num` `[B]` int32, `N = max_detections`;
    detections are sorted by decreasing score and entries from `num` on are padding
    (zero boxes, scores and classes).
  """
  batch, num_anchors, _ = logits.shape
  decoded = box_lib.decode(
    boxes.astype(jnp.float32), jnp.asarray(default_boxes, jnp.float32), variances, xp=jnp
  )
  if clip_before_nms:
    decoded = jnp.clip(decoded, 0.0, 1.0)  # [B, A, 4]
  scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1:]  # [B, A, C]
  num_classes = scores.shape[-1]

  k = min(pre_nms_top_k, num_anchors)
  top_scores, top_idx = top_k(jnp.swapaxes(scores, 1, 2), k)  # [B, C, K]
  cand_boxes = jnp.take_along_axis(decoded[:, None], top_idx[..., None], axis=2)  # [B,C,K,4]
  valid = top_scores > score_threshold
  keep = nms_mask(cand_boxes, valid, nms_iou)

  flat_scores = jnp.where(keep, top_scores, -1.0).reshape(batch, num_classes * k)
  flat_boxes = cand_boxes.reshape(batch, num_classes * k, 4)
  flat_classes = jnp.broadcast_to(
    jnp.arange(1, num_classes + 1, dtype=jnp.int32)[:, None], (num_classes, k)
  ).reshape(num_classes * k)
  n = min(max_detections, num_classes * k)
  best_scores, best = top_k(flat_scores, n)  # [B, N]
  kept = best_scores > -1.0
  out_boxes = jnp.take_along_axis(flat_boxes, best[..., None], 1)
  out_boxes = jnp.where(kept[..., None], jnp.clip(out_boxes, 0.0, 1.0), 0.0)
  out_classes = jnp.where(kept, flat_classes[best], 0)
  out_scores = jnp.where(kept, best_scores, 0.0)
  if n < max_detections:  # Tiny problems: pad up to the promised shape.
    pad = max_detections - n
    out_boxes = jnp.pad(out_boxes, ((0, 0), (0, pad), (0, 0)))
    out_classes = jnp.pad(out_classes, ((0, 0), (0, pad)))
    out_scores = jnp.pad(out_scores, ((0, 0), (0, pad)))
  return {
    'boxes': out_boxes,
    'scores': out_scores,
    'classes': out_classes.astype(jnp.int32),
    'num': jnp.sum(kept, axis=-1).astype(jnp.int32),
  }


def postprocess_outputs(
  outputs: Mapping[str, jax.Array],
  default_boxes: jax.Array,
  config: Any,
  *,
  top_k: Callable[[Array, int], tuple[Array, Array]] = jax.lax.top_k,
) -> dict[str, jax.Array]:
  """`postprocess` of the detector's outputs with the config's evaluation settings.

  Args:
    outputs: the detector's output dict (`boxes`, `logits`).
    default_boxes: `[A, 4]` default boxes of the model.
    config: the experiment config (`eval.*`, `model.ssd.variances`).
    top_k: see `postprocess`.

  Returns:
    The detections dict of `postprocess`.
  """
  return postprocess(
    outputs['boxes'],
    outputs['logits'],
    default_boxes,
    score_threshold=config.eval.score_threshold,
    pre_nms_top_k=config.eval.pre_nms_top_k,
    nms_iou=config.eval.nms_iou,
    max_detections=config.eval.max_detections,
    variances=tuple(config.model.ssd.variances),
    clip_before_nms=config.eval.get('clip_before_nms', True),
    top_k=top_k,
  )
