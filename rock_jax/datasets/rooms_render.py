"""Procedural indoor rooms rendered by vectorised numpy ray casting.

The built-in synthetic benchmark of `rock_jax` (`synthetic_rooms` TFDS builder). One call
to `render_scene(rng, height, width)` has `rooms_layout` furnish a room, picks a camera
pose and ray-casts the scene against axis-aligned boxes and vertical cylinders. It returns exact depth, surface normals, an instance map, tight
boxes of the visible pixels of each object and a shaded, textured, noisy RGB image.

World frame: x east, y north, z up (metres); the room is `[0, Lx] x [0, Ly] x [0, Hc]`.
Camera frame (the frame of the returned normals): x right, y down, z forward (OpenCV).
A surface facing the camera has a negative normal z; the floor's normal points up in the
image, i.e. has a negative y. Depth is the z coordinate in the camera frame (not the ray
length), as in NYUv2.

The scenes themselves (classes, scene types, what each scene contains, and why the
benchmark is fair) are laid out in `rooms_layout`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rock_jax.datasets.rooms_layout import (
  BOOKS,
  CLASSES,
  EMISSIVE,
  FABRIC,
  FRAMED,
  SCENE_OBJECTS,
  SCENES,
  TILES,
  TUB,
  WOOD,
  Scene,
  furnish,
)

__all__ = ['CLASSES', 'SCENES', 'SCENE_OBJECTS', 'STYLES', 'RenderStyle', 'render_scene']

MIN_VISIBLE_FRACTION = 0.3  # Of the object's unoccluded pixels in the frame.
MIN_AREA = 0.003  # Of the image.
MIN_SIDE = 0.04  # Of the image height / width.
_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class RenderStyle:
  """The look of a rendering: lighting, textures, camera range and object mix.

  The defaults are the target style of every original builder config; a render with
  them is bit-identical to one made before styles existed (same random draws, same
  arithmetic). A style draws the same number of random values per primitive as the
  default, so only its own renders depend on its values.

  Attributes:
    ambient: range of the ambient light level.
    direct: range of the ceiling light's strength.
    tint: range of the per-channel colour cast of the light.
    fill: strength of the fill light from the camera.
    texture_frequency: multiplies texture coordinates (> 1: finer patterns).
    saturation: scales albedo saturation around its grey level (1: unchanged).
    camera_height: range of the camera height (metres).
    camera_distance: range of the horizontal distance to the looked-at object (metres).
    focal: focal length as a fraction of the image width (smaller: wider view).
    presence: per-class multipliers of the presence probabilities (the object mix),
      as `((class, multiplier), ...)`.
  """

  ambient: tuple[float, float] = (0.25, 0.4)
  direct: tuple[float, float] = (0.6, 0.9)
  tint: tuple[float, float] = (0.9, 1.1)
  fill: float = 0.2
  texture_frequency: float = 1.0
  saturation: float = 1.0
  camera_height: tuple[float, float] = (1.1, 1.7)
  camera_distance: tuple[float, float] = (1.3, 4.5)
  focal: float = 0.82
  presence: tuple[tuple[str, float], ...] = ()


# 'target': the demo's look. 'source': the MLT analog of issue #11 (a differently styled
# source set): flat, strongly tinted light; finer, washed-out textures; a lower camera
# closer to the objects with a wider field of view; more shelves, lamps and sofas, fewer
# chairs, monitors and sinks.
STYLES = {
  'target': RenderStyle(),
  'source': RenderStyle(
    ambient=(0.45, 0.6),
    direct=(0.2, 0.35),
    tint=(0.75, 1.25),
    fill=0.25,
    texture_frequency=2.5,
    saturation=0.5,
    camera_height=(0.7, 1.2),
    camera_distance=(1.0, 3.0),
    focal=0.62,
    presence=(
      ('bookshelf', 1.6),
      ('lamp', 1.5),
      ('sofa', 2.0),
      ('bed', 1.5),
      ('chair', 0.5),
      ('monitor', 0.5),
      ('sink', 0.6),
    ),  # fmt: skip
  ),
}


def _camera(
  rng: np.random.Generator, scene: Scene, style: RenderStyle
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
  """Picks a camera position and rotation (columns: camera x, y, z axes in world)."""
  size = scene.size
  centres = [(b[0] + b[1]) / 2 for b in scene.boxes if b[3] >= 0]
  target = centres[rng.integers(len(centres))] if centres else size / 2
  for _ in range(40):
    pos = np.array([*rng.uniform([0.3, 0.3], size[:2] - 0.3), rng.uniform(*style.camera_height)])
    if any(
      o[0] - 0.3 < pos[0] < o[2] + 0.3 and o[1] - 0.3 < pos[1] < o[3] + 0.3
      for o in scene.footprints
    ):
      continue
    dist = np.linalg.norm(target[:2] - pos[:2])
    if style.camera_distance[0] < dist < style.camera_distance[1]:
      break
  else:
    return None, None
  delta = target - pos
  yaw = np.arctan2(delta[1], delta[0]) + rng.normal(0, np.radians(12))
  pitch = np.arctan2(delta[2], np.linalg.norm(delta[:2])) + rng.normal(0, np.radians(5))
  pitch = np.clip(pitch, np.radians(-45), np.radians(5))
  roll = rng.normal(0, np.radians(2))
  fwd = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
  right = np.cross(fwd, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  down = np.cross(fwd, right)
  c, s = np.cos(roll), np.sin(roll)
  right, down = c * right + s * down, -s * right + c * down
  return pos, np.stack([right, down, fwd], axis=1)


def _hash(ix: np.ndarray, iy: np.ndarray, seed: np.ndarray) -> np.ndarray:
  """Deterministic integer hash of lattice points to floats in [0, 1)."""
  h = ix.astype(np.int64) * 73856093 ^ iy.astype(np.int64) * 19349663 ^ seed * 83492791
  h = (h ^ (h >> 13)) * 1274126177
  h = h ^ (h >> 16)
  return (h & 0xFFFF).astype(np.float32) / 65536.0


def _value_noise(u: np.ndarray, v: np.ndarray, seed: np.ndarray) -> np.ndarray:
  """Smooth value noise in [0, 1) with unit lattice spacing."""
  iu, iv = np.floor(u), np.floor(v)
  fu, fv = u - iu, v - iv
  fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
  iu, iv = iu.astype(np.int64), iv.astype(np.int64)
  a, b = _hash(iu, iv, seed), _hash(iu + 1, iv, seed)
  c, d = _hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed)
  return (a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + d * fu) * fv


def _pixel_rect(
  corners: np.ndarray, pos: np.ndarray, rot: np.ndarray, focal: float, height: int, width: int
) -> tuple[int, int, int, int]:
  """Pixel rectangle `(y0, y1, x0, x1)` that contains the projection of a primitive."""
  cam = (corners - pos) @ rot
  if (cam[:, 2] < 0.02).any():  # Crosses the camera plane: test every ray.
    return 0, height, 0, width
  u = cam[:, 0] / cam[:, 2] * focal + width / 2
  v = cam[:, 1] / cam[:, 2] * focal + height / 2
  x0, x1 = int(max(np.floor(u.min()) - 1, 0)), int(min(np.ceil(u.max()) + 1, width))
  y0, y1 = int(max(np.floor(v.min()) - 1, 0)), int(min(np.ceil(v.max()) + 1, height))
  return y0, max(y1, y0), x0, max(x1, x0)


def _trace(
  pos: np.ndarray, dirs: np.ndarray, rot: np.ndarray, focal: float, scene: Scene
) -> dict[str, np.ndarray]:
  """Casts rays `pos + t * dirs`; t is the camera-frame depth since dirs have z_cam = 1.

  Each primitive is only tested against the rays inside the bounding rectangle of its
  projection, which keeps small parts (chair legs) cheap.

  Args:
    pos: camera centre in world coordinates.
    dirs: `[H, W, 3]` world ray directions (camera z component 1).
    rot: camera rotation (columns: camera axes in world).
    focal: focal length in pixels.
    scene: the furnished room.

  Returns:
    `t` `[H, W]` depth, `prim` `[H, W]` primitive index (boxes, then cylinders; room
    faces -1 - axis) and `unoccluded` `[num_objects]` pixels each object would cover alone.
  """
  height, width, _ = dirs.shape
  safe = np.where(np.abs(dirs) < 1e-9, 1e-9, dirs).astype(np.float32)
  inv = 1.0 / safe
  o = pos.astype(np.float32)
  # Room interior: the ray leaves through the face where the exit distance is smallest.
  exits = np.where(safe > 0, scene.size.astype(np.float32) - o, -o) * inv
  axis = np.argmin(exits, axis=-1)
  best_t = np.take_along_axis(exits, axis[..., None], -1)[..., 0]
  best = (-1 - axis).astype(np.int64)
  num_objects = len(scene.labels)
  cover = np.zeros((num_objects + 1, height, width), bool)  # Last row: unlabelled clutter.
  prims = [('box', b[0], b[1], b[3]) for b in scene.boxes]
  prims += [('cyl', c, None, c[6]) for c in scene.cylinders]
  for i, (kind, a, b, obj) in enumerate(prims):
    if kind == 'box':
      corners = np.array(
        [[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])]
      )
    else:
      cx, cy, r, z0, z1 = a[:5]
      corners = np.array(
        [[x, y, z] for x in (cx - r, cx + r) for y in (cy - r, cy + r) for z in (z0, z1)]
      )
    y0, y1, x0, x1 = _pixel_rect(corners, pos, rot, focal, height, width)
    if y1 <= y0 or x1 <= x0:
      continue
    d, iv = dirs[y0:y1, x0:x1], inv[y0:y1, x0:x1]
    if kind == 'box':
      tnear = np.full(d.shape[:2], -np.inf, np.float32)
      tfar = np.full(d.shape[:2], np.inf, np.float32)
      for ax in range(3):
        t1 = (np.float32(a[ax]) - o[ax]) * iv[..., ax]
        t2 = (np.float32(b[ax]) - o[ax]) * iv[..., ax]
        np.maximum(tnear, np.minimum(t1, t2), out=tnear)
        np.minimum(tfar, np.maximum(t1, t2), out=tfar)
      hit = (tnear <= tfar) & (tnear > _EPS)
      t = tnear
    else:
      dx, dy, dz = d[..., 0], d[..., 1], safe[y0:y1, x0:x1, 2]
      ox, oy = np.float32(o[0] - cx), np.float32(o[1] - cy)
      qa = np.maximum(dx * dx + dy * dy, 1e-12)
      qb = 2 * (dx * ox + dy * oy)
      qc = ox * ox + oy * oy - r * r
      disc = qb * qb - 4 * qa * qc
      ts = (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa)
      zs = o[2] + ts * dz
      t = np.where((disc > 0) & (ts > _EPS) & (zs >= z0) & (zs <= z1), ts, np.inf)
      for zc in (z0, z1):
        tc = (np.float32(zc) - o[2]) / dz
        px, py = ox + tc * dx, oy + tc * dy
        t = np.where((tc > _EPS) & (px * px + py * py <= r * r) & (tc < t), tc, t)
      hit = np.isfinite(t)
    cover[obj, y0:y1, x0:x1] |= hit
    sub_t, sub_p = best_t[y0:y1, x0:x1], best[y0:y1, x0:x1]
    closer = hit & (t < sub_t)
    sub_t[closer] = t[closer]
    sub_p[closer] = i
  return {
    't': best_t.reshape(-1),
    'prim': best.reshape(-1),
    'unoccluded': cover[:num_objects].reshape(num_objects, height * width).sum(1),
  }


def _surface(
  origin: np.ndarray, dirs: np.ndarray, trace: dict[str, np.ndarray], scene: Scene
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """World hit points, world normals, materials, face axes and texture coordinates."""
  t, prim = trace['t'], trace['prim']
  p = origin.astype(np.float32)[None] + t[:, None] * dirs
  n = len(t)
  normal = np.zeros((n, 3), np.float32)
  material = np.zeros(n, np.int64)
  # Room faces.
  room = prim < 0
  axis = np.where(room, -1 - prim, 0)
  rr = np.nonzero(room)[0]
  sgn = -np.sign(dirs[rr, axis[rr]])
  normal[rr, axis[rr]] = sgn
  material[rr] = np.where(axis[rr] == 2, np.where(sgn > 0, 0, 2), 1)
  nb = len(scene.boxes)
  bi = np.nonzero((prim >= 0) & (prim < nb))[0]
  if len(bi):
    lo = np.stack([b[0] for b in scene.boxes])[prim[bi]]
    hi = np.stack([b[1] for b in scene.boxes])[prim[bi]]
    dist = np.abs(np.concatenate([p[bi] - lo, hi - p[bi]], axis=1))
    face = np.argmin(dist, axis=1)
    axis[bi] = face % 3
    normal[bi, face % 3] = np.where(face >= 3, 1.0, -1.0)
    material[bi] = np.array([b[2] for b in scene.boxes])[prim[bi]]
  ci = np.nonzero(prim >= nb)[0]
  if len(ci):
    cyl = np.array([c[:6] for c in scene.cylinders])[prim[ci] - nb]
    cx, cy, r, z0, z1, m = cyl.T
    material[ci] = m.astype(np.int64)
    top, bot = np.abs(p[ci, 2] - z1) < 1e-3, np.abs(p[ci, 2] - z0) < 1e-3
    radial = np.stack([(p[ci, 0] - cx) / r, (p[ci, 1] - cy) / r, np.zeros_like(r)], 1)
    cap = np.stack([np.zeros_like(r), np.zeros_like(r), np.where(top, 1.0, -1.0)], 1)
    normal[ci] = np.where((top | bot)[:, None], cap, radial)
    axis[ci] = np.where(top | bot, 2, 0)
  # Texture coordinates: the two world axes spanning the face (vertical faces: along, up).
  tu = np.where(axis == 2, 0, 1 - axis)
  tv = np.where(axis == 2, 1, 2)
  u = np.take_along_axis(p, tu[:, None], 1)[:, 0]
  v = np.take_along_axis(p, tv[:, None], 1)[:, 0]
  if len(ci):
    ang = np.arctan2(p[ci, 1] - cyl[:, 1], p[ci, 0] - cyl[:, 0])
    u[ci] = np.where(axis[ci] == 0, ang * cyl[:, 2], u[ci])
  return p, normal, material, axis, np.stack([u, v], 1)


def _face_fraction(
  p: np.ndarray, axis: np.ndarray, prim: np.ndarray, scene: Scene
) -> tuple[np.ndarray, np.ndarray]:
  """Hit position within its box face as fractions in [0, 1] (u along, v up or across)."""
  fu = np.zeros(len(p), np.float32)
  fv = np.zeros(len(p), np.float32)
  nb = len(scene.boxes)
  sel = np.nonzero((prim >= 0) & (prim < nb))[0]
  if len(sel):
    lo = np.stack([b[0] for b in scene.boxes])[prim[sel]]
    hi = np.stack([b[1] for b in scene.boxes])[prim[sel]]
    frac = (p[sel] - lo) / np.maximum(hi - lo, 1e-6)
    a = axis[sel]
    tu = np.where(a == 2, 0, 1 - a)
    tv = np.where(a == 2, 1, 2)
    fu[sel] = np.take_along_axis(frac, tu[:, None], 1)[:, 0]
    fv[sel] = np.take_along_axis(frac, tv[:, None], 1)[:, 0]
  return fu, fv


def _albedo(
  p: np.ndarray,
  normal: np.ndarray,
  material: np.ndarray,
  axis: np.ndarray,
  uv: np.ndarray,
  prim: np.ndarray,
  scene: Scene,
  seed: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel albedo and an emissive flag from the material patterns."""
  mats = scene.materials
  c1 = np.array([m.color for m in mats], np.float32)[material]
  c2 = np.array([m.color2 for m in mats], np.float32)[material]
  pattern = np.array([m.pattern for m in mats])[material]
  scale = np.array([m.scale for m in mats], np.float32)[material]
  mseed = material + seed * 1000
  u, v = uv[:, 0], uv[:, 1]
  out = c1 * (0.9 + 0.2 * _value_noise(u * 2.0, v * 2.0, mseed))[:, None]
  for pat in (WOOD, FABRIC, TILES, BOOKS, FRAMED, TUB):
    sel = np.nonzero(pattern == pat)[0]
    if not len(sel):
      continue
    su, sv, s = u[sel], v[sel], np.maximum(scale[sel], 1e-3)
    a, b = c1[sel], c2[sel]
    ms = mseed[sel]
    if pat == WOOD:
      warp = _value_noise(su * 3, sv * 0.7, ms) * 3
      w = 0.5 + 0.5 * np.sin((su + sv * 0.1) / s * 2 * np.pi + warp)
      col = a * (1 - w[:, None]) + b * w[:, None]
    elif pat == FABRIC:
      fine = _hash(np.floor(su / s * 2).astype(np.int64), np.floor(sv / s * 2).astype(np.int64), ms)
      w = 0.7 + 0.3 * _value_noise(su / s * 0.2, sv / s * 0.2, ms)
      col = (a * w[:, None] + (b - a) * 0.3 * fine[:, None]) * (0.9 + 0.15 * fine[:, None])
    elif pat == TILES:
      fu, fv = su / s - np.floor(su / s), sv / s - np.floor(sv / s)
      grout = (fu < 0.05) | (fv < 0.05)
      tint = 0.9 + 0.15 * _hash(
        np.floor(su / s).astype(np.int64), np.floor(sv / s).astype(np.int64), ms
      )
      col = np.where(grout[:, None], b, a * tint[:, None])
    else:
      m_axis = np.array([m.front[0] for m in mats])[material[sel]]
      m_sign = np.array([m.front[1] for m in mats])[material[sel]]
      on_front = (axis[sel] == m_axis) & (np.sign(normal[sel, np.maximum(m_axis, 0)]) == m_sign)
      fu, fv = _face_fraction(p[sel], axis[sel], prim[sel], scene)
      if pat == BOOKS:
        shelf = sv / s - np.floor(sv / s)
        book = np.floor(su / 0.045).astype(np.int64) + 997 * np.floor(sv / s).astype(np.int64)
        h = _hash(book, book * 7 + 3, ms)
        book_col = np.stack([_hash(book, ms * 0 + k, ms) for k in range(3)], 1) * 0.8 + 0.1
        inside = (fu > 0.04) & (fu < 0.96) & (fv > 0.02) & (fv < 0.98)
        is_book = inside & (shelf > 0.08) & (shelf < 0.55 + 0.4 * h)
        dark = inside & (shelf > 0.08)
        col = np.where(is_book[:, None], book_col, np.where(dark[:, None], a * 0.25, a))
        col = np.where(on_front[:, None], col, a)
      elif pat == FRAMED:
        border = (fu < 0.07) | (fu > 0.93) | (fv < 0.07) | (fv > 0.93)
        cells = np.stack(
          [_hash(np.floor(fu * 3).astype(np.int64), np.floor(fv * 3).astype(np.int64), ms + k) for k in range(3)], 1
        )  # fmt: skip
        grad = _value_noise(fu * 4, fv * 4, ms)[:, None]
        content = a * 0.4 + cells * 0.4 + grad * 0.2
        col = np.where((border | ~on_front)[:, None], b, content)
      else:  # TUB: a rim and a recessed inner colour on the top face.
        inner = (fu > 0.09) & (fu < 0.91) & (fv > 0.12) & (fv < 0.88) & on_front
        col = np.where(inner[:, None], b, a)
    out[sel] = col * (0.92 + 0.16 * _value_noise(su * 4, sv * 4, ms + 7))[:, None]
  return np.clip(out, 0, 1), pattern == EMISSIVE


