"""COCO-style detection evaluation with pycocotools, and the paper's Table-3 layout.

`CocoEvaluator` collects ground truth and detections batch by batch (numpy), exports
them as COCO json (`[x, y, w, h]` in pixels of the original image, 0-based, category
ids 1..C named after the dataset's classes) and evaluates them with pycocotools, quietly.
`result()` returns a named dict:
- `mAP@[0.5:0.95]`, `mAP@0.5`, `mAP@0.75` (fractions in [0, 1]; means over the classes
  present in the ground truth, as pycocotools does), then the rest of pycocotools' 12-number
  summary (`COCO_SUMMARY_NAMES`: AP and AR by object size, AR at 1 / 10 / 100
  detections), None where pycocotools has no data (-1, e.g. no small object);
- `AP@0.5/<class>` for every class: None when the class never occurs in the ground
  truth (absent, rather than a silent 0 or NaN).
With no ground-truth box at all every entry is None; with no detection at all every
present class gets 0.

`table(result, class_names, fmt=...)` prints one row in the layout of the paper's
Table 3 (model name, mAP@0.5, one AP@0.5 column per class, in percent).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ('mAP@[0.5:0.95]', 'mAP@0.5', 'mAP@0.75')
# The 12 numbers of pycocotools' `COCOeval.summarize()`, in its order (`stats[0:12]`):
# AP over IoU 0.5:0.95, at 0.5 and 0.75; AP of small, medium and large objects; AR with
# at most 1, 10 and 100 detections per image; AR of small, medium and large objects.
COCO_SUMMARY_NAMES = (
  *METRIC_NAMES,
  'AP_small',
  'AP_medium',
  'AP_large',
  'AR@1',
  'AR@10',
  'AR@100',
  'AR_small',
  'AR_medium',
  'AR_large',
)


def to_pixels_xywh(box: np.ndarray, height: int, width: int) -> list[float]:
  """Normalised `[ymin, xmin, ymax, xmax]` -> COCO `[x, y, w, h]` in pixels.

  The one conversion for the evaluator and `rock_jax.detect`: widths and heights of
  inverted boxes are clamped to 0.
  """
  y0, x0, y1, x1 = (float(v) for v in box)
  return [x0 * width, y0 * height, max(x1 - x0, 0.0) * width, max(y1 - y0, 0.0) * height]


def coco_detections(
  det: Mapping[str, np.ndarray], image_id: int, orig_size: Sequence[int]
) -> list[dict[str, Any]]:
  """One image's detections as COCO results in original pixels (evaluator and detect).

  Args:
    det: one image of postprocess' output (no batch axis): `boxes`, `scores`, `classes`,
      `num`.
    image_id: the COCO image id.
    orig_size: `(H, W)` of the original image.

  Returns:
    `[{image_id, category_id, bbox: [x, y, w, h], score}, ...]`, in postprocess' order
    (best first).
  """
  height, width = (int(v) for v in orig_size)
  return [
    {
      'image_id': int(image_id),
      'category_id': int(det['classes'][n]),
      'bbox': to_pixels_xywh(det['boxes'][n], height, width),
      'score': float(det['scores'][n]),
    }
    for n in range(int(det['num']))
  ]


class CocoEvaluator:
  """Accumulates a dataset's detections and evaluates them with pycocotools."""

  def __init__(self, class_names: Sequence[str]):
    """Creates an empty evaluator.

    Args:
      class_names: foreground class names; class id `k` (1..C) is `class_names[k - 1]`.
    """
    self.class_names = list(class_names)
    self._images: list[dict[str, Any]] = []
    self._gt: list[dict[str, Any]] = []
    self._dets: list[dict[str, Any]] = []
    self._seen: set[int] = set()

  def reset(self) -> None:
    """Forgets everything added so far."""
    self._images, self._gt, self._dets, self._seen = [], [], [], set()

  @property
  def num_images(self) -> int:
    return len(self._images)

  def add(
    self,
    image_ids: np.ndarray,
    orig_sizes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_mask: np.ndarray,
    det: Mapping[str, np.ndarray],
    valid: np.ndarray | None = None,
  ) -> None:
    """Adds one batch.

    Args:
      image_ids: `[B]` int ids, unique over the dataset.
      orig_sizes: `[B, 2]` `(H, W)` of the original images, in pixels.
      gt_boxes: `[B, M, 4]` normalised corner boxes `[ymin, xmin, ymax, xmax]`.
      gt_labels: `[B, M]` labels in 1..C.
      gt_mask: `[B, M]` bool, True for real boxes.
      det: the output of `rock_jax.postprocess.postprocess` (numpy): `boxes` `[B, N, 4]`,
        `scores` `[B, N]`, `classes` `[B, N]`, `num` `[B]`.
      valid: optional `[B]`; examples with 0 are padding and are skipped.

    Raises:
      ValueError: if an image id was already added.
    """
    image_ids = np.asarray(image_ids)
    det = {k: np.asarray(v) for k, v in det.items()}
    for b, image_id in enumerate(image_ids.tolist()):
      if valid is not None and not valid[b]:
        continue
      if image_id in self._seen:
        raise ValueError(f'Image id {image_id} added twice.')
      self._seen.add(image_id)
      height, width = (int(v) for v in orig_sizes[b])
      self._images.append({'id': int(image_id), 'height': height, 'width': width})
      for box, label, real in zip(gt_boxes[b], gt_labels[b], gt_mask[b], strict=True):
        if not real:
          continue
        xywh = to_pixels_xywh(box, height, width)
        self._gt.append(
          {
            # pycocotools treats a matched gt id of 0 as "unmatched": ids start at 1.
            'id': len(self._gt) + 1,
            'image_id': int(image_id),
            'category_id': int(label),
            'bbox': xywh,
            'area': xywh[2] * xywh[3],
            'iscrowd': 0,
          }
        )
      self._dets.extend(
        coco_detections({k: v[b] for k, v in det.items()}, image_id, (height, width))
      )

  def ground_truth_json(self) -> dict[str, Any]:
    """Returns the ground truth as a COCO dataset dict."""
    return {
      'images': list(self._images),
      'annotations': list(self._gt),
      'categories': [{'id': k + 1, 'name': name} for k, name in enumerate(self.class_names)],
    }

  def detections_json(self) -> list[dict[str, Any]]:
    """Returns the detections as a COCO results list."""
    return list(self._dets)

  def write_json(self, directory: str | epath.PathLike) -> tuple[epath.Path, epath.Path]:
    """Writes `ground_truth.json` and `detections.json` (local or gs://) and returns them."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gt_path, det_path = directory / 'ground_truth.json', directory / 'detections.json'
    gt_path.write_text(json.dumps(self.ground_truth_json()))
    det_path.write_text(json.dumps(self.detections_json()))
    return gt_path, det_path

  def result(self) -> dict[str, float | None]:
    """Evaluates everything added so far (see the module docstring for the keys)."""
    present = {a['category_id'] for a in self._gt}
    result: dict[str, float | None] = dict.fromkeys(COCO_SUMMARY_NAMES)
    per_class = {
      f'AP@0.5/{name}': (0.0 if k + 1 in present else None)
      for k, name in enumerate(self.class_names)
    }
    if not self._gt:
      return {**result, **per_class}
    if not self._dets:
      # Zero where there is ground truth; None for a size range without objects.
      areas = np.array([a['area'] for a in self._gt])
      sizes = {
        'small': (areas < 32**2).any(),
        'medium': ((areas >= 32**2) & (areas < 96**2)).any(),
        'large': (areas >= 96**2).any(),
      }
      zeros = {n: 0.0 if sizes.get(n.split('_')[-1], True) else None for n in COCO_SUMMARY_NAMES}
      return {**zeros, **per_class}

    with contextlib.redirect_stdout(io.StringIO()):
      coco_gt = COCO()
      coco_gt.dataset = copy.deepcopy(self.ground_truth_json())
      coco_gt.createIndex()
      # loadRes adds keys to the dicts it gets: give it copies.
      coco_dt = coco_gt.loadRes(copy.deepcopy(self._dets))
      coco_eval = COCOeval(coco_gt, coco_dt, iouType='bbox')
      coco_eval.params.imgIds = [img['id'] for img in self._images]
      coco_eval.evaluate()
      coco_eval.accumulate()
      coco_eval.summarize()
    for name, value in zip(COCO_SUMMARY_NAMES, coco_eval.stats[:12], strict=True):
      result[name] = float(value) if value > -1 else None
    # precision: [IoU thresholds, recall points, classes, area ranges, max dets]; IoU 0.5
    # is index 0, area 'all' index 0, and the last max-dets setting is 100.
    precision = coco_eval.eval['precision']
    cat_ids = list(coco_eval.params.catIds)
    for k, name in enumerate(self.class_names):
      if k + 1 not in present:
        continue
      p = precision[0, :, cat_ids.index(k + 1), 0, -1]
      p = p[p > -1]
      per_class[f'AP@0.5/{name}'] = float(p.mean()) if p.size else 0.0
    return {**result, **per_class}

  def table(self, result: Mapping[str, float | None], fmt: str = 'text', name: str = '') -> str:
    """`table(result, self.class_names, fmt=fmt, name=name)`."""
    return table(result, self.class_names, fmt=fmt, name=name)


def table(
  result: Mapping[str, float | None],
  class_names: Sequence[str] | None = None,
  fmt: str = 'text',
  name: str = '',
) -> str:
  """Formats a result in the layout of the paper's Table 3 (AP@0.5 in percent).

  Args:
    result: the dict of `CocoEvaluator.result`.
    class_names: the columns after mAP; by default the classes of `result`, in order.
    fmt: 'text' (aligned columns) or 'markdown'.
    name: the model name in the first column.

  Returns:
    A header line and one row; absent classes (None) show as '-'.
  """
  if class_names is None:
    class_names = [k.split('/', 1)[1] for k in result if k.startswith('AP@0.5/')]
  headers = ['Model', 'mAP', *class_names]
  values = [result.get('mAP@0.5'), *(result.get(f'AP@0.5/{c}') for c in class_names)]
  row = [name or '-', *('-' if v is None else f'{100 * v:.1f}' for v in values)]
  if fmt == 'markdown':
    lines = [
      '| ' + ' | '.join(headers) + ' |',
      '|' + '|'.join([':---', *['---:'] * (len(headers) - 1)]) + '|',
      '| ' + ' | '.join(row) + ' |',
    ]
    return '\n'.join(lines)
  if fmt == 'text':
    widths = [max(len(h), len(r)) for h, r in zip(headers, row, strict=True)]
    first = [
      headers[0].ljust(widths[0]),
      *(h.rjust(w) for h, w in zip(headers[1:], widths[1:], strict=True)),
    ]
    second = [
      row[0].ljust(widths[0]),
      *(r.rjust(w) for r, w in zip(row[1:], widths[1:], strict=True)),
    ]
    return '\n'.join(['  '.join(first), '  '.join(second)])
  raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}.")
