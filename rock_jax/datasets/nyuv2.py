"""NYU Depth v2 labeled set (1449 RGB-D frames) for ROCK: detection, scene, depth, normals.

Registered as TFDS builder `nyuv2` with two configs:

* `official`: Silberman et al.'s 795 train / 654 test images (`splits.mat`).
* `paper` (default): ROCK's 673 train / 122 validation / 654 test; the
  validation set is made of whole `scenes` (video sequences) taken out of the
  official train split, read from `val_split.txt` (one scene name a line, e.g.
  `bedroom_0001`) in the manual dir when present, else chosen deterministically
  (fixed seed, exactly 122 images when the sequence sizes allow it; the scene
  list used is saved in the dataset's metadata as `val_scenes`).

Build (nothing downloads; see `MANUAL_DOWNLOAD_INSTRUCTIONS`):

    tfds build nyuv2/paper --imports=rock_jax.datasets.nyuv2 --manual_dir=DIR --data_dir=OUT

or in one line of Python:

    import tensorflow_datasets as tfds; from rock_jax.datasets import nyuv2; tfds.builder('nyuv2/paper', data_dir='OUT').download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='DIR'))

Features (shapes at the full 480x640 frame):

* `image` uint8 `[480, 640, 3]`;
* `depth` float32 `[480, 640]` metres (the toolbox's filled `depths`; 0 = invalid);
* `normals` float32 `[480, 640, 3]` unit vectors, `normals_mask` bool `[480, 640]`:
  from Eigen & Fergus' `normals_gt/` PNGs when that folder is in the manual dir
  (decoded as stored), else computed from `depths` with the RGB intrinsics
  (camera frame x right, y down, z forward, facing the camera; valid where the
  raw depth was measured, inside the valid projection area, away from
  occlusion edges). `info.metadata['normals_source']` says which: `'eigen'` or
  `'depth'`;
* `scene`: one of the 27 sorted `sceneTypes`;
* `objects`: `bbox` (normalised `[ymin, xmin, ymax, xmax]`, edges on pixel
  boundaries) and `label` (19 classes, alphabetical) for every (label,
  instance) pair of the 19 classes, tight extent of its pixels on the full frame;
* `image_id` and `nyu_index`: the 1-based index of the frame in the .mat (as in
  `splits.mat`; Eigen's normals PNG of the frame is `%04d.png` of `nyu_index - 1`);
* `sequence`: the scene (video sequence) name, e.g. `kitchen_0028b`.

The 2.8 GB .mat is read one frame at a time through h5py, never whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from rock_jax.datasets import features, files, geometry

BUILDER_NAME = 'nyuv2'  # The registered TFDS name.
HEIGHT, WIDTH = 480, 640
MAT_FILE = 'nyu_depth_v2_labeled.mat'
SPLITS_FILE = 'splits.mat'
NORMALS_DIR = 'normals_gt'
VAL_SPLIT_FILE = 'val_split.txt'
# What the trainer checks before it starts (`rock_jax.preflight`): required manual files
# and where to get them.
MANUAL_FILES = (MAT_FILE, SPLITS_FILE)
DOWNLOAD_URLS = (
  'http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat',
  'http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat',
  '(both linked from https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html)',
)

# The 19 detection classes of Gupta et al. 2014 (alphabetical) and their NYU `names`
# ids, for reference only: the builder looks the ids up in the file's `names`.
CLASSES = {
  'bathtub': 136,
  'bed': 157,
  'bookshelf': 88,
  'box': 26,
  'chair': 5,
  'counter': 7,
  'desk': 36,
  'door': 28,
  'dresser': 169,
  'garbage bin': 12,
  'lamp': 144,
  'monitor': 49,
  'night stand': 158,
  'pillow': 119,
  'sink': 24,
  'sofa': 83,
  'table': 19,
  'television': 172,
  'toilet': 124,
}
CLASS_NAMES = tuple(sorted(CLASSES))

# The sorted distinct `sceneTypes` strings, no grouping ('excercise' sic).
SCENE_TYPES = (
  'basement',
  'bathroom',
  'bedroom',
  'bookstore',
  'cafe',
  'classroom',
  'computer_lab',
  'conference_room',
  'dinette',
  'dining_room',
  'excercise_room',
  'foyer',
  'furniture_store',
  'home_office',
  'home_storage',
  'indoor_balcony',
  'kitchen',
  'laundry_room',
  'living_room',
  'office',
  'office_kitchen',
  'playroom',
  'printer_room',
  'reception_room',
  'student_lounge',
  'study',
  'study_room',
)

_INSTRUCTIONS = f"""\
Put these files in the manual dir (`--manual_dir`, default
`~/tensorflow_datasets/downloads/manual/`):

