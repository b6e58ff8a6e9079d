"""Procedural indoor rooms for the built-in synthetic benchmark: what is where.

`furnish(rng, scene_name)` lays out a room of one of `SCENES` and furnishes it with
objects of `CLASSES` whose presence and count depend on the scene type
(`SCENE_OBJECTS`), as axis-aligned boxes and vertical cylinders with materials.
`rooms_render` then picks a camera and ray-casts the result.

World frame: x east, y north, z up (metres); the room is `[0, Lx] x [0, Ly] x [0, Hc]`.

Design of the benchmark (fair, documented, not tuned to any model):
- the scene type changes which objects appear (e.g. toilets only in bathrooms, monitors
  mostly in offices) and the floor/wall materials, so it is informative but a room does
  not determine its objects;
- geometry helps tell some classes apart: `picture` and `monitor` draw their appearance
  from the same distribution (a framed rectangle with random content), but pictures hang
  flush on walls while monitors stand on tables and stick out of the wall plane;
  `bathtub`, `sink` and `toilet` share white ceramic materials and differ by shape and
  absolute size (which depth gives);
- objects are reasonably large (chairs and lamps are the smallest), there are at most a
  handful per image, and heavily occluded (< 30 % visible) or tiny (< 0.3 % of the
  image, or < 4 % of a side) instances are dropped from the labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

CLASSES = (
  'bathtub', 'bed', 'bookshelf', 'chair', 'lamp', 'monitor', 'picture', 'sink', 'sofa',
  'table', 'toilet',
)  # fmt: skip
SCENES = ('bathroom', 'bedroom', 'kitchen', 'living_room', 'office')

# Per scene: (class, probability of being present, min count, max count). Order matters:
# tables come before what stands on them or around them.
SCENE_OBJECTS: dict[str, tuple[tuple[str, float, int, int], ...]] = {
  'bathroom': (
    ('bathtub', 0.7, 1, 1), ('toilet', 0.9, 1, 1), ('sink', 0.9, 1, 2),
    ('picture', 0.3, 1, 1), ('lamp', 0.1, 1, 1),
  ),
  'bedroom': (
    ('bed', 0.95, 1, 1), ('table', 0.35, 1, 1), ('lamp', 0.7, 1, 2), ('chair', 0.3, 1, 1),
    ('picture', 0.6, 1, 2), ('bookshelf', 0.3, 1, 1), ('sofa', 0.1, 1, 1),
    ('monitor', 0.1, 1, 1),
  ),
  'kitchen': (
    ('table', 0.9, 1, 1), ('chair', 0.9, 1, 4), ('sink', 0.85, 1, 1), ('lamp', 0.2, 1, 1),
    ('picture', 0.35, 1, 1), ('bookshelf', 0.1, 1, 1),
  ),
  'living_room': (
    ('sofa', 0.95, 1, 2), ('table', 0.7, 1, 1), ('monitor', 0.25, 1, 1), ('lamp', 0.6, 1, 2),
    ('picture', 0.6, 1, 2), ('bookshelf', 0.5, 1, 1), ('chair', 0.4, 1, 2), ('bed', 0.03, 1, 1),
  ),
  'office': (
    ('table', 0.95, 1, 2), ('monitor', 0.9, 1, 2), ('chair', 0.9, 1, 2),
    ('bookshelf', 0.7, 1, 2), ('lamp', 0.3, 1, 1), ('picture', 0.3, 1, 1), ('sofa', 0.1, 1, 1),
  ),
}  # fmt: skip

# Texture patterns.
PLAIN, WOOD, FABRIC, TILES, BOOKS, FRAMED, TUB, EMISSIVE = range(8)

_WHITES = ((0.93, 0.93, 0.92), (0.88, 0.9, 0.92), (0.95, 0.94, 0.9))
_FRAMES = (
  (0.08, 0.08, 0.08),
  (0.2, 0.2, 0.22),
  (0.92, 0.92, 0.9),
  (0.5, 0.33, 0.18),
  (0.7, 0.58, 0.25),
)
_WOODS = ((0.55, 0.38, 0.22), (0.7, 0.52, 0.32), (0.35, 0.22, 0.12), (0.8, 0.68, 0.5))


@dataclasses.dataclass
class Material:
  color: np.ndarray
  color2: np.ndarray
  pattern: int
  scale: float = 0.1
  front: tuple[int, int] = (-1, 0)  # (world axis, sign) of the face carrying content.


@dataclasses.dataclass
class Scene:
  """Primitives in world coordinates, accumulated while furnishing a room."""

  size: np.ndarray  # (Lx, Ly, Hc).
  boxes: list = dataclasses.field(default_factory=list)  # (lo, hi, material, object).
  cylinders: list = dataclasses.field(default_factory=list)  # (cx, cy, r, z0, z1, mat, obj).
  materials: list = dataclasses.field(default_factory=list)
  labels: list = dataclasses.field(default_factory=list)  # Class index per object.
  footprints: list = dataclasses.field(default_factory=list)  # (x0, y0, x1, y1).
  wall_items: list = dataclasses.field(default_factory=list)  # (wall, s0, s1, z0, z1).
  tables: list = dataclasses.field(default_factory=list)  # (origin, k, w, d, h, used).

  def material(self, m: Material) -> int:
    self.materials.append(m)
    return len(self.materials) - 1


def _rotate(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Rotates local `(x, y)` by `k * 90` degrees counter-clockwise."""
  for _ in range(k % 4):
    x, y = -y, x
  return x, y


