"""MLT / PBRS synthetic indoor views (Zhang et al. 2017) for ROCK pretraining.

Registered as TFDS builder `mlt`. Layout of the manual dir (REFERENCE section 5):

    data_goodlist_v2.txt                         # 'house/view' a line
    mlt_v2/<house>/<view>_mlt.png                # 8-bit RGB 640x480
    depth_v2/<house>/<view>_depth.png            # 16-bit millimetres, 0 = none
    normal_v2/<house>/<view>_norm_camera.png     # 16-bit RGB, n = p / 65535 * 2 - 1
    normal_v2/<house>/<view>_valid.png           # normals' valid mask (non-zero = valid)
    category_v2/<house>/<view>_category40.png    # NYU-40 labels, 0 = none
    <instance_dir>/<house>/<view>_<instance_suffix>.png   # instance ids, 0 = none

Boxes are not distributed with the set: each non-zero id of the instance map
(8- or 16-bit grey PNG; folder and suffix are `MltConfig.instance_dir` and
`instance_suffix`) is an object whose NYU-40 category is the majority label of
its pixels in the category map; `MltConfig.classes` maps the detection classes
to NYU-40 ids and instances of other categories are dropped. ROCK's 23 classes
are not published: the default config `nyu40_17` uses the 17 of NYUv2's 19
detection classes that NYU-40 has (garbage bin and monitor are not NYU-40
classes); define your own `MltConfig` for another list, e.g.

    config = mlt.MltConfig(name='mine', classes=(('bed', (4,)), ('chair', (5,))))
    tfds.builder_cls('mlt')(config=config, data_dir=OUT).download_and_prepare(...)

Features: `image`, `depth` (metres, 0 = invalid), `normals` + `normals_mask`
(camera frame as rendered), `objects` (`bbox`, `label`), `image_id` (a stable
63-bit hash of 'house/view', the same in every build mode), `house`, `view`.
No `scene`. One split, `train`.

Build in one process (streams the goodlist, one view in memory at a time):

    tfds build mlt --imports=rock_jax.datasets.mlt --manual_dir=DIR --data_dir=OUT

or on an Apache Beam runner (install the `[beam]` extra), which TFDS uses
whenever a runner or pipeline options are given, e.g. locally:

    tfds build mlt --imports=rock_jax.datasets.mlt --manual_dir=DIR --data_dir=OUT \
      --beam_pipeline_options=runner=DirectRunner,direct_num_workers=8

and in Python: `download_config=tfds.download.DownloadConfig(manual_dir=DIR,
beam_runner=...)` or `beam_options=PipelineOptions(...)`. Shards are TFRecord
by default (TFDS' default); pass `file_format='array_record'` to the builder (or
`--file_format=array_record` to `tfds build`) for random access.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from rock_jax.datasets import features, files, geometry

BUILDER_NAME = 'mlt'  # The registered TFDS name.
HEIGHT, WIDTH = 480, 640
GOODLIST = 'data_goodlist_v2.txt'
# What the trainer checks before it starts (`rock_jax.preflight`); the instance maps'
# folder depends on the builder config and is checked by the builder.
MANUAL_FILES = (GOODLIST, 'mlt_v2', 'depth_v2', 'normal_v2', 'category_v2')
DOWNLOAD_URLS = ('https://github.com/yindaz/pbrs',)

# NYU-40 ids of the NYUv2 detection classes that NYU-40 keeps.
NYU40_17 = (
  ('bathtub', (36,)),
  ('bed', (4,)),
  ('bookshelf', (10,)),
  ('box', (29,)),
  ('chair', (5,)),
  ('counter', (12,)),
  ('desk', (14,)),
  ('door', (8,)),
  ('dresser', (17,)),
  ('lamp', (35,)),
  ('night stand', (32,)),
  ('pillow', (18,)),
  ('sink', (34,)),
  ('sofa', (6,)),
  ('table', (7,)),
  ('television', (25,)),
  ('toilet', (33,)),
)

_INSTRUCTIONS = f"""\
Download the PBRS data (https://github.com/yindaz/pbrs: `mlt_v2`, `depth_v2`,
`normal_v2`, `category_v2` and `{GOODLIST}`) and an instance map per view, and
put them in the manual dir with the layout of `rock_jax/datasets/mlt.py`; set
the instance maps' folder and suffix and the class list in `MltConfig`.
"""


@dataclasses.dataclass(eq=False)
class MltConfig(tfds.core.BuilderConfig):
  """Where the instance maps are and which classes become objects.

  Attributes:
    instance_dir: folder (under the manual dir) of the instance maps.
    instance_suffix: file suffix, `<view>_<suffix>.png`.
    classes: `(name, NYU-40 ids)` pairs; labels follow sorted names.
  """

  instance_dir: str = 'instance_v2'
  instance_suffix: str = 'instance'
  classes: tuple[tuple[str, tuple[int, ...]], ...] = NYU40_17


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What a worker needs to read one view (plain data: pickles into Beam workers)."""

  root: str
  instance_dir: str
  instance_suffix: str
  nyu40_to_class: tuple[int, ...]  # Index = NYU-40 id (0..40), value = class or -1.


