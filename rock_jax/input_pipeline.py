"""tf.data input pipelines: TFDS examples -> fixed-shape, device-ready host batches.

Batch contract (docs/DESIGN.md, "Data"): `image` `[B, H, W, 3]` float32 ImageNet-
normalised; `box_targets` `[B, A, 4]`, `cls_targets` `[B, A]` (from
`rock_jax.matching.match_and_encode` against `rock_jax.boxes.default_boxes`); per task
of `config.model.tasks` (`rock_jax.tasks`), its entries by kind (`KIND_TARGETS`): an
image_class task `t` (scene) `t` `[B]` int32; a dense task `t` (depth, normals) `t`
`[B, h, w]` or `[B, h, w, components]` and `t_mask` `[B, h, w]` at the conv5 grid
`(ceil(H / s), ceil(W / s))`; and the presence flag `has_t` `[B]` (per example, so
mixtures of datasets with different annotations work). Evaluation batches add `image_id`, `orig_size`, `gt_boxes`, `gt_labels`,
`gt_mask` (padded to `data.max_boxes`) and `valid` (0 for padding examples).

Determinism and resuming: the training stream is a pure function of `(config, seed,
process_index, process_count)`, and the global stream of `(config, seed)` once
`data.train_shards` is set. Each dataset's stream is a sequence of epochs, epoch `e`
shuffled with a seed derived from `(seed, e)`; each example's augmentation seed is
derived from `(seed, dataset, position in that dataset's stream)`; a mixture picks the
dataset of element `i` from a stateless draw seeded by `(seed, i // 1024)`. So
`create_train_dataset(..., start_step=N)` rebuilds the same stream from batch N on:
it counts how many elements each dataset had contributed (cheap, no decoding), starts
each dataset at the right epoch and skips the rest of that epoch *before* decoding and
augmenting. Restarting a trainer at step N with `start_step=N` gives the same batches
as an uninterrupted run.

Sharding: training reads `S = data.train_shards` shards (0: one per host), shard `j`
the contiguous slice `[j * n, (j + 1) * n)` of the (fraction of the) split (TFDS sub-
split strings, the same as `tfds.even_splits`), dropping the remainder; host `i` of `P`
reads the `S / P` shards `[i * S / P, (i + 1) * S / P)`, so hosts read disjoint parts of
the split, and with `S` fixed the global batches are the same on any number of hosts.
Evaluation: host `i` reads the `i`-th contiguous slice, the remainder spread over the
first hosts, every host padded to the same number of batches.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rock_jax import augment, boxes, console, matching
from rock_jax import tasks as tasks_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Dense maps are resampled (nearest) to DENSE_FACTOR x the conv5 grid, then each
# DENSE_FACTOR x DENSE_FACTOR block's valid samples are averaged (area average).
DENSE_FACTOR = 4
_MIX_BLOCK = 1024  # Mixture choices are drawn in blocks of this many elements.

Batch = dict[str, tf.Tensor]


def _registered_builder(
  name: str, builder_config: str | None, data_dir: str | None
) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a `rock_jax.datasets` module (imported: that registers it)."""
  module_name = f'rock_jax.datasets.{name}'
  try:
    module = importlib.import_module(module_name)
    # A module may register under another name (TFDS has its own `cityscapes`).
    name = getattr(module, 'BUILDER_NAME', name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise  # A dependency of the module is missing: say so.
    # Otherwise registered elsewhere (e.g. by a test); tfds.builder fails if not.
  full = f'{name}/{builder_config}' if builder_config else name
  return tfds.builder(full, data_dir=data_dir)


def class_names(
  config: ml_collections.ConfigDict,
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
  """The dataset's detection class names and the label names of its image-level tasks.

  Read from the builder's features (its code), without preparing anything, so a
  machine without the data can name the classes.

  Args:
    config: the experiment config (`data.name`, `data.builder_config`, `data.data_dir`).

  Returns:
    (the C foreground class names in label order, {task: label names} for each active
    image_class task whose source the dataset has).
  """
  data = config.data
  builder = _registered_builder(data.name, data.get('builder_config'), data.get('data_dir'))
  features = builder.info.features
  labels = {
    task.name: tuple(features[task.source].names)
    for task in tasks_lib.active(config)
    if task.kind == 'image_class' and task.source in features
  }
  return tuple(features['objects']['label'].names), labels


def get_builder(
  name: str,
  builder_config: str | None = None,
  *,
  data_dir: str | None = None,
  manual_dir: str | None = None,
) -> tfds.core.DatasetBuilder:
  """Returns a prepared TFDS builder of `rock_jax.datasets`, building it if needed.

  `synthetic_rooms` renders locally; the other datasets build from `manual_dir`.

  Args:
    name: 'nyuv2', 'mlt', 'cityscapes' or 'synthetic_rooms'.
    builder_config: the builder config name (None: the builder's default).
    data_dir: TFDS data directory (None: the TFDS default).
    manual_dir: directory of the original files, for builders that need them.

  Returns:
    The prepared builder.
  """
  builder = _registered_builder(name, builder_config, data_dir)
  if not builder.is_prepared():
    console.build_progress(
      builder,
      download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
      ),
    )
  return builder


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """`[0, 1]` RGB -> the model's input scale (ImageNet mean and standard deviation)."""
  return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def image_pixels(image: np.ndarray) -> np.ndarray:
  """The inverse of `normalize_image`, on the host: model inputs -> uint8 RGB pixels."""
  pixels = np.asarray(image, np.float32) * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)
  return np.clip(pixels * 255.0, 0, 255).astype(np.uint8)


