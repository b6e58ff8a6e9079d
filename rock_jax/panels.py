"""Figure-3 style panels: detections and the auxiliary predictions of one image.

A panel is a row of tiles of equal height, each with a title bar (paper Figure 3
and supplementary Figure 1): the image with labelled detections, then one tile
per auxiliary task in `config.model.tasks` order:
- image-level class task (scene): the class map before global pooling for the
  predicted (argmax) class, upsampled and blended over the image;
- dense scalar task (depth, disparity): exp of the predicted log map, bright = near;
- dense vector task with 3 components (normals): unit vectors as RGB,
  `(n + 1) / 2`; other widths show the vector norm.

With `targets` (the trainer's evaluation panels) a second row shows the ground
truth under each prediction: the ground-truth boxes, the scene label, the depth
target (on the same colour scale as the prediction above it; grey where there is no
target) and the normals target.

Legibility: box labels never cover each other (`layout_labels` puts each one at the
first free place around its box's top-left corner or inside its edges, most confident
boxes first, and leaves out a label that finds no free place; its box stays drawn in
the class colour). Tile titles are fitted to their tile (smaller font, then an
ellipsis), so narrow portrait tiles do not run into each other.

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
_TITLE_SIZES = (14, 13, 12, 11, 10, 9)  # Title font sizes, tried in order.
_MISSING = (128, 128, 128)  # Target pixels without a value.
Rect = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels.


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
    most confident boxes end up on top, then their labels on a background of the
    class colour, placed by `layout_labels` (labels never overlap each other).
  """
  drawn, _ = draw_detections_with_labels(
    image, boxes, scores, classes, class_names, score_threshold=score_threshold
  )
  return drawn


def _overlaps(a: Rect, b: Rect) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def layout_labels(
  boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], width: int, height: int
) -> list[Rect | None]:
  """Places one label per box so that no two labels overlap.

  Boxes are taken in the given order (most important first). Each label tries, in
  order: above the box's top-left corner, inside its top-left corner, then down the
  inside of its left edge, inside its top-right corner, below its bottom-left
  corner; every place is moved inside the image. The first place that overlaps no
  label placed so far wins; a label with no free place is left out (None).

  Args:
    boxes: `(x0, y0, x1, y1)` in pixels.
    sizes: the `(width, height)` of each label.
    width: image width.
    height: image height.

  Returns:
    Per box, the label's rectangle or None.
  """
  placed: list[Rect] = []
  out: list[Rect | None] = []
  for (x0, y0, x1, y1), (tw, th) in zip(boxes, sizes, strict=True):
    corners = [(x0, y0 - th), (x0, y0)]
    y = y0 + th
    while y + th <= y1:
      corners.append((x0, y))
      y += th
    corners += [(x1 - tw, y0), (x0, y1)]
    choice = None
    for cx, cy in corners:
      cx = min(max(cx, 0.0), max(width - tw, 0.0))
      cy = min(max(cy, 0.0), max(height - th, 0.0))
      rect = (cx, cy, cx + tw, cy + th)
      if not any(_overlaps(rect, other) for other in placed):
        choice = rect
        break
    if choice is not None:
      placed.append(choice)
    out.append(choice)
  return out


