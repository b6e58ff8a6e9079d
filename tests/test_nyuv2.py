"""Tests for the NYUv2 builder on tiny files in the original formats (.mat v7.3 and v5, PNGs)."""

import os
import shutil
import subprocess
import sys

import fake_datasets as fd
import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rock_jax.datasets import files, nyuv2

H, W = fd.NYU_H, fd.NYU_W


def _build(manual_dir, data_dir, config='official'):
  builder = tfds.builder_cls('nyuv2')(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


def _examples(builder, split):
  return {int(e['nyu_index']): e for e in tfds.as_numpy(builder.as_dataset(split=split))}


def _link_manual(src, dst, names=('nyu_depth_v2_labeled.mat', 'splits.mat')):
  os.makedirs(dst, exist_ok=True)
  for name in names:
    os.symlink(os.path.join(src, name), os.path.join(dst, name))
  return dst


def _assert_no_dataset_left(data_dir, config):
  config_dir = os.path.join(data_dir, 'nyuv2', config)
  assert not os.path.exists(os.path.join(config_dir, '1.0.0'))
  leftovers = os.listdir(config_dir) if os.path.isdir(config_dir) else []
  assert not [d for d in leftovers if 'incomplete' in d], leftovers


@pytest.fixture(scope='module')
def nyu(tmp_path_factory):
  root = tmp_path_factory.mktemp('nyu')
  manual = str(root / 'manual')
  truth = fd.write_nyu(manual)
  return dict(root=root, manual=manual, truth=truth)


@pytest.fixture(scope='module')
def official(nyu):
  builder = _build(nyu['manual'], nyu['root'] / 'data')
  return builder, {s: _examples(builder, s) for s in ('train', 'test')}


def test_official_split_sizes_and_indices(official):
  builder, ex = official
  assert builder.info.splits['train'].num_examples == 6
  assert builder.info.splits['test'].num_examples == 2
  assert sorted(ex['train']) == list(fd.NYU_TRAIN)
  assert sorted(ex['test']) == list(fd.NYU_TEST)


def test_features_match_the_original_frames(official, nyu):
  _, ex = official
  truth = nyu['truth']
  for split in ('train', 'test'):
    for index, e in ex[split].items():
      i = index - 1
      assert e['image_id'] == index
      np.testing.assert_array_equal(e['image'], truth['images'][i])  # Axes untransposed.
      np.testing.assert_allclose(e['depth'], truth['depths'][i])
      assert e['sequence'].decode() == truth['sequences'][i]
      assert nyuv2.SCENE_TYPES[e['scene']] == truth['scene_types'][i]


def test_scene_ids_are_the_sorted_27_scene_types(official):
  _, ex = official
  assert len(nyuv2.SCENE_TYPES) == 27 and list(nyuv2.SCENE_TYPES) == sorted(nyuv2.SCENE_TYPES)
  assert ex['train'][1]['scene'] == 2  # bedroom
  assert ex['test'][8]['scene'] == 10  # excercise_room
  assert ex['test'][7]['scene'] == 1  # bathroom


def test_boxes_two_instances_noncontiguous_and_one_pixel(official, nyu):
  _, ex = official
  for split in ('train', 'test'):
    for index, e in ex[split].items():
      want = sorted(
        (nyuv2.CLASS_NAMES.index(name), tuple(fd.pixel_box(b, H, W)))
        for name, b in nyu['truth']['objects'][index - 1]
      )
      got = sorted(
        (int(k), tuple(b)) for k, b in zip(e['objects']['label'], e['objects']['bbox'], strict=True)
      )
      assert [k for k, _ in got] == [k for k, _ in want]  # No wall box, both chairs.
      np.testing.assert_allclose([b for _, b in got], [b for _, b in want], atol=1e-6)
  chair = nyuv2.CLASS_NAMES.index('chair')
  assert list(ex['train'][1]['objects']['label']).count(chair) == 2
  assert nyuv2.CLASS_NAMES.index('lamp') in ex['train'][1]['objects']['label']  # frame 0
  assert nyuv2.CLASS_NAMES.index('lamp') not in ex['train'][2]['objects']['label']


def test_normals_from_depth_recorded_and_sane(official):
  builder, ex = official
  assert builder.info.metadata['normals_source'] == 'depth'
  reloaded = tfds.builder_cls('nyuv2')(config='official', data_dir=builder.data_dir_root)
  assert reloaded.info.metadata['normals_source'] == 'depth'
  e = ex['train'][1]
  mask, n = e['normals_mask'], e['normals']
  assert not mask[:44].any() and not mask[:, 601:].any()  # Outside the valid area.
  assert not mask[205, 305]  # Raw-depth hole.
  assert mask[250, 320]
  np.testing.assert_allclose(np.linalg.norm(n[mask], axis=-1), 1.0, atol=1e-5)
  # z = 2 + 0.002 v (frame 0): analytic tangents of p(u, v) = ((u - cx) z / fx, (v - cy) z / fy, z).
  k = nyuv2.geometry.NYU_INTRINSICS
  u, v = 320, 250
  z = 2 + 0.002 * v
  d_du = np.array([z / k.fx, 0.0, 0.0])
  d_dv = np.array([(u - k.cx) * 0.002 / k.fx, (z + (v - k.cy) * 0.002) / k.fy, 0.002])
  expected = np.cross(d_du, d_dv)
  expected /= np.linalg.norm(expected)
  point = np.array([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z])
  expected = -expected if expected @ point > 0 else expected
  np.testing.assert_allclose(n[250, 320], expected, atol=1e-3)


def test_paper_generated_split_groups_sequences(nyu):
  config = nyuv2.NyuV2Config(name='paper_tiny', split_scheme='paper', val_size=2)
  builder = _build(nyu['manual'], nyu['root'] / 'data_paper', config=config)
  sizes = {s: builder.info.splits[s].num_examples for s in ('train', 'validation', 'test')}
  assert sizes == {'train': 4, 'validation': 2, 'test': 2}
  train = {e['sequence'] for e in _examples(builder, 'train').values()}
  val = {e['sequence'] for e in _examples(builder, 'validation').values()}
  assert not train & val
  assert sorted(s.decode() for s in val) == builder.info.metadata['val_scenes']
  assert builder.info.metadata['val_split_source'] == 'seed 0'


def test_scene_grouped_split_is_deterministic_and_exact():
  rng = np.random.default_rng(1)
  sequences = [f'scene_{k:03d}' for k in rng.integers(0, 60, 300)]
  indices = np.arange(1, 301)
  a = nyuv2.scene_grouped_split(indices, sequences, 40, seed=0)
  b = nyuv2.scene_grouped_split(indices, sequences, 40, seed=0)
  c = nyuv2.scene_grouped_split(indices, sequences, 40, seed=1)
  np.testing.assert_array_equal(a[1], b[1])
  assert a[2] != c[2]
  assert len(a[1]) == 40 and len(a[0]) == 260
  assert not {sequences[i - 1] for i in a[0]} & {sequences[i - 1] for i in a[1]}


def test_paper_with_val_split_file_and_eigen_normals(nyu, tmp_path):
  manual = _link_manual(nyu['manual'], str(tmp_path / 'manual'))
  with open(os.path.join(manual, 'val_split.txt'), 'w') as f:
    f.write('kitchen_0001\n\n')
  normals = fd.write_nyu_normals(manual)
  builder = _build(manual, tmp_path / 'data', config='paper')
  assert builder.info.metadata['normals_source'] == 'eigen'
  assert builder.info.metadata['val_scenes'] == ['kitchen_0001']
  assert sorted(_examples(builder, 'validation')) == [3, 4]
  train = _examples(builder, 'train')
  assert sorted(train) == [1, 2, 5, 6]
  e = train[5]
  png, mask = normals[4]
  want = png[100, 100] / 127.5 - 1
  np.testing.assert_allclose(e['normals'][100, 100], want / np.linalg.norm(want), atol=1e-6)
  np.testing.assert_array_equal(e['normals_mask'], mask > 0)
  assert np.all(e['normals'][:40, :40] == 0)


@pytest.mark.slow
def test_tfds_build_command_line(nyu, tmp_path):
  """The real `tfds build` command of the environment builds the dataset."""
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  run = subprocess.run(
    [
      tfds_cli,
      'build',
      'nyuv2/official',
      '--imports=rock_jax.datasets.nyuv2',
      f'--manual_dir={nyu["manual"]}',
      f'--data_dir={tmp_path}',
      '--max_examples_per_split=1',
    ],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    check=False,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  builder = tfds.builder_cls('nyuv2')(config='official', data_dir=str(tmp_path))
  assert builder.info.splits['train'].num_examples == 1


# ----------------------------------------------------------------------------- bad input


def _expect(match, fn, *args, **kwargs):
  with pytest.raises(files.DataError, match=match) as e:
    fn(*args, **kwargs)
  assert '\n' not in str(e.value)
  return str(e.value)


def test_missing_mat_fails_and_leaves_nothing(nyu, tmp_path):
  # (An empty manual dir is TFDS' own error, before the builder runs.)
  _link_manual(nyu['manual'], str(tmp_path / 'manual'), names=('splits.mat',))
  msg = _expect('missing file', _build, tmp_path / 'manual', tmp_path / 'data')
  assert 'nyu_depth_v2_labeled.mat' in msg
  _assert_no_dataset_left(tmp_path / 'data', 'official')


def test_truncated_mat(nyu, tmp_path):
  manual = _link_manual(nyu['manual'], str(tmp_path / 'manual'), names=('splits.mat',))
  src = os.path.join(nyu['manual'], 'nyu_depth_v2_labeled.mat')
  with open(src, 'rb') as f, open(os.path.join(manual, 'nyu_depth_v2_labeled.mat'), 'wb') as g:
    g.write(f.read(os.path.getsize(src) // 2))
  _expect('nyu_depth_v2_labeled.mat: .*truncated', _build, manual, tmp_path / 'data')
  _assert_no_dataset_left(tmp_path / 'data', 'official')


def test_missing_key_and_wrong_shape(tmp_path):
  path = str(tmp_path / 'x.mat')
  with h5py.File(path, 'w') as f:
    f.create_dataset('images', (2, 3, 64, 48), np.uint8)
  with files.open_mat_v73(path) as f:
    _expect(r"x.mat: missing key 'depths'", files.require_dataset, f, 'depths', (2,), path)
    _expect(
      r"x.mat: key 'images' has shape \(2, 3, 64, 48\), expected \('\*', 3, 640, 480\)",
      files.require_dataset,
      f,
      'images',
      (None, 3, 640, 480),
      path,
    )


def test_mid_build_failure_missing_normals_mask_leaves_nothing(nyu, tmp_path):
  manual = _link_manual(nyu['manual'], str(tmp_path / 'manual'))
  fd.write_nyu_normals(manual)
  os.remove(os.path.join(manual, 'normals_gt', 'masks', '0004.png'))  # Frame 5, train.
  msg = _expect('normals need their mask', _build, manual, tmp_path / 'data')
  assert 'masks/0004.png' in msg
  _assert_no_dataset_left(tmp_path / 'data', 'official')


def test_bad_splits(tmp_path):
  path = str(tmp_path / 'splits.mat')
  fd.write_splits(path, [1, 2, 3], [3, 4])
  _expect('splits.mat: trainNdxs and testNdxs overlap', files.load_splits, path, 8)
  fd.write_splits(path, [1, 2, 9], [4])
  _expect(r'splits.mat: trainNdxs index 9 outside 1..8', files.load_splits, path, 8)
  fd.write_splits(path, [0, 1], [4])
  _expect(r'outside 1..8', files.load_splits, path, 8)
  _expect('not a readable MATLAB v5', files.load_splits, __file__, 8)


def test_bad_png_bit_depth_and_size(tmp_path):
  path = str(tmp_path / 'n.png')
  fd.write_png(path, np.zeros((4, 5, 3), np.uint16))
  _expect('n.png: PNG has bit depth 16, expected 8', files.read_png, path, bit_depth=8, channels=3)
  fd.write_png(path, np.zeros((4, 5, 3), np.uint8))
  _expect(
    r'n.png: PNG size 5x4 \(WxH\), expected 640x480',
    files.read_png,
    path,
    bit_depth=8,
    channels=3,
    size=(480, 640),
  )
  _expect('n.png: PNG has 3 channels, expected 1', files.read_png, path, bit_depth=8, channels=1)
  out = files.read_png(path, bit_depth=8, channels=3, size=(4, 5))
  assert out.shape == (4, 5, 3) and out.dtype == np.uint8


def test_val_split_file_with_test_scene(nyu, tmp_path):
  manual = _link_manual(nyu['manual'], str(tmp_path / 'manual'))
  with open(os.path.join(manual, 'val_split.txt'), 'w') as f:
    f.write('bathroom_0001\n')
  _expect("val_split.txt: scene 'bathroom_0001' belongs to the test", _build, manual,
          tmp_path / 'data', config='paper')  # fmt: skip
  shutil.rmtree(tmp_path / 'data', ignore_errors=True)


def test_paper_split_that_would_take_every_train_image_is_a_clear_error(nyu, tmp_path):
  """6 official train images, all in a validation split of 122: no silent empty split."""
  with pytest.raises(files.DataError) as error:
    _build(nyu['manual'], tmp_path / 'data', config='paper')
  text = str(error.value)
  assert 'leaves 0 train and 6 validation images' in text and 'official' in text
  assert 'No examples were yielded' not in text
  _assert_no_dataset_left(str(tmp_path / 'data'), 'paper')