def _front(k: int) -> tuple[int, int]:
  """World (axis, sign) of the local +y direction after a `k * 90` degree rotation."""
  return ((1, 1), (0, -1), (1, -1), (0, 1))[k % 4]


def _add_parts(scene: Scene, parts: list, origin: np.ndarray, k: int, obj: int) -> None:
  """Adds local parts `('box', x0, x1, y0, y1, z0, z1, mat)` / `('cyl', x, y, r, z0, z1, mat)`."""
  for part in parts:
    if part[0] == 'box':
      _, x0, x1, y0, y1, z0, z1, mat = part
      xs, ys = _rotate(np.array([x0, x1]), np.array([y0, y1]), k)
      lo = np.array([xs.min() + origin[0], ys.min() + origin[1], z0])
      hi = np.array([xs.max() + origin[0], ys.max() + origin[1], z1])
      scene.boxes.append((lo, hi, mat, obj))
    else:
      _, x, y, r, z0, z1, mat = part
      cx, cy = _rotate(np.array(x), np.array(y), k)
      scene.cylinders.append((float(cx) + origin[0], float(cy) + origin[1], r, z0, z1, mat, obj))


def _footprint(origin: np.ndarray, k: int, w: float, d: float) -> tuple[float, ...]:
  xs, ys = _rotate(np.array([-w / 2, w / 2]), np.array([0.0, d]), k)
  return (xs.min() + origin[0], ys.min() + origin[1], xs.max() + origin[0], ys.max() + origin[1])


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], margin: float = 0.05) -> bool:
  return not (
    a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
  )


def _wall_origin(size: np.ndarray, wall: int, s: float) -> np.ndarray:
  """Point on `wall` (0: y = 0, 1: x = Lx, 2: y = Ly, 3: x = 0) at along-wall position s."""
  return np.array([(s, 0.0), (size[0], s), (s, size[1]), (0.0, s)][wall])


def _wall_length(size: np.ndarray, wall: int) -> float:
  return float(size[0] if wall in (0, 2) else size[1])


def _color(rng: np.random.Generator, base: Any, jitter: float = 0.06) -> np.ndarray:
  return np.clip(np.asarray(base, np.float32) + rng.normal(0, jitter, 3), 0.02, 0.98)


def _fabric(rng: np.random.Generator) -> Material:
  hue = rng.uniform(0.1, 0.8, 3)
  return Material(_color(rng, hue, 0.0), _color(rng, hue * 0.8), FABRIC, 0.03)


def _wood(rng: np.random.Generator) -> Material:
  c = _color(rng, _WOODS[rng.integers(len(_WOODS))])
  return Material(c, c * 0.75, WOOD, rng.uniform(0.04, 0.1))


def _ceramic(rng: np.random.Generator) -> Material:
  return Material(_color(rng, _WHITES[rng.integers(3)], 0.02), np.zeros(3), PLAIN, 0.5)


def _framed(rng: np.random.Generator, k: int) -> Material:
  # Shared by pictures and monitors on purpose: only context and geometry separate them.
  frame = _color(rng, _FRAMES[rng.integers(len(_FRAMES))], 0.03)
  return Material(rng.uniform(0.05, 0.95, 3).astype(np.float32), frame, FRAMED, 0.0, _front(k))


