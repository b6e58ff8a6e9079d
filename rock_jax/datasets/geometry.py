"""Camera geometry for the builders: surface normals from a depth map.

Camera frame: x right, y down, z forward (the pinhole convention of the
intrinsics below). Normals point towards the camera (n . p < 0 for a surface
point p), so a floor seen from above has a normal with negative y.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Intrinsics:
  """Pinhole intrinsics in pixels (x = column, y = row)."""

  fx: float
  fy: float
  cx: float
  cy: float


# NYUv2 RGB camera (the labeled depths are registered to it), REFERENCE section 5.
NYU_INTRINSICS = Intrinsics(
  fx=518.85790117450188, fy=519.46961112127485, cx=325.58244941119034, cy=253.73616633400465
)
# NYUv2's valid projection area: rows 44:471, cols 40:601 (outside it depth is filled in).
NYU_VALID_AREA = (44, 471, 40, 601)
# MLT / PBRS renderer.
MLT_INTRINSICS = Intrinsics(fx=517.97, fy=517.97, cx=320.0, cy=240.0)


def back_project(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
  """Back-projects a depth map (z along the optical axis) to camera-frame points.

  Args:
    depth: `[H, W]` depth in metres.
    intrinsics: camera intrinsics.

  Returns:
    `[H, W, 3]` float64 points (x right, y down, z forward).
  """
  depth = np.asarray(depth, np.float64)
  h, w = depth.shape
  v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing='ij')
  x = (u - intrinsics.cx) / intrinsics.fx * depth
  y = (v - intrinsics.cy) / intrinsics.fy * depth
  return np.stack([x, y, depth], axis=-1)


def normals_from_depth(
  depth: np.ndarray,
  intrinsics: Intrinsics,
  *,
  step: int = 2,
  max_relative_jump: float = 0.1,
  valid_area: tuple[int, int, int, int] | None = None,
  valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Surface normals from depth by the cross product of central-difference tangents.

  The tangents span `2 * step` pixels, which averages out some sensor noise; a
  pixel gets a normal only when the depth at it and at its four tangent
  neighbours is valid, none of the neighbours jumps by more than
  `max_relative_jump` of its depth (an occlusion edge, where the cross product
  would mix two surfaces), and it lies `step` pixels inside the frame (and
  inside `valid_area` when given).

  Args:
    depth: `[H, W]` depth in metres, 0 (or non-finite) = invalid.
    intrinsics: camera intrinsics.
    step: half-width of the tangent stencil, in pixels.
    max_relative_jump: largest accepted |dz| / z between the pixel and a neighbour.
    valid_area: `(row0, row1, col0, col1)` region whose pixels may be valid.
    valid: optional `[H, W]` bool, pixels whose depth may be trusted.

  Returns:
    `(normals [H, W, 3] float32 unit vectors (0 where invalid), mask [H, W] bool)`.
  """
  depth = np.asarray(depth, np.float64)
  h, w = depth.shape
  ok = np.isfinite(depth) & (depth > 0)
  if valid is not None:
    ok &= np.asarray(valid, bool)
  depth = np.where(ok, depth, 0.0)
  points = back_project(depth, intrinsics)
  s = step
  normals = np.zeros((h, w, 3), np.float64)
  mask = np.zeros((h, w), bool)
  if h <= 2 * s or w <= 2 * s:
    return normals.astype(np.float32), mask

  inner = (slice(s, h - s), slice(s, w - s))
  right, left = points[s : h - s, 2 * s :], points[s : h - s, : w - 2 * s]
  down, up = points[2 * s :, s : w - s], points[: h - 2 * s, s : w - s]
  n = np.cross(right - left, down - up)

  z = depth[inner]
  m = ok[inner].copy()
  for nb_ok, nb_z in (
    (ok[s : h - s, 2 * s :], depth[s : h - s, 2 * s :]),
    (ok[s : h - s, : w - 2 * s], depth[s : h - s, : w - 2 * s]),
    (ok[2 * s :, s : w - s], depth[2 * s :, s : w - s]),
    (ok[: h - 2 * s, s : w - s], depth[: h - 2 * s, s : w - s]),
  ):
    m &= nb_ok
    with np.errstate(divide='ignore', invalid='ignore'):
      m &= np.abs(nb_z - z) <= max_relative_jump * z

  norm = np.linalg.norm(n, axis=-1)
  m &= norm > 1e-12
  n = n / np.where(m, norm, 1.0)[..., None]
  # Orient towards the camera: the viewing ray to the point is p itself.
  facing_away = np.sum(n * points[inner], axis=-1) > 0
  n = np.where(facing_away[..., None], -n, n)
  normals[inner] = np.where(m[..., None], n, 0.0)
  mask[inner] = m

  if valid_area is not None:
    r0, r1, c0, c1 = valid_area
    area = np.zeros((h, w), bool)
    area[r0:r1, c0:c1] = True
    mask &= area
    normals[~mask] = 0.0
  return normals.astype(np.float32), mask


def decode_normals(
  encoded: np.ndarray, *, scale: float, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes normals stored as `n = p / scale - 1`, L2-normalised.

  Args:
    encoded: `[H, W, 3]` integer pixels (8-bit: scale 127.5; 16-bit: scale 65535 / 2).
    scale: see above.
    valid: optional `[H, W]` bool mask of stored-valid pixels.

  Returns:
    `(normals [H, W, 3] float32 (0 where invalid), mask [H, W] bool)`; pixels
    whose decoded vector is far from unit length (norm < 0.5, e.g. the grey
    (128, 128, 128) of an unfilled pixel) are invalid too.
  """
  n = np.asarray(encoded, np.float64) / scale - 1.0
  norm = np.linalg.norm(n, axis=-1)
  mask = norm > 0.5
  if valid is not None:
    mask &= np.asarray(valid, bool)
  n = np.where(mask[..., None], n / np.where(mask, norm, 1.0)[..., None], 0.0)
  return n.astype(np.float32), mask


def instance_boxes(instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tight boxes of every non-zero id of an instance map, on the full frame.

  Pixels of one id need not be contiguous: the box spans all of them. Box edges
  lie on pixel boundaries, so a single pixel at (r, c) gets
  `[r / H, c / W, (r + 1) / H, (c + 1) / W]`.

  Args:
    instance_map: `[H, W]` integer map, 0 = no instance.

  Returns:
    `(ids [N] int64 ascending, boxes [N, 4] float32 normalised [ymin, xmin, ymax, xmax])`.
  """
  instance_map = np.asarray(instance_map)
  h, w = instance_map.shape
  rows, cols = np.nonzero(instance_map)
  if rows.size == 0:
    return np.zeros((0,), np.int64), np.zeros((0, 4), np.float32)
  ids, inverse = np.unique(instance_map[rows, cols].astype(np.int64), return_inverse=True)
  n = ids.size
  ymin = np.full(n, h, np.int64)
  xmin = np.full(n, w, np.int64)
  ymax = np.full(n, -1, np.int64)
  xmax = np.full(n, -1, np.int64)
  np.minimum.at(ymin, inverse, rows)
  np.minimum.at(xmin, inverse, cols)
  np.maximum.at(ymax, inverse, rows)
  np.maximum.at(xmax, inverse, cols)
  boxes = np.stack([ymin / h, xmin / w, (ymax + 1) / h, (xmax + 1) / w], axis=-1)
  return ids, boxes.astype(np.float32)
