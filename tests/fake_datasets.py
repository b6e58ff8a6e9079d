"""Writers of tiny NYUv2, MLT and Cityscapes files in the datasets' exact original formats.

Each writer returns what it wrote (expected boxes, scenes, ...) so tests can
compare the builders' output against ground truth they did not compute.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import scipy.io
import tensorflow as tf

NYU_H, NYU_W = 480, 640
# Frame -> (sequence, sceneType); official train = frames 1..6, test = 7..8 (1-based).
NYU_SEQUENCES = (
  ('bedroom_0001', 'bedroom'),
  ('bedroom_0001', 'bedroom'),
  ('kitchen_0001', 'kitchen'),
  ('kitchen_0001', 'kitchen'),
  ('office_0001', 'office'),
  ('office_0002', 'office'),
  ('bathroom_0001', 'bathroom'),
  ('excercise_room_0001', 'excercise_room'),
)
NYU_TRAIN = (1, 2, 3, 4, 5, 6)
NYU_TEST = (7, 8)
# NYU `names` ids (1-based) used by the fake labels.
CHAIR, TABLE, WALL, LAMP = 5, 19, 21, 144
# REFERENCE section 5: the 19 classes' ids in NYU `names` (written independently of the builder).
NYU_CLASS_IDS = {
  'bathtub': 136, 'bed': 157, 'bookshelf': 88, 'box': 26, 'chair': 5, 'counter': 7,
  'desk': 36, 'door': 28, 'dresser': 169, 'garbage bin': 12, 'lamp': 144, 'monitor': 49,
  'night stand': 158, 'pillow': 119, 'sink': 24, 'sofa': 83, 'table': 19,
  'television': 172, 'toilet': 124,
}  # fmt: skip


def write_png(path: str, array: np.ndarray) -> None:
  """Writes `[H, W]` or `[H, W, C]` uint8/uint16 as an 8/16-bit PNG."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[..., None]
  tf.io.write_file(path, tf.io.encode_png(array))


def _matlab_strings(f: h5py.File, key: str, strings: list[str]) -> None:
  """A MATLAB cell column of strings: (1, n) references into `#refs#` uint16 arrays."""
  refs_group = f.require_group('#refs#')
  refs = np.empty((1, len(strings)), dtype=h5py.ref_dtype)
  for k, s in enumerate(strings):
    name = f'{key}_{k}'
    if s:
      ds = refs_group.create_dataset(name, data=np.array([[ord(c)] for c in s], np.uint16))
      ds.attrs['MATLAB_class'] = np.bytes_('char')
    else:  # MATLAB's empty char array.
      ds = refs_group.create_dataset(name, data=np.zeros(2, np.uint64))
      ds.attrs['MATLAB_class'] = np.bytes_('char')
      ds.attrs['MATLAB_empty'] = np.uint8(1)
    refs[0, k] = ds.ref
  f.create_dataset(key, data=refs).attrs['MATLAB_class'] = np.bytes_('cell')


def _nyu_frame(i: int) -> dict:
  """Labels, instances and the expected objects of 0-based frame `i`."""
  labels = np.zeros((NYU_H, NYU_W), np.uint16)
  instances = np.zeros((NYU_H, NYU_W), np.uint8)
  labels[:, :] = WALL  # A non-detection class everywhere else: must give no box.
  instances[:, :] = 1
  objects = []  # (class name, [ymin, xmin, ymax, xmax] pixels, inclusive max).
  # Two chairs (instances 1 and 2 of one class).
  labels[100:150, 200:260], instances[100:150, 200:260] = CHAIR, 1
  objects.append(('chair', (100, 200, 149, 259)))
  labels[300 + i : 340, 50:90], instances[300 + i : 340, 50:90] = CHAIR, 2
  objects.append(('chair', (300 + i, 50, 339, 89)))
  # A table whose pixels are two separate blobs: one box around both.
  labels[10:20, 10:30], instances[10:20, 10:30] = TABLE, 1
  labels[400:470, 500:630], instances[400:470, 500:630] = TABLE, 1
  objects.append(('table', (10, 10, 469, 629)))
  if i % 2 == 0:  # A one-pixel lamp on the last row and column.
    labels[479, 639], instances[479, 639] = LAMP, 3
    objects.append(('lamp', (479, 639, 479, 639)))
  return dict(labels=labels, instances=instances, objects=objects)


def nyu_depth(i: int) -> np.ndarray:
  """A tilted plane seen by the NYU camera: z = 2 + 0.002 * row + 0.001 * i * col."""
  v, u = np.mgrid[0:NYU_H, 0:NYU_W]
  return (2.0 + 0.002 * v + 0.001 * i * u).astype(np.float32)