def preprocess_image(image: tf.Tensor | np.ndarray, image_size: Sequence[int]) -> tf.Tensor:
  """An evaluation or inference image as the model sees it: the one function for both.

  The whole image is resized to `image_size` (bilinear, no antialiasing, as in training:
  `augment.resize`) and normalised. The eval pipeline (`create_eval_dataset`) and
  `rock_jax.detect` both call it, so a photo reaches the model exactly as a test image;
  the SavedModel of `rock_jax.export` traces it on its uint8 input, so it does too
  (up to the float rounding of TensorFlow's graph optimiser).

  Args:
    image: `[H, W, 3]` uint8 RGB, or float in [0, 1]; or a batch `[B, H, W, 3]`.
    image_size: `(H, W)` of the model input.

  Returns:
    float32 `[*image_size, 3]` (`[B, *image_size, 3]` for a batch).
  """
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    image = tf.cast(image, tf.float32) / 255.0
  resized = tf.image.resize(image, image_size, method='bilinear', antialias=False)
  batch = [None] * (resized.shape.rank - 3)  # resize takes rank 3 or 4 only.
  return tf.ensure_shape(tf.cast(normalize_image(resized), tf.float32), [*batch, *image_size, 3])


def conv5_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """The dense target grid `(ceil(H / s), ceil(W / s))` for the model's input size."""
  stride = config.model.backbone.output_stride
  h, w = config.data.image_size
  return math.ceil(h / stride), math.ceil(w / stride)


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # Imported lazily: the pipeline itself does not need JAX.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  return process_index, process_count


def _host_batch(batch_size: int, count: int, field: str) -> int:
  """This host's share of a global batch (`field` names the config entry in errors)."""
  if batch_size // count < 1:
    raise ValueError(f'{field} {batch_size} < {count} processes.')
  return batch_size // count


def _geometry(
  config: ml_collections.ConfigDict,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], np.ndarray]:
  """Image size, conv5 grid, dense sampling size and default boxes of the model."""
  image_size = tuple(config.data.image_size)
  grid = conv5_size(config)
  dense_size = (grid[0] * DENSE_FACTOR, grid[1] * DENSE_FACTOR)
  return image_size, grid, dense_size, boxes.default_boxes(config.model, image_size)