def image_id(key: str) -> int:
  """Stable non-negative int64 id of a 'house/view' key (blake2b, 63 bits)."""
  digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
  return int.from_bytes(digest, 'big') & ((1 << 63) - 1)


def parse_goodlist_line(line: str, path: str = GOODLIST) -> list[tuple[str, str]]:
  """Parses one goodlist line into `[(house, view)]` (empty for a blank line).

  Args:
    line: 'house/view', e.g. '0004d52d1aeeb8ae6de39d6bd993e992/000003'.
    path: the goodlist, for error messages.

  Returns:
    Zero or one `(house, view)` pair.
  """
  line = line.strip()
  if not line:
    return []
  parts = line.split('/')
  if len(parts) != 2 or not all(parts):
    raise files.DataError(f'{path}: bad line {line!r}, expected house/view')
  return [(parts[0], parts[1])]


def objects_from_maps(
  instances: np.ndarray, categories: np.ndarray, nyu40_to_class: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
  """Objects of one view: instance boxes labelled by their majority NYU-40 category.

  Args:
    instances: `[H, W]` instance ids, 0 = none.
    categories: `[H, W]` NYU-40 ids, 0 = none.
    nyu40_to_class: NYU-40 id -> class index or -1.

  Returns:
    `(boxes [N, 4] float32 normalised yxyx, labels [N] int64)` by instance id.
  """
  ids, boxes = geometry.instance_boxes(instances)
  if ids.size == 0:
    return boxes, np.zeros((0,), np.int64)
  sel = instances > 0
  inst = instances[sel].astype(np.int64)
  cat = np.clip(categories[sel].astype(np.int64), 0, 255)
  pairs, counts = np.unique(inst * 256 + cat, return_counts=True)
  # Majority category per instance: sort pairs by (instance, count) and keep the last.
  order = np.lexsort((counts, pairs // 256))
  pairs = pairs[order]
  last = np.r_[pairs[1:] // 256 != pairs[:-1] // 256, True]
  majority = dict(zip((pairs[last] // 256).tolist(), (pairs[last] % 256).tolist(), strict=True))
  lut = np.asarray(nyu40_to_class, np.int64)
  labels = np.array(
    [lut[majority[i]] if majority[i] < lut.size else -1 for i in ids.tolist()], np.int64
  )
  keep = labels >= 0
  return boxes[keep], labels[keep]


def read_view(house: str, view: str, spec: _Spec) -> tuple[str, dict]:
  """Reads, checks and converts one view.

  Args:
    house: 32-hex house id.
    view: 6-digit view id.
    spec: where the files are and how labels map.

  Returns:
    `(key, example)` for TFDS.
  """
  root = epath.Path(spec.root)
  size = (HEIGHT, WIDTH)

  def path(folder: str, suffix: str) -> epath.Path:
    return root / folder / house / f'{view}_{suffix}.png'

  image = files.read_png(path('mlt_v2', 'mlt'), bit_depth=8, channels=3, size=size)
  depth_mm = files.read_png(path('depth_v2', 'depth'), bit_depth=16, channels=1, size=size)
  normals_png = files.read_png(
    path('normal_v2', 'norm_camera'), bit_depth=16, channels=3, size=size
  )
  valid_path = path('normal_v2', 'valid')
  if not valid_path.is_file():
    raise files.DataError(f'{valid_path}: missing file (normals need their mask)')
  valid = files.read_png(valid_path, bit_depth=(1, 8, 16), channels=(1, 3), size=size)
  categories = files.read_png(
    path('category_v2', 'category40'), bit_depth=(8, 16), channels=1, size=size
  )
  instances = files.read_png(
    path(spec.instance_dir, spec.instance_suffix), bit_depth=(8, 16), channels=1, size=size
  )
  normals, mask = geometry.decode_normals(normals_png, scale=65535 / 2, valid=valid[..., 0] > 0)
  boxes, labels = objects_from_maps(instances[..., 0], categories[..., 0], spec.nyu40_to_class)
  key = f'{house}/{view}'
  return key, {
    'image': image,
    'depth': depth_mm[..., 0].astype(np.float32) / 1000.0,
    'normals': normals,
    'normals_mask': mask,
    'objects': {'bbox': boxes, 'label': labels},
    'image_id': image_id(key),
    'house': house,
    'view': view,
  }


def _read_view_tuple(house_view: tuple[str, str], spec: _Spec) -> tuple[str, dict]:
  return read_view(house_view[0], house_view[1], spec)


class Mlt(tfds.core.GeneratorBasedBuilder):
  """MLT / PBRS synthetic views with depth, normals and instance boxes."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
    MltConfig(name='nyu40_17', description='17 NYUv2 detection classes found in NYU-40.')
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    names = sorted(name for name, _ in self.builder_config.classes)
    return self.dataset_info_from_configs(
      description=__doc__.split('\n\n', 1)[0],
      features=features.example_features(
        HEIGHT,
        WIDTH,
        names,
        extra={'house': tfds.features.Text(), 'view': tfds.features.Text()},
      ),
      homepage='https://github.com/yindaz/pbrs',
    )

  def _spec(self, root: epath.Path) -> _Spec:
    config = self.builder_config
    names = sorted(name for name, _ in config.classes)
    lut = [-1] * 41
    for name, nyu40_ids in config.classes:
      for i in nyu40_ids:
        if not 1 <= i <= 40:
          raise ValueError(f'MltConfig {config.name!r}: NYU-40 id {i} of {name!r} not in 1..40')
        lut[i] = names.index(name)
    return _Spec(str(root), config.instance_dir, config.instance_suffix, tuple(lut))

  def _download_and_prepare(self, dl_manager, download_config=None):
    # TFDS runs a Beam pipeline when `_generate_examples` returns a PTransform; do so
    # exactly when the caller gave a runner or options (`tfds build
    # --beam_pipeline_options=...`), and stream in this process otherwise.
    self._use_beam = bool(
      download_config and (download_config.beam_runner or download_config.beam_options)
    )
    return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = epath.Path(dl_manager.manual_dir)
    goodlist = files.require_file(root / GOODLIST)
    for folder in ('mlt_v2', 'depth_v2', 'normal_v2', 'category_v2'):
      files.require_dir(root / folder)
    files.require_dir(root / self.builder_config.instance_dir)
    spec = self._spec(root)
    use_beam = getattr(self, '_use_beam', False)
    return {'train': self._generate_examples(goodlist=goodlist, spec=spec, use_beam=use_beam)}

  def _generate_examples(self, goodlist: epath.Path, spec: _Spec, use_beam: bool):
    """Streams the goodlist: a generator, or a Beam PTransform when `use_beam`."""
    if use_beam:
      beam = tfds.core.lazy_imports.apache_beam
      return (
        'ReadGoodlist' >> beam.io.ReadFromText(str(goodlist))
        | 'ParseLines' >> beam.FlatMap(parse_goodlist_line, path=str(goodlist))
        | 'ReadViews' >> beam.Map(_read_view_tuple, spec=spec)
      )
    return self._generate_in_process(goodlist, spec)

  def _generate_in_process(self, goodlist: epath.Path, spec: _Spec) -> Iterator[tuple[str, dict]]:
    with goodlist.open('r') as f:  # Line by line: the list has ~568K entries.
      for line in f:
        for house, view in parse_goodlist_line(line, str(goodlist)):
          yield read_view(house, view, spec)
