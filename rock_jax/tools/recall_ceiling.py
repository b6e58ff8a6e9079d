"""Recall ceiling of the default boxes: the share of ground-truth boxes that some default
box overlaps at IoU >= 0.5 (the others are only reachable through the best-box claim).

Run from the repository root:

  python -m rock_jax.tools.recall_ceiling [--num_boxes=20000] [--seed=0]

Ground truth is synthetic but NYUv2-like, at 480x640 (documented assumption; the real
NYUv2 boxes of the 19 classes range from small objects such as boxes, lamps and pillows
to beds and sofas filling half the image):
- box size: `sqrt(w h)` log-normal with median 100 px and sigma 0.7 in log space
  (2.5 % / 97.5 % quantiles about 25 px and 390 px), clipped to [12, 480] px;
- aspect ratio `w / h`: log-normal with median 1 and sigma 0.5 (quantiles about 0.37 and
  2.7: tall doors and lamps, wide sofas, beds and counters); sides clipped to the image;
- centre uniform over positions that keep the box inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import flags

from rock_jax import boxes as box_lib
from rock_jax import cli
from rock_jax.configs.base import get_base_config

FLAGS = flags.FLAGS
IMAGE_SIZE = (480, 640)


def sample_nyuv2_like_boxes(num: int, rng: np.random.Generator) -> np.ndarray:
  """Returns `[num, 4]` normalised corner boxes from the distribution of the docstring."""
  height, width = IMAGE_SIZE
  size = np.clip(np.exp(rng.normal(np.log(100.0), 0.7, num)), 12.0, 480.0)
  ratio = np.exp(rng.normal(0.0, 0.5, num))
  w = np.minimum(size * np.sqrt(ratio), width)
  h = np.minimum(size / np.sqrt(ratio), height)
  y0 = rng.uniform(0.0, 1.0, num) * (height - h)
  x0 = rng.uniform(0.0, 1.0, num) * (width - w)
  return np.stack([y0 / height, x0 / width, (y0 + h) / height, (x0 + w) / width], -1)


def best_iou(gt: np.ndarray, default_boxes: np.ndarray, chunk: int = 1024) -> np.ndarray:
  """Returns, for each ground-truth box, its best IoU with any default box."""
  corners = box_lib.center_to_corners(default_boxes.astype(np.float64), xp=np)
  out = np.empty(gt.shape[0])
  for start in range(0, gt.shape[0], chunk):  # Chunks keep the [chunk, A] matrix small.
    out[start : start + chunk] = box_lib.iou(gt[start : start + chunk], corners, xp=np).max(1)
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  config = get_base_config()
  default_boxes = box_lib.default_boxes(config.model, IMAGE_SIZE)
  gt = sample_nyuv2_like_boxes(FLAGS.num_boxes, np.random.default_rng(FLAGS.seed))
  ious = best_iou(gt, default_boxes)
  pixel_area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) * IMAGE_SIZE[0] * IMAGE_SIZE[1]
  print(f'Paper config: {default_boxes.shape[0]} default boxes at {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}.')
  print(
    f'Recall ceiling (best IoU >= 0.5): {100 * np.mean(ious >= 0.5):.1f} % of {gt.shape[0]} boxes'
  )
  for threshold in (0.4, 0.6, 0.7):
    print(f'  share with best IoU >= {threshold}: {100 * np.mean(ious >= threshold):.1f} %')
  # COCO size buckets, in pixels of the 480x640 image.
  buckets = {
    'small (< 32^2)': pixel_area < 32**2,
    'medium': (pixel_area >= 32**2) & (pixel_area < 96**2),
    'large (>= 96^2)': pixel_area >= 96**2,
  }
  for name, mask in buckets.items():
    if mask.any():
      print(
        f'  {name}: {100 * mask.mean():.1f} % of boxes, ceiling {100 * np.mean(ious[mask] >= 0.5):.1f} %'
      )


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  flags.DEFINE_integer('num_boxes', 20_000, 'Synthetic ground-truth boxes.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  cli.run(main)


if __name__ == '__main__':
  _cli()