def draw_detections_with_labels(
  image: np.ndarray,
  boxes: np.ndarray,
  scores: np.ndarray,
  classes: np.ndarray,
  class_names: Sequence[str],
  *,
  score_threshold: float = 0.3,
  outline_only: bool = False,
) -> tuple[np.ndarray, list[Rect]]:
  """`draw_detections`, also returning the label rectangles drawn.

  Args:
    image: uint8 `[H, W, 3]`.
    boxes: `[N, 4]` normalised `[ymin, xmin, ymax, xmax]`.
    scores: `[N]` (ground truth: ones).
    classes: `[N]` int, 1..C.
    class_names: the C foreground names.
    score_threshold: boxes below it are not drawn.
    outline_only: labels without the score (ground truth).

  Returns:
    (the drawn image, the label rectangles `(x0, y0, x1, y1)`, non-overlapping).
  """
  canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
  draw = ImageDraw.Draw(canvas)
  h, w = image.shape[:2]
  font = _font(max(10, min(16, h // 24)))
  line = max(1, round(min(h, w) / 160))
  scores = np.asarray(scores, np.float64)
  keep = [
    i
    for i in np.argsort(-scores, kind='stable')
    if scores[i] >= score_threshold and classes[i] >= 1
  ]
  rects, sizes, labels = [], [], []
  for i in keep:
    y0, x0, y1, x1 = (np.clip(np.asarray(boxes[i], np.float64), 0.0, 1.0) * [h, w, h, w]).tolist()
    cls = int(classes[i])
    name = class_names[cls - 1] if cls - 1 < len(class_names) else f'class {cls}'
    label = name if outline_only else f'{name} {scores[i]:.2f}'
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    rects.append((x0, y0, x1, y1))
    sizes.append((right - left + 4, bottom - top + 4))
    labels.append((label, top, class_color(cls)))
  # Boxes lowest score first (the most confident on top), then every label above them.
  for rect, (_, _, color) in reversed(list(zip(rects, labels, strict=True))):
    draw.rectangle(rect, outline=color, width=line)
  placed = layout_labels(rects, sizes, w, h)
  for spot, (label, top, color) in zip(placed, labels, strict=True):
    if spot is None:
      continue
    draw.rectangle([spot[0], spot[1], spot[2] - 1, spot[3] - 1], fill=color)
    draw.text((spot[0] + 2, spot[1] + 2 - top), label, fill=(0, 0, 0), font=font)
  return np.asarray(canvas), [r for r in placed if r is not None]


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


def scalar_map(
  values: np.ndarray,
  size: tuple[int, int],
  *,
  invert: bool = False,
  value_range: tuple[float, float] | None = None,
) -> np.ndarray:
  """Colours a dense scalar map (viridis) at `size` = (H, W).

  Args:
    values: `[h, w]`.
    size: the output (H, W).
    invert: bright for small values (near depth).
    value_range: (lo, hi) of the colour scale; by default the 2nd and 98th percentiles.

  Returns:
    uint8 `[H, W, 3]`.
  """
  up = upsample(values, size)
  if value_range is None:
    v = normalize(up)
  else:
    lo, hi = value_range
    v = np.clip((up - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
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


def _target_range(targets: Mapping[str, Any] | None, task: str) -> tuple[float, float] | None:
  """2nd-98th percentile of a dense scalar target's valid values (None: no target)."""
  if not targets or targets.get(task) is None:
    return None
  values = np.asarray(targets[task], np.float32)
  valid = values > 0
  if f'{task}_mask' in targets:
    valid &= np.asarray(targets[f'{task}_mask']) > 0
  if not valid.any():
    return None
  lo, hi = np.percentile(values[valid], [2, 98])
  return float(lo), float(hi)


def task_tiles(
  image: np.ndarray,
  aux: Mapping[str, Any],
  task_kinds: Mapping[str, str],
  label_names: Mapping[str, Sequence[str]] | None = None,
  targets: Mapping[str, Any] | None = None,
) -> list[tuple[str, np.ndarray]]:
  """One `(title, tile)` per auxiliary task present in `aux`, in `task_kinds` order.

  Args:
    image: uint8 `[H, W, 3]` at the tile size.
    aux: the detector's `aux` outputs for one image (no batch axis).
    task_kinds: task name -> 'image_class' | 'dense_scalar' | 'dense_vector'.
    label_names: task name -> class names, for image_class tasks.
    targets: optional targets (`targets_of`): a dense scalar prediction then uses its
      target's colour scale, so the two tiles compare.

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
      scale = _target_range(targets, task)
      tiles.append(
        (
          f'{task} {lo:.1f}-{hi:.1f}{unit}',
          scalar_map(target, size, invert=task == 'depth', value_range=scale),
        )
      )
    elif kind == 'dense_vector':
      tiles.append((task, vector_map(value, size)))
    else:
      raise ValueError(f'Unknown task kind {kind!r} for task {task!r}.')
  return tiles


def fit_title(
  draw: ImageDraw.ImageDraw, title: str, max_width: float
) -> tuple[str, ImageFont.ImageFont]:
  """The title and font that fit `max_width`: a smaller font first, then an ellipsis."""
  for size in _TITLE_SIZES:
    font = _font(size)
    if draw.textlength(title, font=font) <= max_width:
      return title, font
  text = title
  while len(text) > 1 and draw.textlength(text + '...', font=font) > max_width:
    text = text[:-1]
  return text.rstrip() + '...', font


def title_extents(tiles: Sequence[tuple[str, np.ndarray]]) -> list[tuple[float, float]]:
  """`(x_start, x_end)` of each drawn title in a `compose` row (for tests)."""
  draw = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  extents, x = [], 0
  for title, tile in tiles:
    text, font = fit_title(draw, title, tile.shape[1] - 6)
    extents.append((x + 3, x + 3 + draw.textlength(text, font=font)))
    x += tile.shape[1] + _GAP
  return extents


def compose(tiles: Sequence[tuple[str, np.ndarray]]) -> Image.Image:
  """Places titled tiles of equal height side by side on a white canvas.

  Each title is fitted to its tile's width (`fit_title`), so titles never collide.
  """
  height = max(t.shape[0] for _, t in tiles)
  width = sum(t.shape[1] for _, t in tiles) + _GAP * (len(tiles) - 1)
  canvas = Image.new('RGB', (width, height + TITLE_HEIGHT), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  x = 0
  for title, tile in tiles:
    canvas.paste(Image.fromarray(tile), (x, TITLE_HEIGHT))
    text, font = fit_title(draw, title, tile.shape[1] - 6)
    draw.text((x + 3, 3), text, fill=(0, 0, 0), font=font)
    x += tile.shape[1] + _GAP
  return canvas


def stack_rows(rows: Sequence[Image.Image]) -> Image.Image:
  """Stacks composed rows vertically (left-aligned, a gap between them)."""
  width = max(r.width for r in rows)
  height = sum(r.height for r in rows) + _GAP * (len(rows) - 1)
  canvas = Image.new('RGB', (width, height), (255, 255, 255))
  y = 0
  for row in rows:
    canvas.paste(row, (0, y))
    y += row.height + _GAP
  return canvas


def targets_of(
  batch: Mapping[str, np.ndarray], index: int, task_kinds: Mapping[str, str]
) -> dict[str, Any]:
  """One image's targets from an evaluation batch, for `figure3_panel(targets=...)`.

  Args:
    batch: a host eval batch (`gt_boxes`, `gt_labels`, `gt_mask`, and per task `t`,
      `has_t`, `t_mask`; see `rock_jax.input_pipeline`).
    index: the image in the batch.
    task_kinds: task name -> kind.

  Returns:
    `boxes` `[M, 4]` and `classes` `[M]` of the real boxes, and per task present in
    the image its target (and `<t>_mask` for dense tasks).
  """
  real = np.asarray(batch['gt_mask'][index]).astype(bool)
  out: dict[str, Any] = {
    'boxes': np.asarray(batch['gt_boxes'][index])[real],
    'classes': np.asarray(batch['gt_labels'][index])[real],
  }
  for task in task_kinds:
    if task not in batch:
      continue
    if f'has_{task}' in batch and not batch[f'has_{task}'][index] > 0:
      continue
    out[task] = np.asarray(batch[task][index])
    if f'{task}_mask' in batch:
      out[f'{task}_mask'] = np.asarray(batch[f'{task}_mask'][index])
  return out


def _masked(tile: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  """Paints the pixels where the (upsampled) mask is off in grey."""
  if mask is None:
    return tile
  on = upsample(np.asarray(mask, np.float32), tile.shape[:2]) > 0.5
  return np.where(on[..., None], tile, np.array(_MISSING, np.uint8)).astype(np.uint8)


def target_tiles(
  image: np.ndarray,
  targets: Mapping[str, Any],
  aux: Mapping[str, Any],
  task_kinds: Mapping[str, str],
  label_names: Mapping[str, Sequence[str]] | None = None,
) -> list[tuple[str, np.ndarray]]:
  """The target under each tile of `task_tiles` (same tasks, same order, same size).

  Args:
    image: uint8 `[H, W, 3]` at the tile size.
    targets: from `targets_of`.
    aux: the predictions (a target tile is made for each task `task_tiles` shows).
    task_kinds: task name -> kind.
    label_names: task name -> class names, for image_class tasks.

  Returns:
    The titled target tiles; a task without a target gets a grey tile.
  """
  label_names = label_names or {}
  size = image.shape[:2]
  tiles = []
  for task, kind in task_kinds.items():
    if task not in aux:
      continue
    target = targets.get(task)
    if target is None:
      tiles.append((f'{task} target: none', np.full(image.shape, 128, np.uint8)))
      continue
    mask = targets.get(f'{task}_mask')
    if kind == 'image_class':
      k = int(np.asarray(target))
      names = label_names.get(task, ())
      tiles.append((f'{task} target: {names[k] if k < len(names) else k}', image))
    elif kind == 'dense_scalar':
      values = np.asarray(target, np.float32)
      scale = _target_range(targets, task) or (0.0, 1.0)
      valid = values > 0 if mask is None else (np.asarray(mask) > 0) & (values > 0)
      unit = ' m' if task == 'depth' else ''
      tile = scalar_map(values, size, invert=task == 'depth', value_range=scale)
      tiles.append((f'{task} target {scale[0]:.1f}-{scale[1]:.1f}{unit}', _masked(tile, valid)))
    else:
      tiles.append((f'{task} target', _masked(vector_map(np.asarray(target), size), mask)))
  return tiles


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
  targets: Mapping[str, Any] | None = None,
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
    targets: optional ground truth (`targets_of`): adds a second row with the
      ground-truth boxes and each task's target under its prediction.

  Returns:
    The panel as a PIL RGB image: one row of tiles, or two with `targets`.
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
  top = compose(tiles + task_tiles(tile, aux, task_kinds, label_names, targets))
  if targets is None:
    return top
  gt_boxes = np.asarray(targets['boxes'], np.float32).reshape(-1, 4)
  gt_drawn, _ = draw_detections_with_labels(
    tile,
    gt_boxes,
    np.ones(len(gt_boxes)),
    np.asarray(targets['classes']).reshape(-1),
    class_names,
    score_threshold=0.5,
    outline_only=True,
  )
  plural = '' if len(gt_boxes) == 1 else 'es'
  bottom = [(f'ground truth: {len(gt_boxes)} box{plural}', gt_drawn)]
  bottom += target_tiles(tile, targets, aux, task_kinds, label_names)
  return stack_rows([top, compose(bottom)])


def eval_panels(
  images: np.ndarray,
  batch: Mapping[str, np.ndarray],
  det: Mapping[str, np.ndarray],
  aux: Mapping[str, np.ndarray],
  keep: np.ndarray,
  *,
  class_names: Sequence[str],
  label_names: Mapping[str, Sequence[str]],
  task_kinds: Mapping[str, str],
  limit: int,
) -> list[tuple[int, Image.Image]]:
  """The Figure-3 panels of the first `limit` kept images of an eval batch.

  Args:
    images: `[B, H, W, 3]` uint8 pixels of the batch's images.
    batch: the host's eval batch (`image_id`, the task targets).
    det: postprocess' detections of the batch.
    aux: the auxiliary outputs of the batch.
    keep: `[B]` real (not padding) examples.
    class_names: the detector's class names.
    label_names: label names of the image-level tasks.
    task_kinds: task name -> kind, of the active tasks.
    limit: at most this many panels.

  Returns:
    `[(image id, panel)]`.
  """
  out = []
  for i in np.flatnonzero(keep[: len(images)])[: max(0, limit)]:
    panel = figure3_panel(
      images[i],
      {k: v[i] for k, v in det.items()},
      {k: v[i] for k, v in aux.items()},
      class_names=class_names,
      task_kinds=task_kinds,
      label_names=label_names,
      targets=targets_of(batch, i, task_kinds),
    )
    out.append((int(batch['image_id'][i]), panel))
  return out
