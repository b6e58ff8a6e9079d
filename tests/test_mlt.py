"""Tests for the MLT / PBRS builder: streaming build, Beam (DirectRunner) build, bad input."""

import os

import fake_datasets as fd
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rock_jax.datasets import files, mlt

H, W = fd.MLT_H, fd.MLT_W


def _build(manual, data_dir, *, config=None, beam=False, file_format=None):
  kwargs = {'config': config} if config is not None else {}
  if file_format:
    kwargs['file_format'] = file_format
  builder = tfds.builder_cls('mlt')(data_dir=str(data_dir), **kwargs)
  dl = tfds.download.DownloadConfig(manual_dir=str(manual))
  if beam:
    beam_lib = pytest.importorskip('apache_beam')
    dl.beam_runner = beam_lib.runners.DirectRunner()
  builder.download_and_prepare(download_config=dl)
  return builder


def _examples(builder):
  return {
    e['view'].decode() + e['house'].decode(): e
    for e in tfds.as_numpy(builder.as_dataset(split='train'))
  }


@pytest.fixture(scope='module')
def manual(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mlt') / 'manual')
  return root, fd.write_mlt(root)


@pytest.fixture(scope='module')
def streamed(manual, tmp_path_factory):
  builder = _build(manual[0], tmp_path_factory.mktemp('mlt_data'))
  return builder, _examples(builder)


def _check_examples(builder, examples, truth):
  names = builder.info.features['objects']['label'].names
  assert 'scene' not in builder.info.features
  assert len(examples) == len(truth['views'])
  for k, (house, view) in enumerate(truth['views']):
    e = examples[view + house]
    assert e['image_id'] == mlt.image_id(f'{house}/{view}')
    np.testing.assert_allclose(e['depth'], truth['depths'][k], atol=1e-6)
    assert e['depth'][0, 0] == 0  # 0 mm stays invalid.
    normal, valid = truth['normals'][k]
    np.testing.assert_array_equal(e['normals_mask'], valid)
    np.testing.assert_allclose(e['normals'][100, 100], normal, atol=1e-4)
    want = {
      ('bed' if nyu40 == 4 else 'chair', tuple(fd.pixel_box(b, H, W)))
      for nyu40, b in truth['objects'][k]
    }
    got = {
      (names[int(lab)], tuple(b))
      for lab, b in zip(e['objects']['label'], e['objects']['bbox'], strict=True)
    }
    assert {n for n, _ in got} == {'bed', 'chair'}  # The window (NYU-40 id 9) is dropped.
    for name, box in want:
      match = [b for n, b in got if n == name]
      np.testing.assert_allclose(match[0], box, atol=1e-6)


def test_streamed_build(streamed, manual):
  builder, examples = streamed
  assert builder.info.splits['train'].num_examples == 3
  _check_examples(builder, examples, manual[1])


@pytest.mark.slow
def test_beam_build_matches_streamed(streamed, manual, tmp_path, monkeypatch):
  def no_streaming(*args, **kwargs):
    raise AssertionError('the Beam build must not stream in-process')

  monkeypatch.setattr(mlt.Mlt, '_generate_in_process', no_streaming)
  builder = _build(manual[0], tmp_path, beam=True)
  assert builder.info.splits['train'].num_examples == 3
  examples = _examples(builder)
  _check_examples(builder, examples, manual[1])
  for key, e in streamed[1].items():
    np.testing.assert_array_equal(examples[key]['image'], e['image'])
    np.testing.assert_array_equal(examples[key]['objects']['bbox'], e['objects']['bbox'])


def test_array_record_and_custom_instance_dir_and_classes(tmp_path):
  pytest.importorskip('array_record')
  root = str(tmp_path / 'manual')
  truth = fd.write_mlt(root, instance_dir='inst', suffix='objects')
  config = mlt.MltConfig(
    name='bed_only', instance_dir='inst', instance_suffix='objects', classes=(('bed', (4,)),)
  )
  builder = _build(root, tmp_path / 'data', config=config, file_format='array_record')
  assert builder.info.features['objects']['label'].names == ['bed']
  assert any(f.name.endswith('.array_record-00000-of-00001') for f in builder.data_path.iterdir())
  source = builder.as_data_source(split='train')
  assert len(source) == 3
  e = source[0]
  assert list(e['objects']['label']) == [0]
  np.testing.assert_allclose(e['objects']['bbox'][0], fd.pixel_box(truth['objects'][0][0][1], H, W))


def test_majority_category_labels_instance():
  inst = np.zeros((4, 4), np.uint8)
  inst[:2, :] = 1
  inst[3, 3] = 2
  cat = np.full((4, 4), 5, np.uint8)
  cat[0, 0] = 4  # 1 of 8 pixels of instance 1 disagrees.
  cat[3, 3] = 9
  lut = [-1] * 41
  lut[4], lut[5] = 0, 1
  boxes, labels = mlt.objects_from_maps(inst, cat, tuple(lut))
  np.testing.assert_array_equal(labels, [1])
  np.testing.assert_allclose(boxes[0], [0, 0, 0.5, 1])


def test_goodlist_lines():
  assert mlt.parse_goodlist_line('  \n') == []
  assert mlt.parse_goodlist_line('abc/000001\n') == [('abc', '000001')]
  with pytest.raises(files.DataError, match="goodlist.txt: bad line 'abc'"):
    mlt.parse_goodlist_line('abc', 'goodlist.txt')


def test_bad_inputs(tmp_path):
  root = str(tmp_path / 'manual')
  truth = fd.write_mlt(root)
  house, view = truth['views'][1]
  # A 8-bit depth PNG.
  depth_path = os.path.join(root, 'depth_v2', house, f'{view}_depth.png')
  fd.write_png(depth_path, np.zeros((H, W), np.uint8))
  with pytest.raises(files.DataError, match=f'{view}_depth.png: PNG has bit depth 8, expected 16'):
    _build(root, tmp_path / 'data')
  assert not os.path.exists(tmp_path / 'data' / 'mlt' / 'nyu40_17' / '1.0.0')
  # A normal map of the wrong size.
  fd.write_png(depth_path, np.zeros((H, W), np.uint16))
  fd.write_png(os.path.join(root, 'normal_v2', house, f'{view}_norm_camera.png'),
               np.zeros((H // 2, W // 2, 3), np.uint16))  # fmt: skip
  with pytest.raises(files.DataError, match='norm_camera.png: PNG size 320x240'):
    _build(root, tmp_path / 'data')
  # Normals with no valid mask.
  fd.write_png(os.path.join(root, 'normal_v2', house, f'{view}_norm_camera.png'),
               np.zeros((H, W, 3), np.uint16))  # fmt: skip
  os.remove(os.path.join(root, 'normal_v2', house, f'{view}_valid.png'))
  with pytest.raises(files.DataError, match='valid.png: missing file'):
    _build(root, tmp_path / 'data')
  # No instance folder.
  with pytest.raises(files.DataError, match='nowhere: missing folder'):
    _build(root, tmp_path / 'data', config=mlt.MltConfig(name='x', instance_dir='nowhere'))
  assert not os.path.exists(tmp_path / 'data' / 'mlt' / 'nyu40_17' / '1.0.0')
