"""Tests for normals from depth, normals decoding and instance boxes."""

import numpy as np
import pytest

from rock_jax.datasets import geometry

INTR = geometry.Intrinsics(fx=500.0, fy=520.0, cx=60.0, cy=45.0)


def _plane_depth(normal, offset, h=90, w=120, intr=INTR):
  """Depth of the plane n . p = offset along each pixel's ray."""
  v, u = np.mgrid[0:h, 0:w].astype(np.float64)
  rays = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], -1)
  return offset / (rays @ np.asarray(normal))


@pytest.mark.parametrize(
  'normal',
  [(0.0, 0.0, 1.0), (0.0, 0.6, 0.8), (0.5, -0.3, 0.81), (-0.2, 0.9, 0.4)],
)
@pytest.mark.parametrize('step', [1, 2])
def test_plane_normal_is_recovered_and_faces_camera(normal, step):
  n = np.asarray(normal) / np.linalg.norm(normal)
  depth = _plane_depth(n, 3.0)
  assert np.all(depth > 0)
  normals, mask = geometry.normals_from_depth(depth, INTR, step=step, max_relative_jump=1.0)
  # Facing the camera: the plane's points have n . p = 3 > 0, so expect -n.
  assert mask[step:-step, step:-step].all()
  assert not mask[:step].any() and not mask[:, -step:].any()
  np.testing.assert_allclose(normals[mask], np.broadcast_to(-n, normals[mask].shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(normals[mask], axis=-1), 1.0, atol=1e-5)
  assert np.all(normals[~mask] == 0)


def test_invalid_depth_edges_and_valid_area_are_masked():
  depth = _plane_depth((0.0, 0.0, 1.0), 2.0)
  depth[40, 50] = 0.0  # A hole: it and its 4 tangent neighbours lose their normal.
  depth[:, 100:] = 4.0  # An occlusion edge at column 100.
  normals, mask = geometry.normals_from_depth(depth, INTR, step=1, valid_area=(5, 80, 5, 110))
  assert not mask[40, 50] and not mask[40, 49] and not mask[40, 51] and not mask[39, 50]
  assert mask[40, 53]
  assert not mask[:, 99:101].any()  # Across the jump.
  assert mask[20, 102]
  assert not mask[:5].any() and not mask[80:].any() and not mask[:, 110:].any()
  assert np.all(normals[~mask] == 0)
  trusted = np.ones_like(depth, bool)
  trusted[10, 10] = False
  _, mask2 = geometry.normals_from_depth(depth, INTR, step=1, valid=trusted)
  assert not mask2[10, 10] and mask2[10, 12]


def test_back_project_inverts_projection():
  depth = np.full((90, 120), 2.5)
  p = geometry.back_project(depth, INTR)
  u = p[..., 0] / p[..., 2] * INTR.fx + INTR.cx
  v = p[..., 1] / p[..., 2] * INTR.fy + INTR.cy
  np.testing.assert_allclose(u[7, 11], 11.0)
  np.testing.assert_allclose(v[7, 11], 7.0)


def test_decode_normals_8bit_and_mask():
  n = np.array([0.36, -0.48, -0.8])
  png = np.zeros((4, 5, 3), np.uint8)
  png[...] = np.round((n + 1) * 127.5).astype(np.uint8)
  png[0, 0] = 128  # Decodes to ~0: invalid even though the mask says valid.
  valid = np.ones((4, 5), bool)
  valid[3, 4] = False
  out, mask = geometry.decode_normals(png, scale=127.5, valid=valid)
  assert not mask[0, 0] and not mask[3, 4] and mask.sum() == 18
  np.testing.assert_allclose(out[1, 1], n, atol=0.01)
  np.testing.assert_allclose(np.linalg.norm(out[mask], axis=-1), 1.0, atol=1e-6)
  assert np.all(out[~mask] == 0)


def test_instance_boxes_noncontiguous_and_edges():
  m = np.zeros((10, 20), np.int32)
  m[1:3, 2:4] = 7
  m[8, 19] = 7  # Second blob of id 7.
  m[5, 5] = 2
  ids, boxes = geometry.instance_boxes(m)
  np.testing.assert_array_equal(ids, [2, 7])
  np.testing.assert_allclose(boxes[0], [0.5, 0.25, 0.6, 0.3])
  np.testing.assert_allclose(boxes[1], [0.1, 0.1, 0.9, 1.0])
  ids, boxes = geometry.instance_boxes(np.zeros((3, 3), np.uint8))
  assert ids.shape == (0,) and boxes.shape == (0, 4)
