"""Training augmentation: small pure TensorFlow functions over an example dict.

An example dict holds `image` `[H, W, 3]` (uint8 or float in [0, 1]), `boxes` `[M, 4]`
normalised `[ymin, xmin, ymax, xmax]`, `labels` `[M]` and, when the dataset has them,
the dense fields `depth` `[H, W]` (metres, 0 = invalid), `normals` `[H, W, 3]` (camera
frame, x right) and `normals_mask` `[H, W]` bool. Every function applies ONE random draw
to all of the fields, so geometry stays consistent:
- a crop keeps the boxes whose centre lies inside it, clips them, and scales depth by the
  crop side (a crop that zooms by s makes everything look s times closer: depth / s);
- a horizontal flip mirrors boxes and maps and negates the normals' x component.

Randomness comes only from stateless ops seeded by a `[2]` int tensor, so an example's
augmentation is a pure function of its seed (the input pipeline derives one per example
from the run seed and the example's position in the stream).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

# Every other field of an example is a dense map of the image (depth, normals, a mask).
_NOT_DENSE = ('image', 'boxes', 'labels')
# SSD crop modes: none, min-IoU 0.1 ... 0.9, unconstrained (-1 stands for no constraint).
_MIN_IOUS = (-1.0, 0.1, 0.3, 0.5, 0.7, 0.9, -1.0)
_NO_CROP, _UNCONSTRAINED = 0, 6

Example = dict[str, tf.Tensor]


def dense_keys(example: Mapping[str, tf.Tensor]) -> list[str]:
  """The dense fields of an example (image-aligned maps), which move with the image."""
  return [key for key in example if key not in _NOT_DENSE]


def _iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """IoU of corner boxes `a` `[T, 4]` and `b` `[M, 4]` -> `[T, M]`."""
  ymin = tf.maximum(a[:, None, 0], b[None, :, 0])
  xmin = tf.maximum(a[:, None, 1], b[None, :, 1])
  ymax = tf.minimum(a[:, None, 2], b[None, :, 2])
  xmax = tf.minimum(a[:, None, 3], b[None, :, 3])
  inter = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  return inter / tf.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def sample_crop_window(
  boxes: tf.Tensor,
  seed: tf.Tensor,
  *,
  min_area: float = 0.1,
  max_trials: int = 50,
  mode: int | tf.Tensor | None = None,
) -> tf.Tensor:
  """Draws an SSD crop window, square in normalised coordinates (the image's aspect).

  A mode is drawn uniformly among none, min-IoU 0.1/0.3/0.5/0.7/0.9 and unconstrained.
  Candidates have area in `[min_area, 1]` of the image; with a min-IoU mode the first
  candidate that overlaps some box with at least that IoU and contains some box centre
  is kept, and when none does the image is not cropped.

  Args:
    boxes: `[M, 4]` normalised corner boxes (M may be 0).
    seed: `[2]` int stateless seed.
    min_area: smallest crop area as a fraction of the image.
    max_trials: candidates drawn at once.
    mode: force a mode (0 none, 1-5 min-IoU 0.1-0.9, 6 unconstrained); None draws it.

  Returns:
    float32 `[4]` window `[y0, x0, y1, x1]` in normalised coordinates.
  """
  boxes = tf.cast(tf.reshape(boxes, [-1, 4]), tf.float32)
  s_mode, s_area, s_pos = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  if mode is None:
    mode = tf.random.stateless_uniform([], s_mode, 0, len(_MIN_IOUS), dtype=tf.int32)
  side = tf.sqrt(tf.random.stateless_uniform([max_trials], s_area, min_area, 1.0))
  pos = tf.random.stateless_uniform([max_trials, 2], s_pos) * (1.0 - side)[:, None]
  cands = tf.concat([pos, pos + side[:, None]], axis=1)
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  inside = tf.reduce_all(
    (centres[None] > cands[:, None, :2]) & (centres[None] < cands[:, None, 2:]), axis=-1
  )
  min_iou = tf.gather(tf.constant(_MIN_IOUS), mode)
  ok = tf.reduce_any(_iou(cands, boxes) >= min_iou, axis=1) & tf.reduce_any(inside, axis=1)
  ok = ok | tf.equal(mode, _UNCONSTRAINED)
  first = tf.argmax(tf.cast(ok, tf.int32))
  use = tf.reduce_any(ok) & tf.not_equal(mode, _NO_CROP)
  return tf.where(use, cands[first], tf.constant([0.0, 0.0, 1.0, 1.0]))


def _pixel_window(window: tf.Tensor, size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Rounds a normalised window to whole pixels of a `[H, W]` map: (start, stop) `[2]`."""
  size_f = tf.cast(size, tf.float32)
  start = tf.cast(tf.round(window[:2] * size_f), tf.int32)
  stop = tf.maximum(tf.cast(tf.round(window[2:] * size_f), tf.int32), start + 1)
  return start, tf.minimum(stop, tf.cast(size, tf.int32))


def crop(example: Mapping[str, tf.Tensor], window: tf.Tensor) -> Example:
  """Crops image, dense fields and boxes to `window` (rounded to the image's pixels).

  Args:
    example: the example dict.
    window: `[4]` normalised `[y0, x0, y1, x1]`.

  Returns:
    The cropped example: boxes with their centre inside are kept, re-expressed in the
    crop and clipped; depth is multiplied by the crop side (zoom s -> depth / s).
  """
  out = dict(example)
  size = tf.shape(example['image'])[:2]
  start, stop = _pixel_window(window, size)
  out['image'] = example['image'][start[0] : stop[0], start[1] : stop[1]]
  size_f = tf.cast(size, tf.float32)
  lo = tf.cast(start, tf.float32) / size_f  # The window actually cut, after rounding.
  extent = tf.cast(stop - start, tf.float32) / size_f
  for key in dense_keys(example):
    d_start, d_stop = _pixel_window(tf.concat([lo, lo + extent], 0), tf.shape(example[key])[:2])
    out[key] = example[key][d_start[0] : d_stop[0], d_start[1] : d_stop[1]]
  if 'depth' in out:
    out['depth'] = out['depth'] * tf.sqrt(extent[0] * extent[1])
  boxes = tf.cast(example['boxes'], tf.float32)
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  keep = tf.reduce_all((centres >= lo) & (centres < lo + extent), axis=1)
  lo2, extent2 = tf.tile(lo, [2]), tf.tile(extent, [2])
  moved = tf.clip_by_value((tf.boolean_mask(boxes, keep) - lo2) / extent2, 0.0, 1.0)
  out['boxes'] = moved
  out['labels'] = tf.boolean_mask(example['labels'], keep)
  return out


def resize(
  example: Mapping[str, tf.Tensor], image_size: Sequence[int], dense_size: Sequence[int]
) -> Example:
  """Resizes the image (bilinear, float32 in [0, 1]) and the dense fields (nearest).

  Nearest sampling keeps invalid depth (0) and masks exact; the input pipeline then
  averages the valid samples down to the conv5 grid.

  Args:
    example: the example dict.
    image_size: `(H, W)` of the output image.
    dense_size: `(h, w)` of the output dense fields.

  Returns:
    The resized example (boxes are normalised, so unchanged).
  """
  out = dict(example)
  if 'image' in example:  # The eval pipeline resizes it with input_pipeline.preprocess_image.
    image = example['image']
    if image.dtype == tf.uint8:
      image = tf.cast(image, tf.float32) / 255.0
    out['image'] = tf.image.resize(image, image_size, method='bilinear', antialias=False)
  for key in dense_keys(example):
    x = example[key]
    dtype = x.dtype
    x = x[..., None] if x.shape.rank == 2 else x
    x = tf.cast(x, tf.uint8) if dtype == tf.bool else x
    x = tf.image.resize(x, dense_size, method='nearest')
    x = tf.cast(x, dtype) if dtype == tf.bool else x
    out[key] = x[..., 0] if example[key].shape.rank == 2 else x
  return out


def flip(example: Mapping[str, tf.Tensor]) -> Example:
  """Mirrors left-right: image, dense fields, boxes; negates the normals' x."""
  out = dict(example)
  out['image'] = example['image'][:, ::-1]
  for key in dense_keys(example):
    out[key] = example[key][:, ::-1]
  if 'normals' in out:
    out['normals'] = out['normals'] * tf.constant([-1.0, 1.0, 1.0], out['normals'].dtype)
  b = tf.cast(example['boxes'], tf.float32)
  out['boxes'] = tf.stack([b[:, 0], 1.0 - b[:, 3], b[:, 2], 1.0 - b[:, 1]], axis=1)
  return out


def random_flip(example: Mapping[str, tf.Tensor], seed: tf.Tensor, prob: float = 0.5) -> Example:
  """Applies `flip` with probability `prob`."""
  do = tf.random.stateless_uniform([], seed) < prob
  flipped = flip(example)
  return {k: tf.cond(do, lambda k=k: flipped[k], lambda k=k: example[k]) for k in example}


# Luma weights (ITU-R 601) and the RGB <-> YIQ transforms used for the hue rotation.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array(
  [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def color_jitter(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  brightness: float = 0.15,
  contrast: float = 0.25,
  saturation: float = 0.25,
  hue: float = 0.05,
) -> tf.Tensor:
  """Torchvision-style jitter of a float image in [0, 1], as one affine colour map.

  Brightness, contrast and saturation factors are drawn in `[1 - x, 1 + x]`, the hue
  shift in `[-hue, hue]` (fraction of the colour wheel). Every step is linear in the
  colour (brightness scales, contrast blends with the mean grey level, saturation with
  the pixel's grey level, hue rotates the chroma plane of YIQ), so the four compose into
  one 3x3 matrix and an offset applied in a single pass: a full-resolution HSV round
  trip per step would dominate the input pipeline's cost. Unlike torchvision, values
  are clipped once at the end rather than after each step.

  Args:
    image: `[H, W, 3]` float32 in [0, 1].
    seed: `[2]` int stateless seed.
    brightness: brightness range.
    contrast: contrast range.
    saturation: saturation range.
    hue: hue range.

  Returns:
    The jittered image, clipped to [0, 1].
  """
  s_b, s_c, s_s, s_h = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  draw = lambda s, r: tf.random.stateless_uniform([], s, 1 - r, 1 + r) if r else tf.constant(1.0)
  b, c, sat = draw(s_b, brightness), draw(s_c, contrast), draw(s_s, saturation)
  angle = tf.random.stateless_uniform([], s_h, -hue, hue) * 2 * np.pi if hue else tf.constant(0.0)
  luma = tf.constant(_LUMA)
  eye = tf.eye(3)
  # Row-vector convention: colour' = colour @ matrix + offset.
  grey = tf.ones([3, 1]) * luma[None, :]  # colour @ grey.T -> its grey level in all three.
  saturate = sat * eye + (1 - sat) * tf.transpose(grey)
  cos, sin = tf.cos(angle), tf.sin(angle)
  rotate = tf.stack([[1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]])
  hue_map = tf.constant(_RGB_TO_YIQ.T) @ rotate @ tf.constant(_YIQ_TO_RGB.T)
  mean_grey = b * tf.reduce_mean(tf.tensordot(image, luma, axes=1))
  matrix = (b * c) * saturate @ hue_map
  offset = ((1 - c) * mean_grey) * tf.ones([1, 3]) @ saturate @ hue_map
  out = tf.tensordot(image, matrix, axes=1) + offset[0]
  return tf.clip_by_value(out, 0.0, 1.0)


def augment_example(
  example: Mapping[str, tf.Tensor],
  seed: tf.Tensor,
  *,
  image_size: Sequence[int],
  dense_size: Sequence[int],
  random_crop: bool = True,
  random_flip_lr: bool = True,
  jitter: Mapping[str, float] | None = None,
) -> Example:
  """SSD crop, resize, flip and colour jitter with one draw per example.

  Args:
    example: the example dict (image uint8 or float in [0, 1]).
    seed: `[2]` int stateless seed of this example.
    image_size: `(H, W)` of the output image.
    dense_size: `(h, w)` of the output dense fields.
    random_crop: whether to draw an SSD crop.
    random_flip_lr: whether to flip with probability 0.5.
    jitter: `brightness`, `contrast`, `saturation`, `hue` ranges, or None for no jitter.

  Returns:
    The augmented example with a float32 image in [0, 1] of `image_size`.
  """
  s_crop, s_flip, s_color = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  out = dict(example)
  if random_crop:
    out = crop(out, sample_crop_window(out['boxes'], s_crop))
  out = resize(out, image_size, dense_size)
  if random_flip_lr:
    out = random_flip(out, s_flip)
  if jitter:
    out['image'] = color_jitter(out['image'], s_color, **dict(jitter))
  return out
