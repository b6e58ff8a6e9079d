"""Object-centric classification crops of the synthetic rooms: the ImageNet analog.

Issue #11 pretrains the demo's backbone "the way ImageNet pretrains it": classify
single-object crops into the renderer's 11 classes, plus a background class, on
renders that no detection split contains. Scenes come from `rooms_render.render_scene`
in the target style, seeded with a four-word entropy `[CROP_ENTROPY, seed, split,
index]`, while every `synthetic_rooms` example is seeded with the three words `[seed,
split, index]`: different seed sequences, so different rooms and views.

Only RGB and the object boxes of each render are used: no depth, normals or scene
label (ROCK's auxiliary tasks, which ImageNet has none of).

Each object box gives one square crop around it with some context (its longer side
times a random factor in `CONTEXT`, centre jittered); with probability
`BACKGROUND_RATE` a scene also gives one background crop, a random square window that
overlaps no object much. Crops are resized to `size x size` (bilinear).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from rock_jax.datasets import rooms_render

CROP_ENTROPY = 0x0C50B1EC  # First entropy word of every crop scene; never a builder seed.
SPLITS = ('train', 'test')
BACKGROUND = len(rooms_render.CLASSES)  # Label of background crops (11).
CLASS_NAMES = (*rooms_render.CLASSES, 'background')
CONTEXT = (1.15, 1.5)  # Crop side / longer box side.
BACKGROUND_RATE = 0.5
MIN_BOX_PIXELS = 8  # Objects whose longer side is smaller are skipped.


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of crop scene `index` of `split` (disjoint from the detection sets)."""
  return np.random.default_rng([CROP_ENTROPY, seed, SPLITS.index(split), index])


def _crop(image: np.ndarray, y0: int, x0: int, side: int, size: int) -> np.ndarray:
  """The square window `[y0, y0 + side) x [x0, x0 + side)`, edge-padded, resized."""
  pad = side
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
  window = padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
  return np.asarray(Image.fromarray(window).resize((size, size), Image.BILINEAR))


def _overlap(window: np.ndarray, boxes: np.ndarray) -> float:
  """Largest fraction of any box's area covered by `window` (pixel yxyx)."""
  if not len(boxes):
    return 0.0
  iy = np.clip(np.minimum(window[2], boxes[:, 2]) - np.maximum(window[0], boxes[:, 0]), 0, None)
  ix = np.clip(np.minimum(window[3], boxes[:, 3]) - np.maximum(window[1], boxes[:, 1]), 0, None)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return float((iy * ix / np.maximum(area, 1e-9)).max())


def scene_crops(
  seed: int, split: str, index: int, *, height: int, width: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Renders crop scene `index` of `split` and cuts its crops.

  Args:
    seed: the crop set's seed.
    split: 'train' or 'test' (held-out scenes).
    index: scene index within the split.
    height: render height in pixels.
    width: render width in pixels.
    size: crop side in pixels after resizing.

  Returns:
    `(crops uint8 [N, size, size, 3], labels int32 [N])` (N may be 0).
  """
  rng = scene_rng(seed, split, index)
  out = rooms_render.render_scene(rng, height, width)
  image = out['image']
  boxes = out['boxes'] * np.array([height, width, height, width], np.float32)
  crops, labels = [], []
  for box, label in zip(boxes, out['labels'], strict=True):
    bh, bw = box[2] - box[0], box[3] - box[1]
    longer = max(bh, bw)
    if longer < MIN_BOX_PIXELS:
      continue
    side = max(int(round(longer * rng.uniform(*CONTEXT))), 4)
    cy = (box[0] + box[2]) / 2 + rng.uniform(-0.1, 0.1) * bh
    cx = (box[1] + box[3]) / 2 + rng.uniform(-0.1, 0.1) * bw
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    crops.append(_crop(image, y0, x0, side, size))
    labels.append(int(label))
  if rng.random() < BACKGROUND_RATE:
    for _ in range(20):
      side = int(rng.uniform(0.25, 0.6) * min(height, width))
      y0 = int(rng.integers(0, height - side + 1))
      x0 = int(rng.integers(0, width - side + 1))
      window = np.array([y0, x0, y0 + side, x0 + side], np.float32)
      if _overlap(window, boxes) < 0.15:
        crops.append(_crop(image, y0, x0, side, size))
        labels.append(BACKGROUND)
        break
  if not crops:
    return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int32)
  return np.stack(crops), np.asarray(labels, np.int32)


def _scene_crops_args(args: tuple) -> tuple[np.ndarray, np.ndarray]:
  seed, split, index, height, width, size = args
  return scene_crops(seed, split, index, height=height, width=width, size=size)


def render_crops(
  seed: int,
  split: str,
  num_scenes: int,
  *,
  height: int,
  width: int,
  size: int,
  processes: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
  """The crops of scenes `0 .. num_scenes - 1` of `split`, in scene order.

  Args:
    seed: the crop set's seed.
    split: 'train' or 'test'.
    num_scenes: how many scenes to render.
    height: render height.
    width: render width.
    size: crop side.
    processes: worker processes (spawned; 1 renders here).

  Returns:
    `(crops uint8 [N, size, size, 3], labels int32 [N])`.
  """
  jobs = [(seed, split, i, height, width, size) for i in range(num_scenes)]
  if processes > 1:
    import multiprocessing  # noqa: PLC0415

    with multiprocessing.get_context('spawn').Pool(processes) as pool:
      parts = pool.map(_scene_crops_args, jobs, chunksize=16)
  else:
    parts = [_scene_crops_args(job) for job in jobs]
  crops = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, size, size, 3))
  labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), np.int32)
  return crops.astype(np.uint8), labels.astype(np.int32)