def write_nyu(root: str, *, normals: bool = False) -> dict:
  """Writes `nyu_depth_v2_labeled.mat`, `splits.mat` and optionally `normals_gt/`.

  Args:
    root: the manual dir.
    normals: also write Eigen-style 8-bit normals and masks.

  Returns:
    `dict(objects=[per-frame list], scene_types, sequences, images, depths, normals)`.
  """
  os.makedirs(root, exist_ok=True)
  n = len(NYU_SEQUENCES)
  rng = np.random.default_rng(0)
  images, depths, frames = [], [], []
  mat_path = os.path.join(root, 'nyu_depth_v2_labeled.mat')
  # MATLAB v7.3 files are HDF5 with a 512-byte user block holding the text header.
  with h5py.File(mat_path, 'w', userblock_size=512) as f:
    d_img = f.create_dataset('images', (n, 3, NYU_W, NYU_H), np.uint8)
    d_dep = f.create_dataset('depths', (n, NYU_W, NYU_H), np.float32)
    d_raw = f.create_dataset('rawDepths', (n, NYU_W, NYU_H), np.float32)
    d_lab = f.create_dataset('labels', (n, NYU_W, NYU_H), np.uint16)
    d_ins = f.create_dataset('instances', (n, NYU_W, NYU_H), np.uint8)
    for i in range(n):
      image = rng.integers(0, 256, (NYU_H, NYU_W, 3), np.uint8)
      depth = nyu_depth(i)
      raw = depth.copy()
      raw[200:210, 300:310] = 0  # A sensor hole.
      frame = _nyu_frame(i)
      d_img[i] = image.transpose(2, 1, 0)
      d_dep[i] = depth.T
      d_raw[i] = raw.T
      d_lab[i] = frame['labels'].T
      d_ins[i] = frame['instances'].T
      images.append(image)
      depths.append(depth)
      frames.append(frame['objects'])
    names = [f'thing{k}' for k in range(1, 895)]
    for name, nyu_id in NYU_CLASS_IDS.items():
      names[nyu_id - 1] = name
    names[WALL - 1] = 'wall'
    names[3] = ''  # MATLAB's empty string representation must read too.
    _matlab_strings(f, 'names', names)
    _matlab_strings(f, 'sceneTypes', [t for _, t in NYU_SEQUENCES])
    _matlab_strings(f, 'scenes', [s for s, _ in NYU_SEQUENCES])
  with open(mat_path, 'r+b') as fh:
    text = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .'
    fh.write(text.ljust(116) + bytes(8) + b'\x00\x02IM')
  write_splits(os.path.join(root, 'splits.mat'), NYU_TRAIN, NYU_TEST)
  normals_list = write_nyu_normals(root) if normals else []
  return dict(
    objects=frames,
    scene_types=[t for _, t in NYU_SEQUENCES],
    sequences=[s for s, _ in NYU_SEQUENCES],
    images=images,
    depths=depths,
    normals=normals_list,
  )