def render_scene(
  rng: np.random.Generator,
  height: int,
  width: int,
  scene_type: int | None = None,
  style: RenderStyle | None = None,
) -> dict[str, np.ndarray]:
  """Renders one random room.

  Args:
    rng: the only source of randomness (so a seed fixes the example).
    height: image height in pixels.
    width: image width in pixels.
    scene_type: index into `SCENES`; drawn uniformly when None.
    style: the look (`STYLES`); None is the target style.

  Returns:
    A dict with `image` uint8 `[H, W, 3]`, `depth` float32 `[H, W]` (metres, camera z),
    `normals` float32 `[H, W, 3]` (camera frame, unit), `normals_mask` bool `[H, W]`,
    `instances` int32 `[H, W]` (object index or -1), `scene` int, `boxes` float32
    `[M, 4]` normalised `[ymin, xmin, ymax, xmax]`, `labels` int64 `[M]` (index into
    `CLASSES`), `box_instances` int32 `[M]` (the instance id of each box).
  """
  style = STYLES['target'] if style is None else style
  if scene_type is None:
    scene_type = int(rng.integers(len(SCENES)))
  for attempt in range(8):
    scene = furnish(rng, SCENES[scene_type], dict(style.presence))
    pos, rot = _camera(rng, scene, style)
    if pos is None:
      # No free spot at a sensible distance: stand in the middle, look along x.
      pos = np.array([*(scene.size[:2] / 2), 1.4])
      rot = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    out = _render(rng, scene, pos, rot, height, width, style)
    # Re-draw the few views that show no labelled object at all (empty rooms teach little).
    if len(out['labels']) or attempt == 7:
      break
  out['scene'] = scene_type
  return out