* `{MAT_FILE}` (2.8 GB), the labeled set from
  https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html
* `{SPLITS_FILE}`, the official train/test split from the same page.
* optional `{NORMALS_DIR}/normals/%04d.png` and `{NORMALS_DIR}/masks/%04d.png`
  (Eigen & Fergus 2015 surface normals, 0-based in .mat order); without them
  normals are computed from depth.
* optional `{VAL_SPLIT_FILE}` (config `paper`): scene names of the validation
  sequences, one a line; without it a deterministic scene-grouped split is made.
"""


@dataclasses.dataclass(eq=False)
class NyuV2Config(tfds.core.BuilderConfig):
  """NYUv2 split scheme.

  Attributes:
    split_scheme: 'official' (train/test) or 'paper' (train/validation/test).
    val_size: images moved to validation when no `val_split.txt` is given.
    val_seed: seed of that deterministic choice.
  """

  split_scheme: str = 'official'
  val_size: int = 122
  val_seed: int = 0


def scene_grouped_split(
  indices: np.ndarray, sequences: list[str], val_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Moves whole sequences out of `indices` so that validation has `val_size` images.

  Sequences are shuffled with `seed`; a subset-sum search then picks, in that
  order, the first set of sequences whose sizes add up to `val_size` (or the
  closest smaller sum when none does).

  Args:
    indices: 1-based NYU indices of the split to cut.
    sequences: sequence name of every frame of the .mat (0-based list).
    val_size: wanted number of validation images.
    seed: shuffling seed.

  Returns:
    `(train_indices, val_indices, val_sequences)`, indices in input order.
  """
  names = sorted({sequences[i - 1] for i in indices})
  sizes = {n: 0 for n in names}
  for i in indices:
    sizes[sequences[i - 1]] += 1
  order = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
  # parent[s] = (sequence position, previous sum) of the first way to reach sum s.
  parent: dict[int, tuple[int, int]] = {0: (-1, -1)}
  for pos, name in enumerate(order):
    for s in sorted(parent, reverse=True):
      t = s + sizes[name]
      if t <= val_size and t not in parent:
        parent[t] = (pos, s)
  best = max(parent)
  if best != val_size:
    logging.warning('nyuv2: no sequence set sums to %d images; using %d.', val_size, best)
  chosen = []
  s = best
  while s > 0:
    pos, s = parent[s]
    chosen.append(order[pos])
  val_set = set(chosen)
  is_val = np.array([sequences[i - 1] in val_set for i in indices], bool)
  return indices[~is_val], indices[is_val], sorted(val_set)


def _read_val_split(path: epath.Path, train_seqs: set[str], test_seqs: set[str]) -> list[str]:
  names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not names:
    raise files.DataError(f'{path}: no scene names')
  for name in names:
    if name in test_seqs:
      raise files.DataError(f'{path}: scene {name!r} belongs to the test split')
    if name not in train_seqs:
      raise files.DataError(f'{path}: unknown scene {name!r} (not in the train split)')
  return sorted(set(names))


_INSTANCE_STRIDE = 1 << 32