def write_nyu_normals(root: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """Writes Eigen-style `normals_gt/{normals,masks}/%04d.png` (8-bit) for every frame.

  Returns:
    `[(normals png [H, W, 3] uint8, mask [H, W] uint8)]` per frame.
  """
  out = []
  for i in range(len(NYU_SEQUENCES)):
    # Normals facing the camera, tilted by frame; a masked-out corner.
    nrm = np.zeros((NYU_H, NYU_W, 3))
    nrm[...] = (0.3 * (i % 3 - 1), -0.5, -0.8)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    png = np.round((nrm + 1) * 127.5).astype(np.uint8)
    mask = np.full((NYU_H, NYU_W), 255, np.uint8)
    mask[:40, :40] = 0
    write_png(os.path.join(root, 'normals_gt', 'normals', f'{i:04d}.png'), png)
    write_png(os.path.join(root, 'normals_gt', 'masks', f'{i:04d}.png'), mask)
    out.append((png, mask))
  return out


def write_splits(path: str, train, test) -> None:
  """Writes a MATLAB v5 `splits.mat` with (n, 1) 1-based `trainNdxs` and `testNdxs`."""
  scipy.io.savemat(
    path,
    {
      'trainNdxs': np.asarray(train, np.float64).reshape(-1, 1),
      'testNdxs': np.asarray(test, np.float64).reshape(-1, 1),
    },
  )


MLT_H, MLT_W = 480, 640
MLT_VIEWS = (
  ('0004d52d1aeeb8ae6de39d6bd993e992', '000003'),
  ('0004d52d1aeeb8ae6de39d6bd993e992', '000010'),
  ('ff8e3d4ee9d76c2e6b25d4f0c9a0b1c2', '000000'),
)


def write_mlt(root: str, *, instance_dir: str = 'instance_v2', suffix: str = 'instance') -> dict:
  """Writes PBRS-style views (16-bit depth and normals) plus instance maps.

  Returns:
    `dict(views, objects=[per view list of (nyu40 id, pixel box)], depths, normals)`.
  """
  lines = []
  out = dict(views=list(MLT_VIEWS), objects=[], depths=[], normals=[])
  for k, (house, view) in enumerate(MLT_VIEWS):

    def p(folder, sfx, house=house, view=view):
      return os.path.join(root, folder, house, f'{view}_{sfx}.png')

    image = np.full((MLT_H, MLT_W, 3), 40 * k, np.uint8)
    depth_mm = np.full((MLT_H, MLT_W), 1500 + 100 * k, np.uint16)
    depth_mm[:5, :5] = 0
    normal = np.array([0.0, -0.6, -0.8]) if k % 2 == 0 else np.array([0.6, 0.0, -0.8])
    normal_png = np.zeros((MLT_H, MLT_W, 3), np.uint16)
    normal_png[...] = np.round((normal + 1) / 2 * 65535).astype(np.uint16)
    valid = np.full((MLT_H, MLT_W), 255, np.uint8)
    valid[-10:, :] = 0
    category = np.full((MLT_H, MLT_W), 1, np.uint8)  # wall
    inst = np.zeros((MLT_H, MLT_W), np.uint16)
    # Instance 1: a bed (NYU-40 id 4) with a few mislabelled pixels (majority vote wins).
    inst[50:100, 60:200], category[50:100, 60:200] = 1, 4
    category[50:52, 60:62] = 5
    # Instance 2: a chair split into two blobs.
    inst[300:310, 10:20], category[300:310, 10:20] = 2, 5
    inst[320:330, 600:640], category[320:330, 600:640] = 2, 5
    # Instance 3: a window (NYU-40 id 9), not a detection class.
    inst[0:20, 300:400], category[0:20, 300:400] = 3, 9
    out['objects'].append([(4, (50, 60, 99, 199)), (5, (300, 10, 329, 639))])
    write_png(p('mlt_v2', 'mlt'), image)
    write_png(p('depth_v2', 'depth'), depth_mm)
    write_png(p('normal_v2', 'norm_camera'), normal_png)
    write_png(p('normal_v2', 'valid'), valid)
    write_png(p('category_v2', 'category40'), category)
    write_png(p(instance_dir, suffix), inst)
    out['depths'].append(depth_mm.astype(np.float32) / 1000)
    out['normals'].append((normal, valid > 0))
    lines.append(f'{house}/{view}')
  with open(os.path.join(root, 'data_goodlist_v2.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n\n')
  return out


CS_H, CS_W = 1024, 2048
CS_FRAMES = {
  'train': (('aachen', 0, 19), ('bochum', 0, 1)),
  'val': (('frankfurt', 0, 294),),
  'test': (('berlin', 0, 19),),
}


def write_cityscapes(root: str) -> dict:
  """Writes leftImg8bit, disparity and gtFine_instanceIds PNGs.

  Returns:
    `{stem: dict(objects=[(class name, pixel box)], disparity_png)}`.
  """
  out = {}
  for split, frames in CS_FRAMES.items():
    for k, (city, seq, frame) in enumerate(frames):
      stem = f'{city}_{seq:06d}_{frame:06d}'
      image = np.full((CS_H, CS_W, 3), 30 * (k + 1), np.uint8)
      disp = np.zeros((CS_H, CS_W), np.uint16)
      disp[:, 1000:] = 1 + 256 * 20  # 20 px
      disp[:, 1500:] = 257 + 128  # 1.5 px
      ids = np.full((CS_H, CS_W), 7, np.uint16)  # road (labelId 7), no instance
      ids[100:200, 100:300] = 26000  # car #0
      ids[500:600, 1000:1010] = 26001  # car #1, two blobs
      ids[900:1000, 2000:2048] = 26001
      ids[300:400, 400:450] = 24000  # person #0
      ids[700:800, 700:900] = 26  # car group (crowd): no instance, no box
      ids[10:20, 10:20] = 33005  # bicycle
      objects = [
        ('bicycle', (10, 10, 19, 19)),
        ('car', (100, 100, 199, 299)),
        ('car', (500, 1000, 999, 2047)),
        ('person', (300, 400, 399, 449)),
      ]

      def path(kind, suffix, split=split, city=city, stem=stem):
        return os.path.join(root, kind, split, city, f'{stem}_{suffix}.png')

      write_png(path('leftImg8bit', 'leftImg8bit'), image)
      write_png(path('disparity', 'disparity'), disp)
      write_png(path('gtFine', 'gtFine_instanceIds'), ids)
      out[stem] = dict(objects=objects, disparity_png=disp, split=split)
  return out


def pixel_box(box, h: int, w: int) -> np.ndarray:
  """Normalised yxyx box with pixel-boundary edges from an inclusive pixel box."""
  ymin, xmin, ymax, xmax = box
  return np.array([ymin / h, xmin / w, (ymax + 1) / h, (xmax + 1) / w], np.float32)