def _object_parts(
  rng: np.random.Generator, scene: Scene, name: str, k: int
) -> tuple[list, float, float]:
  """Local parts of one object (front towards local +y, back at y = 0), width and depth."""
  mat = scene.material
  if name == 'bed':
    w, d, h = rng.uniform(1.3, 1.9), rng.uniform(1.95, 2.2), rng.uniform(0.45, 0.6)
    wood, fab = mat(_wood(rng)), mat(_fabric(rng))
    pillow = mat(Material(_color(rng, _WHITES[0], 0.05), np.zeros(3), FABRIC, 0.02))
    hb = rng.uniform(0.9, 1.25)
    return (
      [
        ('box', -w / 2, w / 2, 0.0, 0.07, 0.0, hb, wood),
        ('box', -w / 2, w / 2, 0.07, d, 0.0, h, fab),
        ('box', -w / 2 + 0.1, w / 2 - 0.1, 0.1, 0.5, h, h + 0.12, pillow),
      ],
      w,
      d,
    )
  if name == 'sofa':
    w, d = rng.uniform(1.5, 2.3), rng.uniform(0.8, 1.0)
    fab = mat(_fabric(rng))
    return (
      [
        ('box', -w / 2, w / 2, 0.0, d, 0.0, 0.42, fab),
        ('box', -w / 2, w / 2, 0.0, 0.22, 0.42, 0.85, fab),
        ('box', -w / 2, -w / 2 + 0.2, 0.22, d, 0.42, 0.62, fab),
        ('box', w / 2 - 0.2, w / 2, 0.22, d, 0.42, 0.62, fab),
      ],
      w,
      d,
    )
  if name == 'chair':
    w, d, s = rng.uniform(0.42, 0.52), rng.uniform(0.44, 0.52), rng.uniform(0.42, 0.48)
    m = mat(_wood(rng) if rng.random() < 0.6 else _fabric(rng))
    legs = [
      ('box', x, x + 0.04, y, y + 0.04, 0.0, s, m)
      for x in (-w / 2, w / 2 - 0.04)
      for y in (0.0, d - 0.04)
    ]
    back = ('box', -w / 2, w / 2, 0.0, 0.05, s + 0.05, s + rng.uniform(0.4, 0.5), m)
    return legs + [('box', -w / 2, w / 2, 0.0, d, s, s + 0.05, m), back], w, d
  if name == 'table':
    w, d, h = rng.uniform(0.9, 1.6), rng.uniform(0.65, 0.9), rng.uniform(0.72, 0.77)
    m = mat(_wood(rng) if rng.random() < 0.8 else _ceramic(rng))
    legs = [
      ('box', x, x + 0.06, y, y + 0.06, 0.0, h - 0.04, m)
      for x in (-w / 2 + 0.03, w / 2 - 0.09)
      for y in (0.03, d - 0.09)
    ]
    return legs + [('box', -w / 2, w / 2, 0.0, d, h - 0.04, h, m)], w, d
  if name == 'bookshelf':
    w, d, h = rng.uniform(0.7, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.5, 2.0)
    wood = _wood(rng)
    m = mat(Material(wood.color, wood.color2, BOOKS, rng.uniform(0.3, 0.4), _front(k)))
    return [('box', -w / 2, w / 2, 0.0, d, 0.0, h, m)], w, d
  if name == 'lamp':
    hp, rs = rng.uniform(1.3, 1.6), rng.uniform(0.16, 0.24)
    metal = mat(Material(_color(rng, (0.25, 0.25, 0.27)), np.zeros(3), PLAIN, 0.5))
    shade = mat(Material(_color(rng, (0.98, 0.92, 0.75), 0.03), np.zeros(3), EMISSIVE))
    y = 0.25
    return (
      [
        ('cyl', 0.0, y, 0.15, 0.0, 0.03, metal),
        ('cyl', 0.0, y, 0.018, 0.03, hp, metal),
        ('cyl', 0.0, y, rs, hp, hp + rng.uniform(0.25, 0.35), shade),
      ],
      0.5,
      0.5,
    )
  if name == 'sink':
    w, d = rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.55)
    cab = mat(_wood(rng) if rng.random() < 0.5 else _ceramic(rng))
    basin = mat(Material(_color(rng, _WHITES[0], 0.02), np.full(3, 0.55), TUB, 0.0, (2, 1)))
    metal = mat(Material(np.full(3, 0.6, np.float32), np.zeros(3), PLAIN, 0.5))
    return (
      [
        ('box', -w / 2, w / 2, 0.0, d, 0.0, 0.8, cab),
        ('box', -w / 2 + 0.04, w / 2 - 0.04, 0.04, d - 0.02, 0.8, 0.9, basin),
        ('cyl', 0.0, 0.08, 0.02, 0.9, 1.08, metal),
      ],
      w,
      d,
    )
  if name == 'toilet':
    white = mat(_ceramic(rng))
    r = rng.uniform(0.17, 0.21)
    return (
      [
        ('box', -0.2, 0.2, 0.0, 0.2, 0.38, rng.uniform(0.72, 0.8), white),
        ('box', -0.12, 0.12, 0.12, 0.35, 0.0, 0.38, white),
        ('cyl', 0.0, 0.22 + r, r, 0.0, 0.41, white),
      ],
      0.42,
      0.22 + 2 * r,
    )
  if name == 'bathtub':
    w, d, h = rng.uniform(1.5, 1.8), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
    inner = _color(rng, (0.62, 0.72, 0.78), 0.05)
    m = mat(Material(_color(rng, _WHITES[rng.integers(3)], 0.02), inner, TUB, 0.0, (2, 1)))
    return [('box', -w / 2, w / 2, 0.0, d, 0.0, h, m)], w, d
  raise ValueError(f'Unknown object class {name!r}.')


