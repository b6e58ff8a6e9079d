"""`synthetic_rooms`: built-in procedural indoor scenes as a TFDS dataset (no download).

Rendered locally by `rock_jax.datasets.rooms_render` (see its docstring for the scene
types, classes, how object likelihood depends on the scene and the camera-frame axes).
Every example is a pure function of `(config.seed, split, index)`, so a build is
reproducible on any machine and any split can be regenerated alone.

Configs:
- `default`: 480x640, 4000 / 500 / 1000 (train / validation / test) images;
- `cpu`: 192x256, 2500 / 250 / 500, for CPU demos and studies;
- `bench`: 480x640, 64 / 8 / 8, the source of the input pipeline benchmark;
- `tiny`: 48x64, 8 / 4 / 4, for tests;
- `source`: 192x256, 5000 / 250 / 250 in the `source` style and without scene labels,
  seed 1: the MLT analog of issue #11, a larger set whose lighting, textures, camera
  range and object mix differ from the target's (`rooms_render.STYLES`);
- `source_tiny`: the same at 48x64, 8 / 4 / 4, for tests.
Other sizes: `SyntheticRooms(config=SyntheticRoomsConfig(name=..., height=..., ...))`.

Load (and build on first use, which renders locally):
`load_builder('cpu', data_dir=...)`, or `tfds.builder('synthetic_rooms/cpu')` after
importing this module, then `download_and_prepare()`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from rock_jax.datasets import features, rooms_render

_SPLITS = ('train', 'validation', 'test')
# Image ids: split offset + index, unique within the dataset.
_ID_OFFSET = {'train': 0, 'validation': 1_000_000, 'test': 2_000_000}


@dataclasses.dataclass
class SyntheticRoomsConfig(tfds.core.BuilderConfig):
  """Image size, split sizes and seed of one rendering of the synthetic rooms."""

  height: int = 480
  width: int = 640
  num_train: int = 4000
  num_validation: int = 500
  num_test: int = 1000
  seed: int = 0
  style: str = 'target'  # A key of `rooms_render.STYLES`.
  scene_labels: bool = True  # False: no `scene` feature (as MLT).


class SyntheticRooms(tfds.core.GeneratorBasedBuilder):
  """Procedural rooms with boxes, scene label, depth and surface normals."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
    SyntheticRoomsConfig(name='default', description='480x640, 4000/500/1000 images.'),
    SyntheticRoomsConfig(
      name='cpu',
      description='192x256, 2500/250/500 images, for CPU training.',
      height=192,
      width=256,
      num_train=2500,
      num_validation=250,
      num_test=500,
    ),
    SyntheticRoomsConfig(
      name='bench',
      description='480x640, 64/8/8 images, the source of tools/bench_input.py.',
      num_train=64,
      num_validation=8,
      num_test=8,
    ),
    SyntheticRoomsConfig(
      name='tiny',
      description='48x64, 8/4/4 images, for tests.',
      height=48,
      width=64,
      num_train=8,
      num_validation=4,
      num_test=4,
    ),
    SyntheticRoomsConfig(
      name='source',
      description=(
        '192x256, 5000/250/250 images in the source style (lighting, textures, camera, '
        'object mix), no scene labels: the MLT analog.'
      ),
      height=192,
      width=256,
      num_train=5000,
      num_validation=250,
      num_test=250,
      seed=1,
      style='source',
      scene_labels=False,
    ),
    SyntheticRoomsConfig(
      name='source_tiny',
      description='48x64, 8/4/4 images in the source style, no scene labels, for tests.',
      height=48,
      width=64,
      num_train=8,
      num_validation=4,
      num_test=4,
      seed=1,
      style='source',
      scene_labels=False,
    ),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.height, self.builder_config.width
    return self.dataset_info_from_configs(
      description=(
        'Procedural indoor rooms rendered by numpy ray casting: '
        f'{len(rooms_render.SCENES)} scene types, {len(rooms_render.CLASSES)} object '
        'classes whose presence depends on the scene type, exact depth (metres, camera '
        'z) and camera-frame normals (x right, y down, z forward).'
      ),
      features=features.example_features(
        h,
        w,
        rooms_render.CLASSES,
        scene_names=rooms_render.SCENES if self.builder_config.scene_labels else None,
      ),
      homepage='https://github.com/rock_jax',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    del dl_manager  # Nothing to download: everything is rendered here.
    return {split: self._generate_examples(split) for split in _SPLITS}

  def _generate_examples(self, split: str):
    """Yields `(key, example)`; example i of a split depends only on (seed, split, i)."""
    cfg = self.builder_config
    count = {'train': cfg.num_train, 'validation': cfg.num_validation, 'test': cfg.num_test}
    for index in range(count[split]):
      image_id = _ID_OFFSET[split] + index
      yield image_id, render_example(cfg, split, index)


def render_example(config: SyntheticRoomsConfig, split: str, index: int) -> dict:
  """Renders example `index` of `split` in the builder's feature format.

  Args:
    config: the builder config (size and seed).
    split: 'train', 'validation' or 'test'.
    index: position in the split.

  Returns:
    The example dict (`image`, `depth`, `normals`, `normals_mask`, `scene` unless the
    config has no scene labels, `objects`, `image_id`).
  """
  rng = np.random.default_rng([config.seed, _SPLITS.index(split), index])
  style = rooms_render.STYLES[config.style]
  out = rooms_render.render_scene(rng, config.height, config.width, style=style)
  # Depth to the millimetre: exact enough, and zlib compresses it much better.
  depth = np.round(out['depth'] * 1000.0) / 1000.0
  example = {
    'image': out['image'],
    'depth': depth.astype(np.float32),
    'normals': out['normals'],
    'normals_mask': out['normals_mask'],
    'scene': int(out['scene']),
    'objects': {
      'bbox': np.clip(out['boxes'], 0.0, 1.0).astype(np.float32),
      'label': out['labels'].astype(np.int64),
    },
    'image_id': _ID_OFFSET[split] + index,
  }
  if not config.scene_labels:
    del example['scene']
  return example


def load_builder(
  config: str | SyntheticRoomsConfig = 'cpu', *, data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
  """Returns the builder, rendering the dataset first when `data_dir` lacks it.

  Args:
    config: a registered config name ('default', 'cpu', 'tiny') or a custom config.
    data_dir: TFDS data directory (None: the TFDS default).

  Returns:
    A prepared `SyntheticRooms` builder.
  """
  if isinstance(config, str):
    builder = tfds.builder(f'synthetic_rooms/{config}', data_dir=data_dir)
  else:
    builder = SyntheticRooms(config=config, data_dir=data_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
  )
  return builder
