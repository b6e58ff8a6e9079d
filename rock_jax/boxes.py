"""Default boxes, box coding and IoU for the SSD head, plus a numpy reference matcher.

Conventions (see docs/DESIGN.md):
- Corner boxes are normalised `[ymin, xmin, ymax, xmax]`.
- Centre boxes (default boxes) are normalised `(cy, cx, h, w)`; heights are fractions of
  the image height and widths fractions of the image width, so a "square" default box is
  4:3 in pixels at 480x640, as in the reference.
- Box coding with variances `(v0, v1)`:
  `t = ((cy - dcy) / (v0 dh), (cx - dcx) / (v0 dw), log(h / dh) / v1, log(w / dw) / v1)`.

The array helpers (`iou`, `encode`, `decode`, `center_to_corners`, `corners_to_center`)
are written once against a NumPy-like namespace `xp`: `numpy`, `jax.numpy` or
`tf.experimental.numpy` (used by `rock_jax.matching` inside tf.data). When `xp` is None
it is inferred: `jax.numpy` for JAX arrays and tracers, `numpy` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # np.ndarray, jax.Array or tf.Tensor, depending on `xp`.

# Keeps log() finite for degenerate (zero-size) boxes in `encode`.
_EPS = 1e-8


def _namespace(*arrays: Array) -> Any:
  """Returns `jax.numpy` if any argument is a JAX array (or tracer), else `numpy`."""
  if any(isinstance(a, jax.Array) for a in arrays):
    return jnp
  return np


# ------------------------------------------------------------------ default boxes


def _pair(value: Any) -> tuple[int, int]:
  """`3` -> `(3, 3)`; `(2, 3)` stays `(2, 3)`."""
  if isinstance(value, int | float):
    return int(value), int(value)
  h, w = value
  return int(h), int(w)


def extra_geometry(extra_layers: Sequence[Sequence[Any]]) -> list[tuple[tuple[int, int], ...]]:
  """Returns `(kernel, stride, padding)` of each extra layer's spatial conv, as `(h, w)` pairs.

  An entry of `model.ssd.extra_layers` is `(mid, out)` (a 3x3 conv, stride 2, padding 1)
  or `(mid, out, kernel, stride, padding)`, each of the last three an int or an `(h, w)`
  pair: rock-pytorch's last two extras are `3, 1, 0` and `(2, 3), 1, 0`.

  Args:
    extra_layers: `model.ssd.extra_layers`.

  Returns:
    One `(kernel, stride, padding)` per extra layer.
  """
  geometry = []
  for layer in extra_layers:
    if len(layer) not in (2, 5):
      raise ValueError(
        'model.ssd.extra_layers entries are (mid, out) or (mid, out, kernel, stride, padding), '
        f'got {tuple(layer)}.'
      )
    kernel, stride, padding = layer[2:] if len(layer) == 5 else (3, 2, 1)
    geometry.append((_pair(kernel), _pair(stride), _pair(padding)))
  return geometry


def feature_map_sizes(
  image_size: Sequence[int],
  output_stride: int,
  num_extra: int,
  geometry: Sequence[Sequence[Sequence[int]]] | None = None,
) -> list[tuple[int, int]]:
  """Returns the `(h, w)` of conv5 and of each extra SSD feature map.

  conv5 is at `ceil(H / s), ceil(W / s)`; an extra layer whose spatial conv has kernel k,
  stride t and padding p maps `n -> floor((n + 2 p - k) / t) + 1`, which is `ceil(n / 2)`
  for the default 3x3, stride 2, padding 1. At 480x640 with stride 16 and 6 default
  extras: 30x40, 15x20, 8x10, 4x5, 2x3, 1x2, 1x1.

  Args:
    image_size: `(H, W)` of the model input in pixels.
    output_stride: the backbone's output stride at conv5.
    num_extra: number of extra feature maps after conv5.
    geometry: `extra_geometry(extra_layers)`; None means `num_extra` default layers.

  Returns:
    A list of `1 + num_extra` `(h, w)` tuples, conv5 first.
  """
  if geometry is None:
    geometry = [((3, 3), (2, 2), (1, 1))] * num_extra
  if len(geometry) != num_extra:
    raise ValueError(f'{len(geometry)} extra layer geometries for {num_extra} extra layers.')
  h = math.ceil(image_size[0] / output_stride)
  w = math.ceil(image_size[1] / output_stride)
  sizes = [(h, w)]
  for kernel, stride, padding in geometry:
    h = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    w = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if h < 1 or w < 1:
      raise ValueError(
        f'SSD extra layer {len(sizes)} (kernel {kernel}, stride {stride}, padding {padding}) '
        f'has no output at {image_size[0]}x{image_size[1]}: input map {sizes[-1]}.'
      )
    sizes.append((h, w))
  return sizes


def box_shapes(
  scale: float, next_scale: float, aspect_ratios: Sequence[float]
) -> list[tuple[float, float]]:
  """Returns the `(h, w)` of the default box types of one feature map, in head order.

  Order: square `s_k`, square `sqrt(s_k s_k+1)`, then for each ratio `r`: `r` (wide,
  `w = s sqrt(r)`, `h = s / sqrt(r)`) and `1 / r` (tall). Sizes are fractions of the
  image height (h) and width (w).

  Args:
    scale: `s_k`, the scale of this feature map.
    next_scale: `s_k+1`, the scale of the next one (for the extra square box).
    aspect_ratios: the ratios `r` (width / height) of this map, each also used as `1 / r`.

  Returns:
    A list of `2 + 2 * len(aspect_ratios)` `(h, w)` tuples.
  """
  shapes = [(scale, scale)]
  extra = math.sqrt(scale * next_scale)
  shapes.append((extra, extra))
  for r in aspect_ratios:
    root = math.sqrt(r)
    shapes.append((scale / root, scale * root))
    shapes.append((scale * root, scale / root))
  return shapes


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> tuple[int, ...]:
  """Default boxes per location of each map: two squares plus r and 1/r per ratio (`box_shapes`).

  Args:
    aspect_ratios: One sequence of ratios per feature map (`config.model.ssd.aspect_ratios`).

  Returns:
    `2 + 2 * len(ratios)` for each map.
  """
  return tuple(2 + 2 * len(ratios) for ratios in aspect_ratios)


def default_boxes(model_config: Any, image_size: Sequence[int]) -> np.ndarray:
  """Returns the SSD default boxes for a model config, in the head's output order.

  Maps in order (conv5 first, then each extra layer), locations row-major `(y, x)`, then
  box types as in `box_shapes`. Centres sit at `((i + 0.5) / h, (j + 0.5) / w)`, or at
  `((i + 0.5) step_h / H, (j + 0.5) step_w / W)` with explicit per-map `model.ssd.steps`
  (pixels; rock-pytorch's 2x3 map has `step_w = 213`, not 640 / 3). As in the
  reference, each of cy, cx, h and w is clipped to [0, 1], so the largest scales (> 1)
  give whole-image boxes.

  Args:
    model_config: `config.model` (uses `backbone.output_stride`, `ssd.extra_layers`,
      `ssd.scales`, `ssd.aspect_ratios` and, if set, `ssd.steps`).
    image_size: `(H, W)` of the model input in pixels.

  Returns:
    float32 `[A, 4]` boxes `(cy, cx, h, w)`, normalised.
  """
  ssd = model_config.ssd
  sizes = feature_map_sizes(
    image_size,
    model_config.backbone.output_stride,
    len(ssd.extra_layers),
    extra_geometry(ssd.extra_layers),
  )
  num_maps = len(sizes)
  if len(ssd.scales) != num_maps + 1:
    raise ValueError(
      f'model.ssd.scales needs {num_maps + 1} entries for {num_maps} maps, got {len(ssd.scales)}.'
    )
  if len(ssd.aspect_ratios) != num_maps:
    raise ValueError(
      f'model.ssd.aspect_ratios needs {num_maps} entries, got {len(ssd.aspect_ratios)}.'
    )
  steps = ssd.get('steps') or ()
  if steps and len(steps) != num_maps:
    raise ValueError(
      f'model.ssd.steps needs {num_maps} (step_h, step_w) entries, got {len(steps)}.'
    )
  all_boxes = []
  for k, (h, w) in enumerate(sizes):
    shapes = np.asarray(box_shapes(ssd.scales[k], ssd.scales[k + 1], ssd.aspect_ratios[k]))
    # A step is the pixel distance between centres; without steps the map tiles the image.
    rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5
    if steps:
      rows, cols = rows * steps[k][0] / image_size[0], cols * steps[k][1] / image_size[1]
    else:
      rows, cols = rows / h, cols / w
    cy, cx = np.meshgrid(rows, cols, indexing='ij')
    centres = np.stack([cy.ravel(), cx.ravel()], axis=-1)  # [h * w, 2], row-major.
    n, t = centres.shape[0], shapes.shape[0]
    boxes = np.concatenate([np.repeat(centres, t, axis=0), np.tile(shapes, (n, 1))], axis=-1)
    all_boxes.append(np.clip(boxes, 0.0, 1.0))
  return np.concatenate(all_boxes, axis=0).astype(np.float32)


# ------------------------------------------------------------------ conversions


def center_to_corners(boxes: Array, *, xp: Any = None) -> Array:
  """Converts `(cy, cx, h, w)` boxes `[..., 4]` to `[ymin, xmin, ymax, xmax]`."""
  xp = xp or _namespace(boxes)
  cy, cx, h, w = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
  return xp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def corners_to_center(boxes: Array, *, xp: Any = None) -> Array:
  """Converts `[ymin, xmin, ymax, xmax]` boxes `[..., 4]` to `(cy, cx, h, w)`."""
  xp = xp or _namespace(boxes)
  y0, x0, y1, x1 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
  return xp.stack([(y0 + y1) / 2, (x0 + x1) / 2, y1 - y0, x1 - x0], axis=-1)


def area(boxes: Array, *, xp: Any = None) -> Array:
  """Returns the areas `[...]` of corner boxes `[..., 4]` (0 for inverted boxes)."""
  xp = xp or _namespace(boxes)
  h = xp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  w = xp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return h * w


def iou(boxes_a: Array, boxes_b: Array, *, xp: Any = None) -> Array:
  """Pairwise intersection over union of corner boxes.

  Args:
    boxes_a: `[..., N, 4]` corner boxes.
    boxes_b: `[..., M, 4]` corner boxes.
    xp: array namespace; inferred when None.

  Returns:
    `[..., N, M]` IoU in [0, 1]; 0 where the union is empty.
  """
  xp = xp or _namespace(boxes_a, boxes_b)
  a = boxes_a[..., :, None, :]
  b = boxes_b[..., None, :, :]
  ih = xp.maximum(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0.0)
  iw = xp.maximum(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0.0)
  inter = ih * iw
  union = area(boxes_a, xp=xp)[..., :, None] + area(boxes_b, xp=xp)[..., None, :] - inter
  # Division by a safe denominator, then zero: keeps gradients finite for empty unions.
  safe = xp.where(union > 0, union, xp.ones_like(union))
  return xp.where(union > 0, inter / safe, xp.zeros_like(inter))


# ------------------------------------------------------------------ box coding


def encode(
  boxes: Array,
  anchors: Array,
  variances: Sequence[float] = (0.1, 0.2),
  *,
  xp: Any = None,
) -> Array:
  """Encodes corner boxes as offsets from default boxes.

  Args:
    boxes: `[..., 4]` corner boxes `[ymin, xmin, ymax, xmax]`.
    anchors: `[..., 4]` default boxes `(cy, cx, h, w)` (broadcast against `boxes`).
    variances: `(centre, size)` variances.
    xp: array namespace; inferred when None.

  Returns:
    `[..., 4]` offsets `(ty, tx, th, tw)`.
  """
  xp = xp or _namespace(boxes, anchors)
  c = corners_to_center(boxes, xp=xp)
  ty = (c[..., 0] - anchors[..., 0]) / (variances[0] * anchors[..., 2])
  tx = (c[..., 1] - anchors[..., 1]) / (variances[0] * anchors[..., 3])
  th = xp.log(xp.maximum(c[..., 2], _EPS) / anchors[..., 2]) / variances[1]
  tw = xp.log(xp.maximum(c[..., 3], _EPS) / anchors[..., 3]) / variances[1]
  return xp.stack([ty, tx, th, tw], axis=-1)


def decode(
  offsets: Array,
  anchors: Array,
  variances: Sequence[float] = (0.1, 0.2),
  *,
  xp: Any = None,
) -> Array:
  """Decodes offsets from default boxes into corner boxes (inverse of `encode`).

  Args:
    offsets: `[..., 4]` offsets `(ty, tx, th, tw)`.
    anchors: `[..., 4]` default boxes `(cy, cx, h, w)` (broadcast against `offsets`).
    variances: `(centre, size)` variances.
    xp: array namespace; inferred when None.

  Returns:
    `[..., 4]` corner boxes `[ymin, xmin, ymax, xmax]` (not clipped).
  """
  xp = xp or _namespace(offsets, anchors)
  cy = anchors[..., 0] + offsets[..., 0] * variances[0] * anchors[..., 2]
  cx = anchors[..., 1] + offsets[..., 1] * variances[0] * anchors[..., 3]
  h = anchors[..., 2] * xp.exp(offsets[..., 2] * variances[1])
  w = anchors[..., 3] * xp.exp(offsets[..., 3] * variances[1])
  return center_to_corners(xp.stack([cy, cx, h, w], axis=-1), xp=xp)


# ------------------------------------------------------------------ numpy matching


def match_indices(
  gt_boxes: np.ndarray,
  default_boxes_: np.ndarray,
  *,
  pos_iou: float = 0.5,
  neg_iou: float = 0.4,
) -> np.ndarray:
  """Assigns each default box a ground-truth index (numpy reference).

  Semantics (reference SSD matching): a default box is positive for its best
  ground-truth box if their IoU is >= `pos_iou`, background if its best IoU is
  < `neg_iou`, ignored in between. Each ground-truth box with a non-zero best IoU also
  claims its best default box (first in order on ties) whatever the IoU; when several
  claim the same default box, the last ground-truth box wins (as in the reference loop).

  Args:
    gt_boxes: `[M, 4]` corner boxes (only real boxes, no padding); M may be 0.
    default_boxes_: `[A, 4]` default boxes `(cy, cx, h, w)`.
    pos_iou: IoU at or above which a default box is positive.
    neg_iou: IoU below which a default box is background.

  Returns:
    int64 `[A]`: the matched ground-truth index, -1 for background, -2 for ignored.
  """
  num_anchors = default_boxes_.shape[0]
  if gt_boxes.shape[0] == 0:
    return np.full([num_anchors], -1, np.int64)
  overlaps = iou(center_to_corners(default_boxes_, xp=np), gt_boxes, xp=np)  # [A, M]
  best_gt = overlaps.argmax(axis=1)
  best_iou = overlaps.max(axis=1)
  idx = np.where(best_iou >= pos_iou, best_gt, np.where(best_iou < neg_iou, -1, -2))
  best_anchor = overlaps.argmax(axis=0)
  for j in range(gt_boxes.shape[0]):
    if overlaps[best_anchor[j], j] > 0:
      idx[best_anchor[j]] = j
  return idx


def match(
  gt_boxes: np.ndarray,
  gt_labels: np.ndarray,
  default_boxes_: np.ndarray,
  *,
  pos_iou: float = 0.5,
  neg_iou: float = 0.4,
  variances: Sequence[float] = (0.1, 0.2),
) -> tuple[np.ndarray, np.ndarray]:
  """Numpy reference of `rock_jax.matching.match_and_encode` (unpadded ground truth).

  Args:
    gt_boxes: `[M, 4]` corner boxes; M may be 0.
    gt_labels: `[M]` labels in 1..C.
    default_boxes_: `[A, 4]` default boxes `(cy, cx, h, w)`.
    pos_iou: IoU at or above which a default box is positive.
    neg_iou: IoU below which a default box is background.
    variances: box coding variances.

  Returns:
    `(box_targets [A, 4] float32, cls_targets [A] int32)`: offsets of the matched box
    (zeros where not positive) and labels (0 background, -1 ignored).
  """
  idx = match_indices(gt_boxes, default_boxes_, pos_iou=pos_iou, neg_iou=neg_iou)
  pos = idx >= 0
  labels = np.asarray(gt_labels, np.int32)
  cls_targets = np.where(pos, labels[np.maximum(idx, 0)] if labels.size else 0, 0)
  cls_targets = np.where(idx == -2, -1, cls_targets).astype(np.int32)
  box_targets = np.zeros([default_boxes_.shape[0], 4], np.float32)
  if pos.any():
    box_targets[pos] = encode(gt_boxes[idx[pos]], default_boxes_[pos], variances, xp=np)
  return box_targets, cls_targets