def _place_on_table(rng: np.random.Generator, scene: Scene, name: str, obj: int) -> bool:
  """Stands a monitor or a small lamp on a free spot at the back of a table."""
  free = [t for t in scene.tables if t[5] < 2]
  if not free:
    return False
  t = free[rng.integers(len(free))]
  origin, k, tw, td, th, used = t
  t[5] = used + 1
  slot = (-0.25 if used == 0 else 0.25) * tw
  mat = scene.material
  if name == 'monitor':
    big = rng.random() < 0.3  # TV-sized.
    w = rng.uniform(0.8, 1.2) if big else rng.uniform(0.45, 0.65)
    w = min(w, tw * 0.9)
    hs = w * rng.uniform(0.55, 0.65)
    stand = mat(Material(_color(rng, (0.15, 0.15, 0.16), 0.03), np.zeros(3), PLAIN, 0.5))
    screen = mat(_framed(rng, k))
    lift = rng.uniform(0.08, 0.16)
    slot = float(np.clip(slot, -tw / 2 + w / 2, tw / 2 - w / 2))
    parts = [
      ('box', slot - 0.12, slot + 0.12, 0.05, 0.25, th, th + 0.02, stand),
      ('box', slot - 0.03, slot + 0.03, 0.1, 0.14, th + 0.02, th + lift, stand),
      ('box', slot - w / 2, slot + w / 2, 0.14, 0.18, th + lift, th + lift + hs, screen),
    ]
  else:
    metal = mat(Material(_color(rng, (0.3, 0.3, 0.32)), np.zeros(3), PLAIN, 0.5))
    shade = mat(Material(_color(rng, (0.98, 0.92, 0.75), 0.03), np.zeros(3), EMISSIVE))
    hp = th + rng.uniform(0.3, 0.4)
    parts = [
      ('cyl', slot, 0.2, 0.08, th, th + 0.02, metal),
      ('cyl', slot, 0.2, 0.012, th + 0.02, hp, metal),
      ('cyl', slot, 0.2, 0.13, hp, hp + 0.2, shade),
    ]
  _add_parts(scene, parts, origin, k, obj)
  return True


def _place_on_wall(
  rng: np.random.Generator, scene: Scene, parts_fn: Any, w: float, z0: float, z1: float, obj: int
) -> bool:
  """Hangs a flat item (picture, window, door) on a wall where no other wall item is."""
  for _ in range(20):
    wall = int(rng.integers(4))
    length = _wall_length(scene.size, wall)
    if length < w + 0.4:
      continue
    s = rng.uniform(0.2 + w / 2, length - 0.2 - w / 2)
    item = (wall, s - w / 2, s + w / 2, z0, z1)
    clash = any(
      o[0] == wall and item[1] < o[2] + 0.05 and o[1] < item[2] + 0.05 and z0 < o[4] and o[3] < z1
      for o in scene.wall_items
    )
    if clash:
      continue
    k = (0, 1, 2, 3)[wall]
    _add_parts(scene, parts_fn(k), _wall_origin(scene.size, wall, s), k, obj)
    scene.wall_items.append(item)
    return True
  return False


