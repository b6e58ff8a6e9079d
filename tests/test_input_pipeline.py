"""Tests of the tf.data pipelines on the tiny synthetic rooms (built once per session)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from rock_jax import boxes, input_pipeline
from rock_jax.datasets import synthetic_rooms


class SyntheticRoomsRgb(synthetic_rooms.SyntheticRooms):
  """The tiny rooms with only image and boxes, like a dataset without auxiliary labels."""

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    features = {k: info.features[k] for k in ('image', 'objects', 'image_id')}
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

  def _generate_examples(self, split):
    for key, ex in super()._generate_examples(split):
      yield key, {k: ex[k] for k in ('image', 'objects', 'image_id')}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  synthetic_rooms.load_builder('tiny', data_dir=path)
  return path


def _config(data_dir, **data):
  config = base.smoke(base.get_base_config())
  config.model.num_classes = 11
  config.data.name = 'synthetic_rooms'
  config.data.builder_config = 'tiny'
  config.data.data_dir = data_dir
  config.data.image_size = (48, 64)
  config.data.shuffle_buffer = 8
  config.train.batch_size = 4
  config.eval.batch_size = 2
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _take(ds, n):
  return list(ds.take(n).as_numpy_iterator())


def test_train_batch_contract(data_dir):
  config = _config(data_dir)
  (batch,) = _take(
    input_pipeline.create_train_dataset(config, seed=0, process_index=0, process_count=1), 1
  )
  num_anchors = boxes.default_boxes(config.model, (48, 64)).shape[0]
  h, w = input_pipeline.conv5_size(config)
  assert (h, w) == (3, 4)
  expected = {
    'image': ((4, 48, 64, 3), np.float32), 'box_targets': ((4, num_anchors, 4), np.float32),
    'cls_targets': ((4, num_anchors), np.int32), 'scene': ((4,), np.int32),
    'depth': ((4, h, w), np.float32), 'depth_mask': ((4, h, w), np.float32),
    'normals': ((4, h, w, 3), np.float32), 'normals_mask': ((4, h, w), np.float32),
    'has_scene': ((4,), np.float32), 'has_depth': ((4,), np.float32),
    'has_normals': ((4,), np.float32),
  }  # fmt: skip
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  assert (batch['has_scene'] == 1).all() and (batch['has_depth'] == 1).all()
  assert (batch['cls_targets'] > 0).any() and batch['cls_targets'].max() <= 11
  # Depth in metres (a crop zooms by at most sqrt(10): depth / 3.2 at worst).
  valid = batch['depth_mask'] > 0
  assert valid.any() and (batch['depth'][valid] > 0.1).all() and (batch['depth'] < 10).all()
  norms = np.linalg.norm(batch['normals'], axis=-1)[batch['normals_mask'] > 0]
  np.testing.assert_allclose(norms, 1.0, atol=1e-4)
  assert abs(batch['image'].mean()) < 2.5


@pytest.mark.slow
def test_train_is_deterministic_and_resumable(data_dir):
  config = _config(data_dir)
  make = lambda seed, start=0: input_pipeline.create_train_dataset(
    config, seed=seed, process_index=0, process_count=1, start_step=start
  )
  a, b, c = _take(make(0), 6), _take(make(0), 6), _take(make(1), 6)
  for x, y in zip(a, b, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]['image'], c[0]['image'])
  # Resume at step 4 (past the first 8-example epoch): the same batches as before.
  resumed = _take(make(0, start=4), 2)
  for x, y in zip(a[4:], resumed, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_eval_sharding_and_padding(data_dir):
  config = _config(data_dir)
  config.eval.batch_size = 4  # 2 per host; validation has 4 examples -> 2 each, no pad.
  seen, lengths = [], []
  for index in range(2):
    batches = _take(
      input_pipeline.create_eval_dataset(config, 'test', process_index=index, process_count=2),
      100,
    )
    lengths.append(len(batches))
    for b in batches:
      assert b['image'].shape == (2, 48, 64, 3)
      assert b['gt_boxes'].shape == (2, config.data.max_boxes, 4)
      assert b['gt_mask'].dtype == bool and b['orig_size'].tolist() == [[48, 64]] * 2
      seen += b['image_id'][b['valid'] > 0].tolist()
  assert lengths[0] == lengths[1]
  assert sorted(seen) == [2_000_000 + i for i in range(4)]


@pytest.mark.slow
def test_eval_pads_uneven_hosts(data_dir):
  config = _config(data_dir)
  config.eval.batch_size = 6  # 3 per host, 2 real examples each: one padding example.
  for index in range(2):
    (b,) = _take(
      input_pipeline.create_eval_dataset(
        config, 'validation', process_index=index, process_count=2
      ),
      5,
    )
    np.testing.assert_array_equal(b['valid'], [1, 1, 0])
    assert not b['gt_mask'][2].any() and (b['image'][2] == 0).all()
  # 3 hosts and 4 examples: shares 2, 1, 1; everyone runs one batch of 2.
  config.eval.batch_size = 6
  valid = [
    _take(
      input_pipeline.create_eval_dataset(config, 'validation', process_index=i, process_count=3), 5
    )
    for i in range(3)
  ]
  assert [len(v) for v in valid] == [1, 1, 1]
  assert [int(v[0]['valid'].sum()) for v in valid] == [2, 1, 1]


def test_train_shards_differ_and_split_evenly(data_dir):
  assert input_pipeline._host_slice('train', 7, 1, 2, True) == ('train[3:6]', 3)
  assert input_pipeline._host_slice('test', 7, 0, 2, False) == ('test[0:4]', 4)
  assert input_pipeline._host_slice('test', 7, 1, 2, False) == ('test[4:7]', 3)
  config = _config(data_dir, augment=False)
  host = [
    _take(input_pipeline.create_train_dataset(config, seed=0, process_index=i, process_count=2), 2)
    for i in range(2)
  ]
  assert host[0][0]['image'].shape[0] == 2  # Host batch = 4 // 2.
  images = [{b['image'][j].tobytes() for b in h for j in range(2)} for h in host]
  assert len(images[0]) == 4 and not images[0] & images[1]  # Disjoint halves.


def test_train_fraction(data_dir):
  config = _config(data_dir, augment=False, train_fraction=0.5)
  batches = _take(
    input_pipeline.create_train_dataset(config, seed=0, process_index=0, process_count=1), 6
  )
  assert len({b['image'][j].tobytes() for b in batches for j in range(4)}) == 4


@pytest.mark.slow
def test_mixture_presence_flags(data_dir):
  config = _config(data_dir, mixture=(('synthetic_rooms_rgb', 'tiny', 1.0),))
  make = lambda start=0: input_pipeline.create_train_dataset(
    config, seed=0, process_index=0, process_count=1, start_step=start
  )
  batches = _take(make(), 8)
  flags = np.concatenate([b['has_depth'] for b in batches])
  assert 0.2 < flags.mean() < 0.8  # Both sources, weights 1:1.
  for b in batches:
    np.testing.assert_array_equal(b['has_scene'], b['has_depth'])
    np.testing.assert_array_equal(b['has_normals'], b['has_depth'])
    assert (b['depth_mask'][b['has_depth'] == 0] == 0).all()
  for x, y in zip(batches[5:], _take(make(start=5), 3), strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
