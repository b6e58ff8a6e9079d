"""Tests for rock_jax.coco, and the oracle test of the whole detection core."""

import json

import jax
import numpy as np
import pytest

from configs.base import get_base_config, smoke
from rock_jax import boxes, coco, matching, postprocess

_CLASSES = ('bed', 'chair', 'lamp', 'sofa')


def _det(boxes_, scores, classes, n_max=5):
  """One image's detections padded to `n_max`, as a batch of 1."""
  out = {
    'boxes': np.zeros((1, n_max, 4), np.float32),
    'scores': np.zeros((1, n_max), np.float32),
    'classes': np.zeros((1, n_max), np.int32),
    'num': np.array([len(scores)], np.int32),
  }
  out['boxes'][0, : len(scores)] = boxes_
  out['scores'][0, : len(scores)] = scores
  out['classes'][0, : len(scores)] = classes
  return out


def _gt(boxes_, labels, m_max=3):
  b = np.zeros((1, m_max, 4), np.float32)
  lab = np.zeros((1, m_max), np.int32)
  mask = np.zeros((1, m_max), bool)
  b[0, : len(labels)], lab[0, : len(labels)], mask[0, : len(labels)] = boxes_, labels, True
  return b, lab, mask


def test_json_export_pixels_xywh():
  ev = coco.CocoEvaluator(_CLASSES)
  box = [[0.1, 0.2, 0.5, 0.6]]
  ev.add([7], [[480, 640]], *_gt(box, [2]), _det(box, [0.9], [2]))
  gt = ev.ground_truth_json()
  assert gt['images'] == [{'id': 7, 'height': 480, 'width': 640}]
  assert gt['categories'][1] == {'id': 2, 'name': 'chair'}
  (ann,) = gt['annotations']
  np.testing.assert_allclose(ann['bbox'], [128.0, 48.0, 256.0, 192.0], rtol=1e-5)
  assert ann['id'] >= 1 and ann['category_id'] == 2 and ann['iscrowd'] == 0
  (det,) = ev.detections_json()
  np.testing.assert_allclose(det['bbox'], ann['bbox'], rtol=1e-5)
  json.dumps(gt)  # Plain json types only.


def test_perfect_detection_absent_classes_and_table():
  ev = coco.CocoEvaluator(_CLASSES)
  boxes_ = [[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.9]]
  ev.add([1], [[480, 640]], *_gt(boxes_, [1, 2]), _det(boxes_, [0.9, 0.8], [1, 2]))
  ev.add([2], [[480, 640]], *_gt(np.zeros((0, 4)), []), _det(np.zeros((0, 4)), [], []))
  result = ev.result()
  assert result['mAP@0.5'] == pytest.approx(1.0)
  assert result['mAP@[0.5:0.95]'] == pytest.approx(1.0)
  assert result['AP@0.5/bed'] == pytest.approx(1.0)
  assert result['AP@0.5/lamp'] is None and result['AP@0.5/sofa'] is None
  text = coco.table(result, _CLASSES, fmt='text', name='ROCK')
  header, row = text.splitlines()
  assert header.split() == ['Model', 'mAP', *_CLASSES]
  assert row.split() == ['ROCK', '100.0', '100.0', '100.0', '-', '-']
  md = ev.table(result, fmt='markdown')
  assert md.splitlines()[0] == '| Model | mAP | bed | chair | lamp | sofa |'
  assert md.splitlines()[2].endswith('| 100.0 | 100.0 | - | - |')


def test_false_positive_on_image_without_gt_halves_ap():
  ev = coco.CocoEvaluator(_CLASSES)
  box = [[0.1, 0.1, 0.4, 0.3]]
  ev.add([1], [[480, 640]], *_gt(box, [1]), _det(box, [0.8], [1]))
  # An image without ground truth: its higher-scored detection is a false positive, so
  # precision is 1/2 at every recall level (101-point interpolation): AP = 0.5.
  ev.add([2], [[480, 640]], *_gt(np.zeros((0, 4)), []), _det(box, [0.9], [1]))
  result = ev.result()
  assert result['AP@0.5/bed'] == pytest.approx(0.5)
  assert result['mAP@0.5'] == pytest.approx(0.5)
  assert result['AP@0.5/chair'] is None


def test_no_detections_and_no_ground_truth():
  ev = coco.CocoEvaluator(_CLASSES)
  ev.add([1], [[480, 640]], *_gt([[0.1, 0.1, 0.4, 0.3]], [3]), _det(np.zeros((0, 4)), [], []))
  result = ev.result()
  assert result['mAP@0.5'] == 0.0 and result['AP@0.5/lamp'] == 0.0
  assert result['AP@0.5/bed'] is None
  empty = coco.CocoEvaluator(_CLASSES)
  empty.add([1], [[480, 640]], *_gt(np.zeros((0, 4)), []), _det([[0, 0, 1, 1]], [0.9], [1]))
  assert all(v is None for v in empty.result().values())
  with pytest.raises(ValueError, match='twice'):
    empty.add([1], [[480, 640]], *_gt(np.zeros((0, 4)), []), _det(np.zeros((0, 4)), [], []))


