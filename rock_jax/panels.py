"""Figure-3 style panels: detections and the auxiliary predictions of one image.

A panel is a row of tiles of equal height, each with a title bar (paper Figure 3
and supplementary Figure 1): the image with labelled detections, then one tile
per auxiliary task in `config.model.tasks` order:
- image-level class task (scene): the class map before global pooling for the
  predicted (argmax) class, upsampled and blended over the image;
- dense scalar task (depth, disparity): exp of the predicted log map, bright = near;
- dense vector task with 3 components (normals): unit vectors as RGB,
  `(n + 1) / 2`; other widths show the vector norm.

Pure numpy + PIL, so the trainer, `rock_jax.detect` and the notebook share it
without a plotting dependency. Inputs are single images (no batch axis).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Control points of two perceptually ordered colormaps (matplotlib's viridis and
# magma sampled at 9 evenly spaced values), linearly interpolated in between.
_COLORMAPS = {
  'viridis': (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
  ),
  'magma': (
    (0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
    (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191),
  ),
}  # fmt: skip

TITLE_HEIGHT = 22
_GAP = 4  # Pixels between tiles.


def colormap(values: np.ndarray, name: str = 'viridis') -> np.ndarray:
  """Maps values in [0, 1] to RGB.

  Args:
    values: any shape; clipped to [0, 1], NaN treated as 0.
    name: 'viridis' or 'magma'.

  Returns:
    uint8 array of shape `values.shape + (3,)`.
  """
  stops = np.asarray(_COLORMAPS[name], np.float32)
  v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0) * (len(stops) - 1)
  lo = np.minimum(np.floor(v).astype(np.int32), len(stops) - 2)
  frac = (v - lo)[..., None]
  rgb = stops[lo] * (1.0 - frac) + stops[lo + 1] * frac
  return np.round(rgb).astype(np.uint8)


def normalize(values: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0) -> np.ndarray:
  """Rescales to [0, 1] between two percentiles (robust to a few extreme pixels)."""
  values = np.asarray(values, np.float32)
  lo, hi = np.percentile(values, [lo_pct, hi_pct])
  if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
    return np.zeros_like(values)
  return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except (OSError, TypeError, ImportError):  # Pillow without FreeType: bitmap font.
    return ImageFont.load_default()


def class_color(class_id: int) -> tuple[int, int, int]:
  """A bright, deterministic colour per class id (golden-ratio hue steps)."""
  hue = (class_id * 0.618033988749895) % 1.0
  rgb = Image.new('HSV', (1, 1), (int(hue * 255), 200, 255)).convert('RGB').getpixel((0, 0))
  return tuple(int(c) for c in rgb)


def resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
  """Resizes an RGB uint8 image to `height`, keeping its aspect ratio."""
  h, w = image.shape[:2]
  width = max(1, round(w * height / h))
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinearly resizes a float map `[h, w]` or `[h, w, c]` to `size` = (H, W)."""
  values = np.asarray(values, np.float32)
  if values.ndim == 2:
    return np.asarray(Image.fromarray(values, mode='F').resize(size[::-1], Image.BILINEAR))
  return np.stack([upsample(values[..., c], size) for c in range(values.shape[-1])], axis=-1)