def _place_floor(
  rng: np.random.Generator, scene: Scene, name: str, obj: int, against_wall: bool
) -> bool:
  """Places a floor-standing object against a wall or free in the room, without overlaps."""
  parts, w, d = _object_parts(rng, scene, name, 0)
  height = max(p[6] if p[0] == 'box' else p[5] for p in parts)
  for _ in range(30):
    if against_wall:
      wall = int(rng.integers(4))
      length = _wall_length(scene.size, wall)
      if length < w + 0.2:
        continue
      s = rng.uniform(0.05 + w / 2, length - 0.05 - w / 2)
      k, origin = wall, _wall_origin(scene.size, wall, s)
    else:
      k = int(rng.integers(4))
      centre = rng.uniform([0.8, 0.8], scene.size[:2] - 0.8)
      dx, dy = _rotate(np.array(0.0), np.array(d / 2), k)
      origin = centre - np.array([float(dx), float(dy)])
    fp = _footprint(origin, k, w, d)
    if fp[0] < 0 or fp[1] < 0 or fp[2] > scene.size[0] or fp[3] > scene.size[1]:
      continue
    if any(_overlaps(fp, o) for o in scene.footprints):
      continue
    if against_wall:
      item = (wall, s - w / 2, s + w / 2, 0.0, height)
      if any(
        o[0] == wall and item[1] < o[2] and o[1] < item[2] and o[3] < height
        for o in scene.wall_items
      ):
        continue
      scene.wall_items.append(item)
    for part in parts:
      # Textured fronts (book spines) face the room whatever rotation was finally drawn.
      m = scene.materials[part[-1]]
      if m.pattern == BOOKS:
        m.front = _front(k)
    _add_parts(scene, parts, origin, k, obj)
    scene.footprints.append(fp)
    if name == 'table':
      scene.tables.append([origin, k, w, d, height, 0])
    return True
  return False


def _place_chair(rng: np.random.Generator, scene: Scene, obj: int) -> bool:
  """Places a chair facing a table side when there is a table, else free."""
  if scene.tables and rng.random() < 0.85:
    parts, w, d = _object_parts(rng, scene, 'chair', 0)
    for _ in range(12):
      origin_t, kt, tw, td, _, _ = scene.tables[rng.integers(len(scene.tables))]
      side = int(rng.integers(4))
      gap = rng.uniform(0.05, 0.25)
      # Table-local point in front of one side, chair's +y towards the table.
      if side == 0:
        p, kc = (rng.uniform(-tw / 3, tw / 3), td + gap + d), 2
      elif side == 1:
        p, kc = (rng.uniform(-tw / 3, tw / 3), -gap - d), 0
      elif side == 2:
        p, kc = (tw / 2 + gap + d, td / 2), 1
      else:
        p, kc = (-tw / 2 - gap - d, td / 2), 3
      px, py = _rotate(np.array(p[0]), np.array(p[1]), kt)
      origin = origin_t + np.array([float(px), float(py)])
      k = (kc + kt) % 4
      fp = _footprint(origin, k, w, d)
      if fp[0] < 0 or fp[1] < 0 or fp[2] > scene.size[0] or fp[3] > scene.size[1]:
        continue
      if any(_overlaps(fp, o, 0.02) for o in scene.footprints):
        continue
      _add_parts(scene, parts, origin, k, obj)
      scene.footprints.append(fp)
      return True
  return _place_floor(rng, scene, 'chair', obj, against_wall=False)


