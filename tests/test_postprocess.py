"""Tests for rock_jax.postprocess against a brute-force numpy NMS."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rock_jax import boxes as box_lib
from rock_jax import postprocess


def _np_iou(a: np.ndarray, b: np.ndarray) -> float:
  ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
  iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
  inter = ih * iw
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _np_postprocess(offsets, logits, anchors, *, thr, top_k, nms_iou, max_det, clip_first=True):
  """Brute force, one image: loops over classes and candidates."""
  decoded = box_lib.decode(offsets.astype(np.float64), anchors.astype(np.float64))
  decoded = np.clip(decoded, 0, 1) if clip_first else decoded
  e = np.exp(logits - logits.max(-1, keepdims=True))
  scores = (e / e.sum(-1, keepdims=True))[:, 1:]
  detections = []
  for c in range(scores.shape[1]):
    order = np.argsort(-scores[:, c], kind='stable')[:top_k]
    order = [i for i in order if scores[i, c] > thr]
    kept = []
    for i in order:
      if all(_np_iou(decoded[i], decoded[j]) <= nms_iou for j in kept):
        kept.append(i)
    detections += [(scores[i, c], c + 1, np.clip(decoded[i], 0, 1)) for i in kept]
  detections.sort(key=lambda d: -d[0])
  return detections[:max_det]


def _random_problem(seed, batch=2, anchors=60, classes=3, clustered=True):
  rng = np.random.default_rng(seed)
  cy, cx = rng.uniform(0.2, 0.8, (2, anchors))
  if clustered:  # Few centres, so many boxes overlap and NMS has work to do.
    centres = rng.uniform(0.2, 0.8, (4, 2))
    pick = rng.integers(0, 4, anchors)
    cy, cx = centres[pick].T + rng.normal(0, 0.03, (2, anchors))
  default_boxes = np.stack([cy, cx, *rng.uniform(0.1, 0.4, (2, anchors))], -1).astype(np.float32)
  offsets = rng.normal(0, 0.5, (batch, anchors, 4)).astype(np.float32)
  logits = rng.normal(0, 2.0, (batch, anchors, classes + 1)).astype(np.float32)
  return offsets, logits, default_boxes


@pytest.mark.parametrize('seed', range(6))
def test_matches_brute_force_numpy(seed):
  kwargs = dict(thr=0.05, top_k=20, nms_iou=0.3, max_det=25)
  offsets, logits, anchors = _random_problem(seed)
  out = jax.jit(
    lambda o, lo: postprocess.postprocess(
      o, lo, anchors, score_threshold=0.05, pre_nms_top_k=20, nms_iou=0.3, max_detections=25
    )
  )(offsets, logits)
  out = jax.tree.map(np.asarray, out)
  assert out['boxes'].shape == (2, 25, 4) and out['classes'].dtype == np.int32
  for b in range(offsets.shape[0]):
    expected = _np_postprocess(offsets[b], logits[b], anchors, **kwargs)
    n = int(out['num'][b])
    assert n == len(expected)
    np.testing.assert_allclose(out['scores'][b, :n], [d[0] for d in expected], rtol=1e-5)
    np.testing.assert_array_equal(out['classes'][b, :n], [d[1] for d in expected])
    np.testing.assert_allclose(out['boxes'][b, :n], [d[2] for d in expected], atol=1e-5)
    assert (out['scores'][b, n:] == 0).all() and (out['classes'][b, n:] == 0).all()


def test_nms_mask_matches_sequential_greedy():
  rng = np.random.default_rng(7)
  centres = rng.uniform(0.3, 0.7, (3, 50, 2))
  sizes = rng.uniform(0.05, 0.3, (3, 50, 2))
  corners = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
  valid = rng.uniform(size=(3, 50)) > 0.2
  keep = np.asarray(postprocess.nms_mask(jnp.asarray(corners), jnp.asarray(valid), 0.3))
  for g in range(3):
    kept = []
    for i in range(50):
      if valid[g, i] and all(_np_iou(corners[g, i], corners[g, j]) <= 0.3 for j in kept):
        kept.append(i)
    np.testing.assert_array_equal(np.flatnonzero(keep[g]), kept)


def test_low_scores_give_no_detections():
  offsets, logits, anchors = _random_problem(0)
  logits[..., 0] = 50.0  # Background everywhere: every class score is ~0.
  out = jax.jit(lambda o, lo: postprocess.postprocess(o, lo, anchors, max_detections=10))(
    offsets, logits
  )
  assert (np.asarray(out['num']) == 0).all()
  assert (np.asarray(out['scores']) == 0).all()
  assert out['boxes'].shape == (2, 10, 4)


@pytest.mark.parametrize('seed', range(3))
def test_nms_on_unclipped_boxes_matches_brute_force(seed):
  """`clip_before_nms=False` (rock-pytorch): NMS on the raw boxes, clipped output."""
  offsets, logits, anchors = _random_problem(seed)
  anchors[:, 2:] *= 2.5  # Large boxes: many cross the border, so clipping matters.
  out = jax.jit(
    lambda o, lo: postprocess.postprocess(
      o, lo, anchors, pre_nms_top_k=20, nms_iou=0.3, max_detections=25, clip_before_nms=False
    )
  )(offsets, logits)
  out = jax.tree.map(np.asarray, out)
  differs = False
  for b in range(offsets.shape[0]):
    kwargs = dict(thr=0.05, top_k=20, nms_iou=0.3, max_det=25)
    expected = _np_postprocess(offsets[b], logits[b], anchors, clip_first=False, **kwargs)
    clipped_first = _np_postprocess(offsets[b], logits[b], anchors, **kwargs)
    differs |= len(expected) != len(clipped_first)
    n = int(out['num'][b])
    assert n == len(expected)
    np.testing.assert_allclose(out['scores'][b, :n], [d[0] for d in expected], rtol=1e-5)
    np.testing.assert_allclose(out['boxes'][b, :n], [d[2] for d in expected], atol=1e-5)
    assert out['boxes'].min() >= 0 and out['boxes'].max() <= 1
  assert differs  # The problem does tell the two orders apart.


def test_clipping_order_on_two_border_boxes():
  """Two boxes over the left border: IoU 0.5 unclipped, 1.0 once clipped."""
  anchors = np.array([[0.3, 0.0, 0.2, 1.0], [0.3, 0.25, 0.2, 0.5]], np.float32)  # cy, cx, h, w
  offsets = np.zeros((1, 2, 4), np.float32)
  logits = np.array([[[0.0, 3.0], [0.0, 2.0]]], np.float32)
  run = lambda clip: postprocess.postprocess(
    offsets, logits, anchors, nms_iou=0.6, max_detections=3, clip_before_nms=clip
  )
  assert int(run(True)['num'][0]) == 1
  unclipped = jax.tree.map(np.asarray, run(False))
  assert int(unclipped['num'][0]) == 2
  np.testing.assert_allclose(unclipped['boxes'][0, :2], [[0.2, 0.0, 0.4, 0.5]] * 2, atol=1e-6)


def test_sorted_top_k_is_lax_top_k():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, (3, 4, 30)).astype(np.float32) / 4  # Many ties.
  x[0, 0, :] = 0.0
  want = jax.lax.top_k(jnp.asarray(x), 7)
  got = postprocess.sorted_top_k(jnp.asarray(x), 7)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
