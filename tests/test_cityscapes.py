"""Tests for the Cityscapes builder (`cityscapes_rock`) on tiny original-format PNGs."""

import os

import fake_datasets as fd
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rock_jax.datasets import cityscapes, files

H, W = fd.CS_H, fd.CS_W


def _build(manual, data_dir):
  builder = tfds.builder('cityscapes_rock', data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('cs')
  truth = fd.write_cityscapes(str(root / 'manual'))
  builder = _build(root / 'manual', root / 'data')
  examples = {
    s: {e['frame'].decode(): e for e in tfds.as_numpy(builder.as_dataset(split=s))}
    for s in ('train', 'validation', 'test')
  }
  return builder, examples, truth


def test_registered_name_does_not_clash_with_tfds():
  assert cityscapes.CityscapesRock.name == 'cityscapes_rock'
  # TFDS' own `cityscapes` still imports and registers next to ours.
  import tensorflow_datasets.datasets.cityscapes.cityscapes_dataset_builder as tfds_cs

  assert tfds.builder_cls('cityscapes') is tfds_cs.Builder


def test_splits_ids_and_features(built):
  builder, examples, _ = built
  assert {s: builder.info.splits[s].num_examples for s in examples} == {
    'train': 2,
    'validation': 1,
    'test': 1,
  }
  assert 'normals' not in builder.info.features and 'scene' not in builder.info.features
  ids = [int(e['image_id']) for s in examples.values() for e in s.values()]
  assert len(set(ids)) == 4
  assert examples['validation']['frankfurt_000000_000294']['image_id'] == 1_000_000
  assert examples['train']['bochum_000000_000001']['city'] == b'bochum'


def test_disparity(built):
  _, examples, truth = built
  e = examples['train']['aachen_000000_000019']
  d = e['depth']
  assert d.shape == (H, W) and d.dtype == np.float32
  assert d[0, 0] == 0  # p = 0: invalid.
  assert d[0, 1200] == 20.0  # p = 1 + 256 * 20
  assert d[0, 1600] == 1.5  # p = 257 + 128
  np.testing.assert_allclose(
    d, cityscapes.disparity_from_png(truth['aachen_000000_000019']['disparity_png'])
  )


def test_instance_boxes(built):
  _, examples, truth = built
  for split in examples.values():
    for stem, e in split.items():
      got = sorted(
        (cityscapes.CLASS_NAMES[int(k)], tuple(b))
        for k, b in zip(e['objects']['label'], e['objects']['bbox'], strict=True)
      )
      want = sorted((n, tuple(fd.pixel_box(b, H, W))) for n, b in truth[stem]['objects'])
      assert [n for n, _ in got] == [n for n, _ in want]  # Crowd 'car' group skipped.
      np.testing.assert_allclose([b for _, b in got], [b for _, b in want], atol=1e-6)


def test_class_list():
  assert cityscapes.CLASS_NAMES == (
    'bicycle', 'bus', 'car', 'motorcycle', 'person', 'rider', 'train', 'truck',
  )  # fmt: skip
  assert cityscapes.CLASSES['motorcycle'] == 32


def test_bad_inputs(tmp_path):
  root = tmp_path / 'manual'
  fd.write_cityscapes(str(root))
  ids = root / 'gtFine' / 'val' / 'frankfurt' / 'frankfurt_000000_000294_gtFine_instanceIds.png'
  fd.write_png(str(ids), np.zeros((H, W), np.uint8))
  with pytest.raises(files.DataError, match='instanceIds.png: PNG has bit depth 8, expected 16'):
    _build(root, tmp_path / 'data')
  os.remove(ids)
  with pytest.raises(files.DataError, match='instanceIds.png: missing file'):
    _build(root, tmp_path / 'data')
  assert not os.path.exists(tmp_path / 'data' / 'cityscapes_rock' / '1.0.0')