def draw_detections(
  image: np.ndarray,
  boxes: np.ndarray,
  scores: np.ndarray,
  classes: np.ndarray,
  class_names: Sequence[str],
  *,
  score_threshold: float = 0.3,
) -> np.ndarray:
  """Draws labelled boxes above a score threshold.

  Args:
    image: uint8 `[H, W, 3]`, any size.
    boxes: `[N, 4]` normalised `[ymin, xmin, ymax, xmax]` (postprocess output).
    scores: `[N]`.
    classes: `[N]` int, 1..C (0 and padding entries are skipped).
    class_names: the C foreground names; index `class - 1`.
    score_threshold: boxes scoring below it are not drawn.

  Returns:
    A uint8 copy of `image` with the detections drawn, lowest score first so the
    most confident boxes end up on top.
  """
  canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
  draw = ImageDraw.Draw(canvas)
  h, w = image.shape[:2]
  font = _font(max(10, min(16, h // 24)))
  line = max(1, round(min(h, w) / 160))
  order = np.argsort(np.asarray(scores))
  for i in order:
    score, cls = float(scores[i]), int(classes[i])
    if score < score_threshold or cls < 1:
      continue
    y0, x0, y1, x1 = (np.clip(np.asarray(boxes[i], np.float64), 0.0, 1.0) * [h, w, h, w]).tolist()
    color = class_color(cls)
    draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
    name = class_names[cls - 1] if cls - 1 < len(class_names) else f'class {cls}'
    label = f'{name} {score:.2f}'
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    tw, th = right - left, bottom - top + 4
    ty = y0 - th if y0 - th >= 0 else y0  # Inside the box when it touches the top edge.
    draw.rectangle([x0, ty, x0 + tw + 4, ty + th], fill=color)
    draw.text((x0 + 2, ty + 1 - top), label, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def class_heatmap(image: np.ndarray, class_map: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """Blends a min-max normalised class map over a grey version of `image`.

  Args:
    image: uint8 `[H, W, 3]`.
    class_map: `[h, w]` map of one class before global pooling.
    alpha: weight of the heatmap.

  Returns:
    uint8 `[H, W, 3]`.
  """
  values = upsample(class_map, image.shape[:2])
  span = float(values.max() - values.min())
  values = (values - values.min()) / span if span > 1e-12 else np.zeros_like(values)
  grey = np.asarray(image, np.float32).mean(axis=-1, keepdims=True)
  blended = alpha * colormap(values, 'magma').astype(np.float32) + (1.0 - alpha) * grey
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def scalar_map(values: np.ndarray, size: tuple[int, int], *, invert: bool = False) -> np.ndarray:
  """Colours a dense scalar map (percentile-normalised, viridis) at `size` = (H, W)."""
  v = normalize(upsample(values, size))
  return colormap(1.0 - v if invert else v, 'viridis')


def vector_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Shows a dense vector map: 3 components as RGB unit vectors, else the norm."""
  values = upsample(values, size)
  if values.shape[-1] != 3:
    return scalar_map(np.linalg.norm(values, axis=-1), size)
  unit = values / np.maximum(np.linalg.norm(values, axis=-1, keepdims=True), 1e-6)
  return np.round((unit + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64) - np.max(logits)
  e = np.exp(z)
  return e / e.sum()


def task_tiles(
  image: np.ndarray,
  aux: Mapping[str, Any],
  task_kinds: Mapping[str, str],
  label_names: Mapping[str, Sequence[str]] | None = None,
) -> list[tuple[str, np.ndarray]]:
  """One `(title, tile)` per auxiliary task present in `aux`, in `task_kinds` order.

  Args:
    image: uint8 `[H, W, 3]` at the tile size.
    aux: the detector's `aux` outputs for one image (no batch axis).
    task_kinds: task name -> 'image_class' | 'dense_scalar' | 'dense_vector'.
    label_names: task name -> class names, for image_class tasks.

  Returns:
    The titled tiles, each uint8 `[H, W, 3]`.
  """
  label_names = label_names or {}
  size = image.shape[:2]
  tiles = []
  for task, kind in task_kinds.items():
    if task not in aux:
      continue
    value = np.asarray(aux[task], np.float32)
    if kind == 'image_class':
      probs = _softmax(value)
      k = int(np.argmax(probs))
      names = label_names.get(task, ())
      name = names[k] if k < len(names) else f'class {k}'
      title = f'{task}: {name} ({probs[k]:.2f})'
      class_map = aux.get(f'{task}_map')
      if class_map is None:  # No map (e.g. flat MTL pools inside): show the image.
        tiles.append((title, image))
      else:
        tiles.append((title, class_heatmap(image, np.asarray(class_map)[..., k])))
    elif kind == 'dense_scalar':
      # Dense scalar heads predict the log of the target (the losses regress in log
      # space): show the value itself, bright = near (small depth, large disparity).
      target = np.exp(value)
      lo, hi = np.percentile(target, [2, 98])
      unit = ' m' if task == 'depth' else ''
      tiles.append(
        (f'{task} {lo:.1f}-{hi:.1f}{unit}', scalar_map(target, size, invert=task == 'depth'))
      )
    elif kind == 'dense_vector':
      tiles.append((task, vector_map(value, size)))
    else:
      raise ValueError(f'Unknown task kind {kind!r} for task {task!r}.')
  return tiles


def compose(tiles: Sequence[tuple[str, np.ndarray]]) -> Image.Image:
  """Places titled tiles of equal height side by side on a white canvas."""
  height = max(t.shape[0] for _, t in tiles)
  width = sum(t.shape[1] for _, t in tiles) + _GAP * (len(tiles) - 1)
  canvas = Image.new('RGB', (width, height + TITLE_HEIGHT), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = _font(14)
  x = 0
  for title, tile in tiles:
    canvas.paste(Image.fromarray(tile), (x, TITLE_HEIGHT))
    draw.text((x + 3, 3), title, fill=(0, 0, 0), font=font)
    x += tile.shape[1] + _GAP
  return canvas


def figure3_panel(
  image: np.ndarray,
  detections: Mapping[str, Any],
  aux: Mapping[str, Any],
  *,
  class_names: Sequence[str],
  task_kinds: Mapping[str, str],
  label_names: Mapping[str, Sequence[str]] | None = None,
  score_threshold: float = 0.3,
  tile_height: int = 240,
) -> Image.Image:
  """Builds the Figure-3 row of one image.

  Args:
    image: uint8 `[H, W, 3]`, the original image (any size).
    detections: `boxes` `[N, 4]` normalised yxyx, `scores` `[N]`, `classes` `[N]`
      (1..C) and optionally `num` (valid entries), as one image of postprocess's output.
    aux: the detector's auxiliary outputs for this image (`{}` for the baseline).
    class_names: the detector's C foreground class names.
    task_kinds: task name -> kind, e.g. from `config.model.task_specs`.
    label_names: task name -> class names for image-level class tasks (scene).
    score_threshold: detections below it are not drawn.
    tile_height: height in pixels of every tile.

  Returns:
    The panel as a PIL RGB image.
  """
  tile = resize_to_height(np.asarray(image, np.uint8), tile_height)
  num = int(detections.get('num', len(detections['scores'])))
  drawn = draw_detections(
    tile,
    np.asarray(detections['boxes'])[:num],
    np.asarray(detections['scores'])[:num],
    np.asarray(detections['classes'])[:num],
    class_names,
    score_threshold=score_threshold,
  )
  n_shown = int(np.sum(np.asarray(detections['scores'])[:num] >= score_threshold))
  tiles = [(f'{n_shown} detections >= {score_threshold:g}', drawn)]
  return compose(tiles + task_tiles(tile, aux, task_kinds, label_names))
