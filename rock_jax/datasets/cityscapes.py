"""Cityscapes with disparity, for ROCK's street-scene setting (8 instance classes).

Registered as TFDS builder `cityscapes_rock`: TFDS' catalogue already has a
`cityscapes` builder, and registering the same name raises 'Dataset with name
cityscapes already registered' as soon as both are imported.

Manual dir layout (the official zips unpacked side by side):

    leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    disparity/{split}/{city}/{city}_{seq:06d}_{frame:06d}_disparity.png
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_instanceIds.png

with `split` in train (2975), val (500), test (1525); TFDS splits `train`,
`validation` and `test` are made for the folders present. Test annotations are
not public: a test frame without an instance map has no objects.

Features:

* `image` uint8 `[1024, 2048, 3]`;
* `depth` float32 `[1024, 2048]`: the DISPARITY in pixels, d = (p - 1) / 256
  for p > 0, 0 = invalid (DESIGN: the `depth` slot holds Cityscapes'
  disparity, so the input pipeline treats it as the dense scalar target);
* `objects`: `bbox` (normalised yxyx, tight extent of each instance, edges on
  pixel boundaries) and `label` among person, rider, car, truck, bus, train,
  motorcycle, bicycle (alphabetical), one per instance id >= 1000 of those
  labelIds (label = id // 1000; ids < 1000 are crowd regions without instances
  and are skipped);
* `image_id`: index in the sorted split listing, plus 1,000,000 for
  validation and 2,000,000 for test; `city` and `frame` (file stem) strings.

Build:

    tfds build cityscapes_rock --imports=rock_jax.datasets.cityscapes --manual_dir=DIR --data_dir=OUT

or `tfds.builder('cityscapes_rock', data_dir=OUT).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=DIR))` after importing
this module.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from rock_jax.datasets import features, files, geometry

# The registered TFDS name (not 'cityscapes', which TFDS' catalogue already uses).
BUILDER_NAME = 'cityscapes_rock'
# What the trainer checks before it starts (`rock_jax.preflight`).
MANUAL_FILES = ('leftImg8bit', 'disparity', 'gtFine')
DOWNLOAD_URLS = (
  'https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, '
  'disparity_trainvaltest.zip, gtFine_trainvaltest.zip; free registration)',
)
HEIGHT, WIDTH = 1024, 2048
# Cityscapes labelIds of the 8 instance classes.
CLASSES = {
  'person': 24,
  'rider': 25,
  'car': 26,
  'truck': 27,
  'bus': 28,
  'train': 31,
  'motorcycle': 32,
  'bicycle': 33,
}
CLASS_NAMES = tuple(sorted(CLASSES))
# Cityscapes folder -> TFDS split and image_id offset.
SPLITS = {'train': ('train', 0), 'val': ('validation', 1_000_000), 'test': ('test', 2_000_000)}

_INSTRUCTIONS = """\
From https://www.cityscapes-dataset.com/downloads/ get `leftImg8bit_trainvaltest.zip`,
`disparity_trainvaltest.zip` and `gtFine_trainvaltest.zip`, and unzip them into the
manual dir so that it holds `leftImg8bit/`, `disparity/` and `gtFine/`.
"""


def disparity_from_png(p: np.ndarray) -> np.ndarray:
  """Cityscapes disparity: d = (p - 1) / 256 for p > 0, 0 = invalid.

  Args:
    p: 16-bit disparity PNG pixels.

  Returns:
    float32 disparity in pixels.
  """
  p = np.asarray(p, np.float32)
  return np.where(p > 0, (p - 1.0) / 256.0, 0.0).astype(np.float32)


def objects_from_instance_ids(ids_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Boxes and class indices of the 8 classes' instances in a `gtFine_instanceIds` map.

  Args:
    ids_map: `[H, W]` labelId * 1000 + k for instances, plain labelId elsewhere.

  Returns:
    `(boxes [N, 4] float32 normalised yxyx, labels [N] int64)` by instance id.
  """
  ids_map = np.asarray(ids_map, np.int64)
  lut = np.full(34, -1, np.int64)
  for k, name in enumerate(CLASS_NAMES):
    lut[CLASSES[name]] = k
  label_ids = ids_map // 1000
  cls = np.where((ids_map >= 1000) & (label_ids < lut.size), lut[np.clip(label_ids, 0, 33)], -1)
  ids, boxes = geometry.instance_boxes(np.where(cls >= 0, ids_map, 0))
  return boxes, lut[ids // 1000]


class CityscapesRock(tfds.core.GeneratorBasedBuilder):
  """Cityscapes frames with disparity and boxes of the 8 instance classes."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__.split('\n\n', 1)[0],
      features=features.example_features(
        HEIGHT,
        WIDTH,
        CLASS_NAMES,
        normals=False,
        extra={'city': tfds.features.Text(), 'frame': tfds.features.Text()},
      ),
      homepage='https://www.cityscapes-dataset.com/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = epath.Path(dl_manager.manual_dir)
    files.require_dir(root / 'leftImg8bit')
    out = {}
    for folder, (split, offset) in SPLITS.items():
      split_dir = root / 'leftImg8bit' / folder
      if split_dir.is_dir():
        images = sorted(split_dir.glob('*/*_leftImg8bit.png'))
        if not images:
          raise files.DataError(f'{split_dir}: no *_leftImg8bit.png files')
        out[split] = self._generate_examples(root=root, folder=folder, images=images, offset=offset)
    if not out:
      raise files.DataError(f'{root / "leftImg8bit"}: no train, val or test folder')
    return out

  def _generate_examples(self, root: epath.Path, folder: str, images: list, offset: int):
    """Yields one frame at a time."""
    size = (HEIGHT, WIDTH)
    for n, image_path in enumerate(images):
      city = image_path.parent.name
      stem = image_path.name[: -len('_leftImg8bit.png')]
      image = files.read_png(image_path, bit_depth=8, channels=3, size=size)
      disparity = files.read_png(
        root / 'disparity' / folder / city / f'{stem}_disparity.png',
        bit_depth=16,
        channels=1,
        size=size,
      )
      ids_path = root / 'gtFine' / folder / city / f'{stem}_gtFine_instanceIds.png'
      if folder == 'test' and not ids_path.is_file():
        boxes, labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
      else:
        ids_map = files.read_png(ids_path, bit_depth=16, channels=1, size=size)
        boxes, labels = objects_from_instance_ids(ids_map[..., 0])
      yield (
        stem,
        {
          'image': image,
          'depth': disparity_from_png(disparity[..., 0]),
          'objects': {'bbox': boxes, 'label': labels},
          'image_id': offset + n,
          'city': city,
          'frame': stem,
        },
      )