def _host_slice(
  split: str, total: int, index: int, count: int, drop_remainder: bool
) -> tuple[str, int]:
  """Sub-split string and size of host `index`'s contiguous share of `split[:total]`."""
  base, rem = divmod(total, count)
  if drop_remainder:
    start, size = index * base, base
  else:
    start, size = index * base + min(index, rem), base + (index < rem)
  return f'{split}[{start}:{start + size}]', size


def _lazy_keys(
  config: ml_collections.ConfigDict, features: tfds.features.FeaturesDict
) -> tuple[str, ...]:
  """The image and the dense fields the tasks read: decoded after shuffling and skipping."""
  keys = ['image']
  for task in tasks_lib.parse(config.model):
    if task.dense:
      keys += [task.source, f'{task.source}_mask']
  return tuple(k for k in dict.fromkeys(keys) if k in features)


def _decode(
  raw: Mapping[str, Any], features: tfds.features.FeaturesDict, keys: Sequence[str]
) -> dict[str, tf.Tensor]:
  """Decodes the lazily read fields `keys` into the augmentation's example dict."""
  ex = {}
  for key in keys:
    if key in raw:
      ex[key] = features[key].decode_example(raw[key])
  ex['boxes'] = tf.reshape(tf.cast(raw['objects']['bbox'], tf.float32), [-1, 4])
  ex['labels'] = tf.cast(raw['objects']['label'], tf.int32) + 1  # 0 is background.
  return ex