def test_padding_examples_are_skipped():
  ev = coco.CocoEvaluator(_CLASSES)
  b, lab, mask = _gt([[0.1, 0.1, 0.4, 0.3]], [1])
  det = _det([[0.1, 0.1, 0.4, 0.3]], [0.9], [1])
  stacked = lambda x: np.concatenate([x, x])
  ev.add(
    [5, 5],
    [[480, 640]] * 2,
    stacked(b),
    stacked(lab),
    stacked(mask),
    {k: stacked(v) for k, v in det.items()},
    valid=np.array([1.0, 0.0]),
  )
  assert ev.num_images == 1 and ev.result()['mAP@0.5'] == pytest.approx(1.0)


def test_oracle_match_encode_decode_nms_coco():
  """gt -> TF matching -> perfect predictions -> postprocess -> COCO gives mAP@0.5 = 1."""
  config = smoke(get_base_config())
  image_size = (128, 160)
  config.data.image_size = image_size
  anchors = boxes.default_boxes(config.model, image_size)
  num_classes = len(_CLASSES)
  rng = np.random.default_rng(0)
  # Per image a few boxes in separate grid cells (same-class boxes must not overlap above
  # the NMS IoU), of varied sizes and aspect ratios; image 3 has no boxes.
  images = []
  for num in (3, 2, 4, 0):
    cells = rng.choice(4, size=num, replace=False)
    gt = []
    for cell in cells:
      y0, x0 = 0.5 * (cell // 2), 0.5 * (cell % 2)
      h, w = rng.uniform(0.15, 0.45, 2)
      gt.append([y0 + 0.02, x0 + 0.02, y0 + 0.02 + h, x0 + 0.02 + w])
    images.append((np.array(gt, np.float32).reshape(-1, 4), rng.integers(1, 4, num)))

  max_boxes = 5
  ev = coco.CocoEvaluator(_CLASSES)
  post = jax.jit(
    lambda o, lo: postprocess.postprocess(
      o, lo, anchors, score_threshold=0.05, pre_nms_top_k=50, nms_iou=0.3, max_detections=20
    )
  )
  for image_id, (gt, labels) in enumerate(images):
    gt_boxes, gt_labels, gt_mask = _gt(gt, labels, m_max=max_boxes)
    box_targets, cls_targets = matching.match_and_encode(
      gt_boxes[0], gt_labels[0], gt_mask[0], anchors
    )
    cls_targets = np.maximum(cls_targets.numpy(), 0)  # Ignored anchors: background.
    logits = 10.0 * np.eye(num_classes + 1, dtype=np.float32)[cls_targets]
    det = jax.tree.map(np.asarray, post(box_targets.numpy()[None], logits[None]))
    assert det['num'][0] == len(labels)
    ev.add([image_id], [[480, 640]], gt_boxes, gt_labels, gt_mask, det)
  result = ev.result()
  assert result['mAP@0.5'] == pytest.approx(1.0)
  present = {int(c) for _, labels in images for c in labels}
  for k, name in enumerate(_CLASSES):
    value = result[f'AP@0.5/{name}']
    assert (value is None) == (k + 1 not in present)
    assert value is None or value == pytest.approx(1.0)


def test_full_coco_summary_by_object_size():
  # One image of 1000x1000 px with one class: a small (20x20 px), a medium (50x50) and
  # a large (200x200) object; the medium and large ones are found exactly, the small
  # one is missed. By hand (pycocotools' definitions: 101 recall points, area ranges
  # 32^2 and 96^2 px, AR as the recall at 1 / 10 / 100 detections):
  # recall 2/3 at precision 1 -> AP = 67/101 at every IoU threshold; APs = 0, APm = APl
  # = 1; AR@1 = 1/3 (one detection), AR@10 = AR@100 = 2/3; ARs = 0, ARm = ARl = 1.
  small = [0.10, 0.10, 0.12, 0.12]
  medium = [0.30, 0.30, 0.35, 0.35]
  large = [0.50, 0.50, 0.70, 0.70]
  ev = coco.CocoEvaluator(_CLASSES)
  ev.add(
    [1],
    [[1000, 1000]],
    *_gt([small, medium, large], [1, 1, 1]),
    _det([medium, large], [0.9, 0.8], [1, 1]),
  )
  result = ev.result()
  expected = {
    'mAP@[0.5:0.95]': 67 / 101,
    'mAP@0.5': 67 / 101,
    'mAP@0.75': 67 / 101,
    'AP_small': 0.0,
    'AP_medium': 1.0,
    'AP_large': 1.0,
    'AR@1': 1 / 3,
    'AR@10': 2 / 3,
    'AR@100': 2 / 3,
    'AR_small': 0.0,
    'AR_medium': 1.0,
    'AR_large': 1.0,
  }
  assert tuple(expected) == coco.COCO_SUMMARY_NAMES
  for name, value in expected.items():
    assert result[name] == pytest.approx(value, abs=1e-6), name