def boxes_and_labels(
  labels: np.ndarray, instances: np.ndarray, class_ids: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """Objects of one frame: a box for every (label, instance) pair of the detection classes.

  Args:
    labels: `[H, W]` NYU `names` ids (0 = unlabeled).
    instances: `[H, W]` instance ids (restart for each label).
    class_ids: NYU `names` id -> 0-based class index.

  Returns:
    `(boxes [N, 4] float32 normalised yxyx, labels [N] int64 class indices)`,
    ordered by class index then instance id.
  """
  lut = np.full(max(int(labels.max()), max(class_ids)) + 1, -1, np.int64)
  for nyu_id, k in class_ids.items():
    lut[nyu_id] = k
  cls = lut[labels]
  # One key per (class, instance) pair; +1 keeps instance 0 apart from background. The
  # stride exceeds any 32-bit instance id, so wide ids cannot collide across classes.
  key = np.where(cls >= 0, (cls + 1) * _INSTANCE_STRIDE + instances.astype(np.int64), 0)
  ids, boxes = geometry.instance_boxes(key)
  return boxes, ids // _INSTANCE_STRIDE - 1


class Nyuv2(tfds.core.GeneratorBasedBuilder):
  """NYU Depth v2 labeled set with ROCK's detection, scene, depth and normals targets."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
    NyuV2Config(name='paper', split_scheme='paper', description='ROCK: 673 / 122 / 654.'),
    NyuV2Config(name='official', split_scheme='official', description='Official: 795 / 654.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'paper'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__.split('\n\n', 1)[0],
      features=features.example_features(
        HEIGHT,
        WIDTH,
        CLASS_NAMES,
        scene_names=SCENE_TYPES,
        extra={'nyu_index': np.int64, 'sequence': tfds.features.Text()},
      ),
      homepage='https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html',
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = epath.Path(dl_manager.manual_dir)
    mat_path = files.require_file(root / MAT_FILE)
    with files.open_mat_v73(mat_path) as f:
      num = files.require_dataset(f, 'images', (None, 3, WIDTH, HEIGHT), mat_path, np.uint8)
      num = num.shape[0]
      for key in ('depths', 'rawDepths', 'labels'):
        files.require_dataset(f, key, (num, WIDTH, HEIGHT), mat_path)
      # uint8 as in the real file (a wider type means another file than NYUv2's).
      files.require_dataset(f, 'instances', (num, WIDTH, HEIGHT), mat_path, np.uint8)
      names = files.read_mat_strings(f, 'names', mat_path)
      scene_types = files.read_mat_strings(f, 'sceneTypes', mat_path)
      sequences = files.read_mat_strings(f, 'scenes', mat_path)
    for key, values in (('sceneTypes', scene_types), ('scenes', sequences)):
      if len(values) != num:
        raise files.DataError(f'{mat_path}: key {key!r} has {len(values)} entries, expected {num}')
    unknown = sorted(set(scene_types) - set(SCENE_TYPES))
    if unknown:
      raise files.DataError(f'{mat_path}: unknown sceneTypes {unknown}')
    # namesToIds is a MATLAB object h5py cannot read: rebuild it from `names`.
    names_to_ids = {}
    for k, name in enumerate(names):
      names_to_ids.setdefault(name, k + 1)
    missing = [c for c in CLASS_NAMES if c not in names_to_ids]
    if missing:
      raise files.DataError(f"{mat_path}: class names {missing} not in key 'names'")
    class_ids = {names_to_ids[c]: k for k, c in enumerate(CLASS_NAMES)}

    train, test = files.load_splits(root / SPLITS_FILE, num)
    normals_dir = root / NORMALS_DIR
    normals_source = 'eigen' if normals_dir.is_dir() else 'depth'
    self.info.metadata['normals_source'] = normals_source
    self.info.metadata['image_id'] = 'nyu_index, 1-based'

    kwargs = dict(
      mat_path=mat_path,
      scene_types=scene_types,
      sequences=sequences,
      class_ids=class_ids,
      normals_dir=normals_dir if normals_source == 'eigen' else None,
    )
    if self.builder_config.split_scheme == 'official':
      return {
        'train': self._generate_examples(indices=train, **kwargs),
        'test': self._generate_examples(indices=test, **kwargs),
      }
    if self.builder_config.split_scheme != 'paper':
      raise ValueError(f'Unknown split_scheme {self.builder_config.split_scheme!r}')
    val_path = root / VAL_SPLIT_FILE
    if val_path.is_file():
      train_seqs = {sequences[i - 1] for i in train}
      test_seqs = {sequences[i - 1] for i in test}
      val_seqs = set(_read_val_split(val_path, train_seqs, test_seqs))
      is_val = np.array([sequences[i - 1] in val_seqs for i in train], bool)
      train, val = train[~is_val], train[is_val]
      self.info.metadata['val_split_source'] = VAL_SPLIT_FILE
    else:
      train, val, val_seqs = scene_grouped_split(
        train, sequences, self.builder_config.val_size, self.builder_config.val_seed
      )
      self.info.metadata['val_split_source'] = f'seed {self.builder_config.val_seed}'
    if not len(train) or not len(val):
      # TFDS would stop later with "No examples were yielded" for the empty split.
      raise files.DataError(
        f'{mat_path}: config `paper` cuts a validation split of whole scenes out of the '
        f'official train split, which leaves {len(train)} train and {len(val)} validation '
        f'images here; both need at least one: use more images, a {VAL_SPLIT_FILE} naming '
        f'fewer scenes, or the `official` config (--config.data.builder_config=official).'
      )
    self.info.metadata['val_scenes'] = sorted(val_seqs)
    return {
      'train': self._generate_examples(indices=train, **kwargs),
      'validation': self._generate_examples(indices=val, **kwargs),
      'test': self._generate_examples(indices=test, **kwargs),
    }

  def _generate_examples(
    self,
    indices: np.ndarray,
    mat_path: epath.Path,
    scene_types: list[str],
    sequences: list[str],
    class_ids: dict[int, int],
    normals_dir: epath.Path | None,
  ):
    """Yields `(key, example)` for the 1-based `indices`, one frame read at a time."""
    with files.open_mat_v73(mat_path) as f:
      for index in indices:
        i = int(index) - 1
        image = f['images'][i].transpose(2, 1, 0)
        depth = np.asarray(f['depths'][i].T, np.float32)
        labels = f['labels'][i].T
        instances = f['instances'][i].T
        if normals_dir is None:
          normals, mask = geometry.normals_from_depth(
            depth,
            geometry.NYU_INTRINSICS,
            valid_area=geometry.NYU_VALID_AREA,
            valid=f['rawDepths'][i].T > 0,
          )
        else:
          normals, mask = _read_eigen_normals(normals_dir, i)
        boxes, labels_k = boxes_and_labels(labels, instances, class_ids)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
        yield (
          int(index),
          {
            'image': np.ascontiguousarray(image),
            'depth': depth,
            'normals': normals,
            'normals_mask': mask,
            'scene': SCENE_TYPES.index(scene_types[i]),
            'objects': {'bbox': boxes, 'label': labels_k},
            'image_id': int(index),
            'nyu_index': int(index),
            'sequence': sequences[i],
          },
        )


def _read_eigen_normals(normals_dir: epath.Path, i: int) -> tuple[np.ndarray, np.ndarray]:
  """Eigen & Fergus normals of 0-based frame `i`: 8-bit RGB, n = p / 127.5 - 1, and mask."""
  normal_path = normals_dir / 'normals' / f'{i:04d}.png'
  mask_path = normals_dir / 'masks' / f'{i:04d}.png'
  encoded = files.read_png(normal_path, bit_depth=8, channels=3, size=(HEIGHT, WIDTH))
  if not mask_path.is_file():
    raise files.DataError(f'{mask_path}: missing file (normals need their mask)')
  mask = files.read_png(mask_path, bit_depth=(1, 8, 16), channels=(1, 3), size=(HEIGHT, WIDTH))
  return geometry.decode_normals(encoded, scale=127.5, valid=mask[..., 0] > 0)