def _area_average(values: tf.Tensor, valid: tf.Tensor, factor: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Averages valid samples over `factor x factor` blocks: `[kh, kw, C]` -> `[h, w, C]`."""
  kh, kw, c = values.shape
  v = tf.cast(valid, tf.float32)[..., None]
  blocks = tf.reshape(values * v, [kh // factor, factor, kw // factor, factor, c])
  counts = tf.reshape(v, [kh // factor, factor, kw // factor, factor, 1])
  total = tf.reduce_sum(blocks, axis=[1, 3])
  count = tf.reduce_sum(counts, axis=[1, 3])
  return total / tf.maximum(count, 1.0), count[..., 0] > 0


def _image_class_target(
  task: tasks_lib.Task, ex: Mapping[str, tf.Tensor], raw: Mapping[str, Any], grid: tuple[int, int]
) -> Batch:
  """`t` (int32 label) and `has_t`, from the example's `source` class label."""
  del ex, grid  # An image label is not augmented.
  present = task.source in raw
  label = tf.cast(raw[task.source], tf.int32) if present else tf.constant(0, tf.int32)
  return {task.name: label, f'has_{task.name}': tf.constant(float(present))}


def _dense_target(
  task: tasks_lib.Task,
  ex: Mapping[str, tf.Tensor],
  grid: tuple[int, int],
  default_valid: Any,
  finish: Any = None,
) -> Batch:
  """`t`, `t_mask` (at the conv5 grid) and `has_t` of a dense task (zeros when absent)."""
  h, w = grid
  name, source = task.name, task.source
  channels = [] if task.kind == 'dense_scalar' else [task.components]
  if source not in ex:
    zeros = tf.zeros([h, w, *channels])
    return {name: zeros, f'{name}_mask': tf.zeros([h, w]), f'has_{name}': tf.constant(0.0)}
  values = ex[source]
  valid = ex[f'{source}_mask'] if f'{source}_mask' in ex else default_valid(values)
  values = values[..., None] if not channels else values
  average, covered = _area_average(values, valid, DENSE_FACTOR)
  average = average[..., 0] if not channels else average
  if finish is not None:
    average = finish(average)
  return {
    name: average,
    f'{name}_mask': tf.cast(covered, tf.float32),
    f'has_{name}': tf.constant(1.0),
  }


def _dense_scalar_target(
  task: tasks_lib.Task, ex: Mapping[str, tf.Tensor], raw: Mapping[str, Any], grid: tuple[int, int]
) -> Batch:
  """A positive map (depth, disparity): the block average of its valid (> 0) samples."""
  del raw
  return _dense_target(task, ex, grid, lambda values: values > 0)


def _dense_vector_target(
  task: tasks_lib.Task, ex: Mapping[str, tf.Tensor], raw: Mapping[str, Any], grid: tuple[int, int]
) -> Batch:
  """A direction map (normals): the block average, scaled back to unit length."""
  del raw
  unit = lambda v: tf.math.divide_no_nan(v, tf.norm(v, axis=-1, keepdims=True))
  return _dense_target(task, ex, grid, lambda values: tf.ones(tf.shape(values)[:2], tf.bool), unit)


# The batch entries of a task (`tasks.Task.batch_keys`) by kind: `(task, ex, raw, grid)`,
# where `ex` is the augmented example (dense fields at DENSE_FACTOR x the grid) and `raw`
# the TFDS example (image-level labels).
KIND_TARGETS = {
  'image_class': _image_class_target,
  'dense_scalar': _dense_scalar_target,
  'dense_vector': _dense_vector_target,
}


def _targets(
  ex: Mapping[str, tf.Tensor],
  raw: Mapping[str, Any],
  *,
  config: ml_collections.ConfigDict,
  anchors: np.ndarray,
  grid: tuple[int, int],
  image: tf.Tensor | None = None,
) -> Batch:
  """Normalised image, box targets, dense targets and presence flags of one example.

  `image`, when given, is the model input already (`preprocess_image`); otherwise
  `ex['image']` (resized, in [0, 1]) is normalised.
  """
  data = config.data
  image = normalize_image(ex['image']) if image is None else image
  num = tf.minimum(tf.shape(ex['boxes'])[0], data.max_boxes)
  pad = [[0, data.max_boxes - num]]
  gt_boxes = tf.pad(ex['boxes'][:num], pad + [[0, 0]])
  gt_labels = tf.pad(ex['labels'][:num], pad)
  gt_mask = tf.range(data.max_boxes) < num
  gt_boxes = tf.ensure_shape(gt_boxes, [data.max_boxes, 4])
  gt_labels = tf.ensure_shape(gt_labels, [data.max_boxes])
  # Match the real boxes only: the cost grows with the number of rows, and the padded
  # ones would only be masked out (3.5x faster on typical images than all max_boxes).
  box_t, cls_t = matching.match_and_encode(
    ex['boxes'][:num],
    ex['labels'][:num],
    tf.ones([num], tf.bool),
    anchors,
    pos_iou=config.loss.match_pos_iou,
    neg_iou=config.loss.match_neg_iou,
    variances=tuple(config.model.ssd.variances),
  )
  out = {
    'image': tf.ensure_shape(tf.cast(image, tf.float32), [*data.image_size, 3]),
    'box_targets': box_t,
    'cls_targets': tf.cast(cls_t, tf.int32),
    'gt_boxes': gt_boxes,
    'gt_labels': gt_labels,
    'gt_mask': gt_mask,
  }
  for task in tasks_lib.parse(config.model):
    out.update(KIND_TARGETS[task.kind](task, ex, raw, grid))
  return out


def _epoch_stream(
  base: tf.data.Dataset, size: int, seed: tf.Tensor, buffer: int, start: int
) -> tf.data.Dataset:
  """Infinite `(position, raw)` stream of shuffled epochs, from element `start` on."""
  first_epoch, offset = divmod(start, size)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    epoch_seed = seed * 1_000_003 + e  # A different, reproducible order per epoch.
    return base.shuffle(min(buffer, size), seed=epoch_seed, reshuffle_each_iteration=False)

  epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  return epochs.enumerate(start=first_epoch * size).skip(offset)


def _mixture_choices(weights: Sequence[float], seed: int, block: int) -> tf.Tensor:
  """Dataset indices of elements `[block * B, (block + 1) * B)` of a mixture."""
  cum = tf.constant(np.cumsum(weights) / np.sum(weights), tf.float32)
  u = tf.random.stateless_uniform([_MIX_BLOCK], tf.stack([tf.constant(seed, tf.int64), block]))
  index = tf.minimum(tf.searchsorted(cum, u, side='right'), len(weights) - 1)
  return tf.cast(index, tf.int64)


def _sources(config: ml_collections.ConfigDict) -> list[tuple[str, str | None, float]]:
  data = config.data
  sources = [(data.name, data.builder_config, float(data.weight))]
  sources += [(n, c, float(wt)) for n, c, wt in data.mixture]
  return sources


def create_train_dataset(
  config: ml_collections.ConfigDict,
  *,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  start_step: int = 0,
) -> tf.data.Dataset:
  """Infinite, augmented training batches of this host.

  The global stream is `S = data.train_shards` (0: one per process) independent
  shard streams; each global batch takes `B / S` consecutive elements of every shard,
  in shard order, and host `i` of `P` builds the shards `[i * S / P, (i + 1) * S / P)`.
  So with `S` fixed, the global batches do not depend on the number of hosts: a run
  on 2 hosts sees the same batches as a run on 1 (and a checkpoint moves between them).

  Args:
    config: the experiment config (uses `data`, `model`, `loss`, `train.batch_size`).
    seed: run seed (data order, mixture draws and augmentation).
    process_index: this host (default `jax.process_index()`).
    process_count: number of hosts (default `jax.process_count()`).
    start_step: first batch to produce; the stream from there equals an uninterrupted
      run's (for resuming a trainer).

  Returns:
    A dataset of host batches of `config.train.batch_size // process_count` examples.
  """
  index, count = _host(process_index, process_count)
  host_batch = _host_batch(config.train.batch_size, count, 'train.batch_size')
  shards = int(config.data.get('train_shards', 0) or count)
  if shards % count or host_batch % (shards // count):
    raise ValueError(
      f'data.train_shards {shards} must be a multiple of the {count} processes and divide '
      f'train.batch_size {config.train.batch_size}.'
    )
  per_host = shards // count
  shard_batch = host_batch // per_host
  batched = [
    _shard_stream(config, seed, shard, shards, start_step * shard_batch).batch(
      shard_batch, drop_remainder=True
    )
    for shard in range(index * per_host, (index + 1) * per_host)
  ]
  if len(batched) == 1:
    ds = batched[0]
  else:
    concat = lambda *parts: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *parts)
    ds = tf.data.Dataset.zip(tuple(batched)).map(concat)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _shard_stream(
  config: ml_collections.ConfigDict, seed: int, shard: int, shards: int, start: int
) -> tf.data.Dataset:
  """Shard `shard` of `shards`' infinite stream of training examples, from element `start`.

  Shard 0 keeps the run seed, so a one-shard run's stream does not change with
  `train_shards`; shard `j` draws its order, mixture and augmentation from
  `seed + j * 2**20`.
  """
  seed = seed + (shard << 20)
  data = config.data
  image_size, grid, dense_size, anchors = _geometry(config)
  sources = _sources(config)
  # Elements each dataset has already contributed before `start`.
  if len(sources) == 1:
    consumed = [start]
  else:
    weights = [w for _, _, w in sources]
    counts = np.zeros(len(sources), np.int64)
    for block in range(start // _MIX_BLOCK):
      counts += np.bincount(_mixture_choices(weights, seed, block).numpy(), minlength=len(sources))
    rest = _mixture_choices(weights, seed, start // _MIX_BLOCK).numpy()[: start % _MIX_BLOCK]
    consumed = list(counts + np.bincount(rest, minlength=len(sources)))

  streams = []
  for k, (name, builder_config, _) in enumerate(sources):
    builder = get_builder(name, builder_config, data_dir=data.data_dir, manual_dir=data.manual_dir)
    split = data.train_split if k == 0 else 'train'
    total = builder.info.splits[split].num_examples
    if k == 0:
      total = max(1, int(round(total * data.train_fraction)))
    shard_split, size = _host_slice(split, total, shard, shards, drop_remainder=True)
    if size == 0:
      raise ValueError(f'{name}: {total} training examples for {shards} shards.')
    features = builder.info.features
    lazy = _lazy_keys(config, features)
    decoders = {key: tfds.decode.SkipDecoding() for key in lazy}
    base = builder.as_dataset(split=shard_split, shuffle_files=False, decoders=decoders)
    source_seed = seed * 100 + k
    stream = _epoch_stream(
      base, size, tf.constant(source_seed, tf.int64), data.shuffle_buffer, int(consumed[k])
    )

    def process(position, raw, features=features, source_seed=source_seed, lazy=lazy):
      ex = _decode(raw, features, lazy)
      if data.augment:
        ex = augment.augment_example(
          ex,
          tf.stack([tf.constant(source_seed, tf.int64), position]),
          image_size=image_size,
          dense_size=dense_size,
          random_crop=data.crop,
          random_flip_lr=data.flip,
          jitter=dict(data.color_jitter) if data.color_jitter else None,
        )
      else:
        ex = augment.resize(ex, image_size, dense_size)
      out = _targets(ex, raw, config=config, anchors=anchors, grid=grid)
      for key in ('gt_boxes', 'gt_labels', 'gt_mask'):
        del out[key]  # Training needs only the encoded targets.
      return out

    streams.append(stream.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))

  if len(streams) == 1:
    ds = streams[0]
  else:
    weights = [w for _, _, w in sources]
    first_block = start // _MIX_BLOCK
    choices = (
      tf.data.Dataset.range(first_block, np.iinfo(np.int64).max)
      .map(lambda b: _mixture_choices(weights, seed, b))
      .unbatch()
      .skip(start % _MIX_BLOCK)
    )
    ds = tf.data.Dataset.choose_from_datasets(streams, choices)
  return ds


def create_eval_dataset(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tf.data.Dataset:
  """Finite evaluation batches of this host, padded so every host runs as many batches.

  Args:
    config: the experiment config (uses `data`, `model`, `loss`, `eval.batch_size`).
    split: TFDS split name (e.g. 'validation', 'test').
    process_index: this host (default `jax.process_index()`).
    process_count: number of hosts (default `jax.process_count()`).

  Returns:
    A dataset of host batches of `config.eval.batch_size // process_count` examples with
    the evaluation extras; padding examples have `valid = 0`.
  """
  index, count = _host(process_index, process_count)
  data = config.data
  host_batch = _host_batch(config.eval.batch_size, count, 'eval.batch_size')
  image_size, grid, dense_size, anchors = _geometry(config)
  builder = get_builder(
    data.name, data.builder_config, data_dir=data.data_dir, manual_dir=data.manual_dir
  )
  total = builder.info.splits[split].num_examples
  shard, size = _host_slice(split, total, index, count, drop_remainder=False)
  # Every host runs the batches of the largest share.
  num_batches = math.ceil(math.ceil(total / count) / host_batch)
  features = builder.info.features
  lazy = _lazy_keys(config, features)
  decoders = {key: tfds.decode.SkipDecoding() for key in lazy}
  ds = builder.as_dataset(split=shard, shuffle_files=False, decoders=decoders)

  def process(raw):
    ex = _decode(raw, features, lazy)
    orig_size = tf.shape(ex['image'])[:2]
    # The model input exactly as `rock_jax.detect` makes it from a photo.
    image = preprocess_image(ex['image'], image_size)
    ex = {k: v for k, v in ex.items() if k != 'image'}
    ex = augment.resize(ex, image_size, dense_size)  # The dense targets.
    out = _targets(ex, raw, config=config, anchors=anchors, grid=grid, image=image)
    out['image_id'] = tf.cast(raw.get('image_id', tf.constant(-1, tf.int64)), tf.int64)
    out['orig_size'] = tf.cast(orig_size, tf.int32)
    out['valid'] = tf.constant(1.0)
    return out

  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = num_batches * host_batch - size
  if padding:
    zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(zeros).repeat(padding))
  ds = ds.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Same batches for the same seed, whatever the timing.
  return options