def furnish(
  rng: np.random.Generator, scene_name: str, presence: Mapping[str, float] | None = None
) -> Scene:
  """Builds the room, its objects and some unlabelled clutter (door, window, rug).

  Args:
    rng: the only source of randomness.
    scene_name: one of `SCENES`.
    presence: optional per-class multipliers of the presence probabilities of
      `SCENE_OBJECTS` (capped at 1): another object mix. None or {} keeps the table.

  Returns:
    The furnished room.
  """
  size = np.array([rng.uniform(3.0, 5.5), rng.uniform(3.0, 5.5), rng.uniform(2.5, 3.0)])
  scene = Scene(size=size)
  mat = scene.material
  # Room materials (indices 0..2: floor, walls, ceiling) depend on the scene type.
  floor_kind = rng.choice(
    [WOOD, TILES, FABRIC],
    p={
      'bathroom': (0.1, 0.85, 0.05),
      'kitchen': (0.35, 0.6, 0.05),
      'office': (0.35, 0.15, 0.5),
    }.get(scene_name, (0.55, 0.15, 0.3)),
  )
  if floor_kind == WOOD:
    mat(_wood(rng))
  elif floor_kind == TILES:
    c = rng.uniform(0.3, 0.9, 3).astype(np.float32)
    mat(Material(c, c * 0.6, TILES, rng.uniform(0.2, 0.5)))
  else:
    mat(Material(*(_color(rng, rng.uniform(0.2, 0.6, 3), 0.0),) * 2, FABRIC, 0.02))
  wall = rng.uniform(0.55, 0.95, 3).astype(np.float32)
  if scene_name == 'bathroom' and rng.random() < 0.5:
    mat(Material(wall, wall * 0.8, TILES, rng.uniform(0.15, 0.3)))
  else:
    mat(Material(wall, wall, PLAIN, 1.0))
  mat(Material(np.full(3, 0.95, np.float32), np.zeros(3), PLAIN, 1.0))

  # Clutter first so furniture avoids the door.
  if rng.random() < 0.7:
    door = mat(_wood(rng) if rng.random() < 0.6 else _ceramic(rng))
    dw = rng.uniform(0.8, 0.95)
    if _place_on_wall(
      rng, scene, lambda k: [('box', -dw / 2, dw / 2, 0.0, 0.04, 0.0, 2.05, door)], dw, 0, 2.05, -1
    ):
      wall_i, s0, s1, _, _ = scene.wall_items[-1]
      o = _wall_origin(size, wall_i, (s0 + s1) / 2)
      scene.footprints.append(_footprint(o, wall_i, dw + 0.2, 0.8))
  if rng.random() < 0.6:
    glass = mat(Material(_color(rng, (0.75, 0.85, 0.95), 0.04), np.zeros(3), EMISSIVE))
    ww, z0 = rng.uniform(0.8, 1.4), rng.uniform(0.85, 1.1)
    _place_on_wall(
      rng, scene, lambda k: [('box', -ww / 2, ww / 2, 0.0, 0.03, z0, z0 + 1.1, glass)], ww, z0,
      z0 + 1.1, -1,
    )  # fmt: skip
  if rng.random() < 0.4:
    rug = mat(_fabric(rng))
    rw, rd = rng.uniform(1.0, 2.0), rng.uniform(0.8, 1.5)
    c = rng.uniform([1.0, 1.0], size[:2] - 1.0)
    scene.boxes.append((np.array([c[0] - rw / 2, c[1] - rd / 2, 0.0]),
                        np.array([c[0] + rw / 2, c[1] + rd / 2, 0.012]), rug, -1))  # fmt: skip

  for name, prob, lo, hi in SCENE_OBJECTS[scene_name]:
    if presence and name in presence:
      prob = min(1.0, prob * presence[name])
    if rng.random() >= prob:
      continue
    for _ in range(int(rng.integers(lo, hi + 1))):
      obj = len(scene.labels)
      label = CLASSES.index(name)
      if name == 'monitor':
        ok = _place_on_table(rng, scene, name, obj)
      elif name == 'lamp' and scene.tables and rng.random() < 0.4:
        ok = _place_on_table(rng, scene, name, obj)
      elif name == 'lamp':
        ok = _place_floor(rng, scene, name, obj, against_wall=True)
      elif name == 'picture':
        pw, ph = rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.8)
        zc = rng.uniform(1.3, 1.7)
        m = mat(_framed(rng, 0))
        k_holder = {}

        def picture(k, pw=pw, ph=ph, zc=zc, m=m, k_holder=k_holder):
          k_holder['k'] = k
          return [('box', -pw / 2, pw / 2, 0.0, 0.03, zc - ph / 2, zc + ph / 2, m)]

        ok = _place_on_wall(rng, scene, picture, pw, zc - ph / 2, zc + ph / 2, obj)
        if ok:
          scene.materials[m].front = _front(k_holder['k'])
      elif name == 'chair':
        ok = _place_chair(rng, scene, obj)
      else:
        against = name != 'table' or scene_name == 'office' or rng.random() < 0.3
        ok = _place_floor(rng, scene, name, obj, against_wall=against)
      if ok:
        scene.labels.append(label)
  return scene