def _render(
  rng: np.random.Generator,
  scene: Scene,
  pos: np.ndarray,
  rot: np.ndarray,
  height: int,
  width: int,
  style: RenderStyle | None = None,
) -> dict[str, Any]:
  """Ray-casts, shades and labels one view (`style` None: the target style)."""
  style = STYLES['target'] if style is None else style
  focal = style.focal * width  # About 63 degrees of horizontal field of view, like Kinect.
  ys, xs = np.meshgrid(
    np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing='ij'
  )
  cam = np.stack(
    [(xs + 0.5 - width / 2) / focal, (ys + 0.5 - height / 2) / focal, np.ones_like(xs)], -1
  ).reshape(-1, 3)
  dirs = cam @ rot.T.astype(np.float32)
  tr = _trace(pos, dirs.reshape(height, width, 3), rot, focal, scene)
  p, normal, material, axis, uv = _surface(pos, dirs, tr, scene)
  if style.texture_frequency != 1.0:  # Skipped at 1 so the target renders stay bit-exact.
    uv = uv * np.float32(style.texture_frequency)
  albedo, emissive = _albedo(
    p, normal, material, axis, uv, tr['prim'], scene, int(rng.integers(1 << 20))
  )
  if style.saturation != 1.0:
    grey = albedo.mean(axis=1, keepdims=True)
    albedo = np.clip(grey + np.float32(style.saturation) * (albedo - grey), 0, 1)
  # Shading: a ceiling light with fall-off, a weak fill from the camera, ambient.
  light = np.array([*(rng.uniform(0.3, 0.7, 2) * scene.size[:2]), scene.size[2] - 0.1], np.float32)
  to_l = light - p
  dist2 = (to_l * to_l).sum(1)
  lambert = np.maximum((normal * to_l).sum(1) / np.sqrt(dist2 + 1e-9), 0)
  dn = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
  fill = np.maximum(-(normal * dn).sum(1), 0)
  shade = rng.uniform(*style.ambient) + rng.uniform(*style.direct) * lambert / (1 + 0.06 * dist2)
  shade = shade + style.fill * fill
  tint = rng.uniform(*style.tint, 3)
  rgb = albedo * shade[:, None] * tint
  rgb = np.where(emissive[:, None], albedo, rgb)
  noise = rng.standard_normal((height, width, 3), np.float32) * rng.uniform(0.01, 0.03)
  rgb = rgb.reshape(height, width, 3) + noise
  image = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)

  # Labels: tight boxes of visible pixels; drop tiny and heavily occluded instances.
  obj_of_prim = np.array(
    [b[3] for b in scene.boxes] + [c[6] for c in scene.cylinders] or [0], np.int64
  )
  prim = tr['prim']
  inst = np.where(prim >= 0, obj_of_prim[np.maximum(prim, 0)], -1).reshape(height, width)
  boxes, labels, ids = [], [], []
  for obj, label in enumerate(scene.labels):
    unoccluded = tr['unoccluded'][obj]
    mask = inst == obj
    visible = mask.sum()
    if visible == 0 or visible < MIN_VISIBLE_FRACTION * unoccluded:
      continue
    if visible < MIN_AREA * height * width:
      continue
    rows = np.nonzero(mask.any(1))[0]
    cls = np.nonzero(mask.any(0))[0]
    box = np.array(
      [rows[0] / height, cls[0] / width, (rows[-1] + 1) / height, (cls[-1] + 1) / width],
      np.float32,
    )
    if box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
      continue
    boxes.append(box)
    labels.append(label)
    ids.append(obj)
  normals_cam = (normal @ rot).astype(np.float32).reshape(height, width, 3)
  return {
    'image': image,
    'depth': tr['t'].reshape(height, width).astype(np.float32),
    'normals': normals_cam,
    'normals_mask': np.ones((height, width), bool),
    'instances': inst.astype(np.int32),
    'boxes': np.array(boxes, np.float32).reshape(-1, 4),
    'labels': np.array(labels, np.int64),
    'box_instances': np.array(ids, np.int32),
  }
