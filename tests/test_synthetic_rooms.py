"""Tests of the procedural renderer and the `synthetic_rooms` TFDS builder."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rock_jax.datasets import rooms_layout, rooms_render, synthetic_rooms


def _render(seed: int, h: int = 48, w: int = 64) -> dict:
  return rooms_render.render_scene(np.random.default_rng(seed), h, w)


def test_render_is_deterministic_by_seed():
  a, b, c = _render(3), _render(3), _render(4)
  for key in ('image', 'depth', 'normals', 'boxes', 'labels'):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])


@pytest.mark.parametrize('seed', range(6))
def test_boxes_are_tight_extents_of_instance_masks(seed):
  out = _render(seed, 60, 80)
  assert out['boxes'].shape == (len(out['labels']), 4)
  assert len(out['labels']) > 0
  for box, obj in zip(out['boxes'], out['box_instances'], strict=True):
    mask = out['instances'] == obj
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    expected = [rows[0] / 60, cols[0] / 80, (rows[-1] + 1) / 60, (cols[-1] + 1) / 80]
    np.testing.assert_allclose(box, expected, atol=1e-6)
    assert mask.sum() >= rooms_render.MIN_AREA * 60 * 80


def test_dense_maps_are_valid():
  out = _render(1)
  assert out['depth'].dtype == np.float32 and out['normals'].dtype == np.float32
  assert (out['depth'] > 0).all() and (out['depth'] < 10).all()
  np.testing.assert_allclose(np.linalg.norm(out['normals'], axis=-1), 1.0, atol=1e-5)
  # Visible surfaces face the camera: the normal is against the viewing ray (z_cam = 1).
  assert (out['normals'][..., 2] < 1e-6).all()


def test_floor_depth_and_normal_in_an_empty_room():
  scene = rooms_layout.Scene(size=np.array([5.0, 5.0, 2.8]))
  for m in ('floor', 'walls', 'ceiling'):
    del m
    scene.material(rooms_layout.Material(np.full(3, 0.5), np.zeros(3), rooms_layout.PLAIN))
  pitch = np.radians(-30)  # Looking along +x, 30 degrees down, from 1.5 m.
  fwd = np.array([np.cos(pitch), 0.0, np.sin(pitch)])
  right = np.array([0.0, -1.0, 0.0])
  rot = np.stack([right, np.cross(fwd, right), fwd], axis=1)
  pos = np.array([1.0, 2.5, 1.5])
  h, w = 48, 64
  out = rooms_render._render(np.random.default_rng(0), scene, pos, rot, h, w)
  focal = 0.82 * w
  # Bottom-centre pixel: its ray hits the floor plane z = 0.
  v, u = h - 1, w // 2
  ray = rot @ np.array([(u + 0.5 - w / 2) / focal, (v + 0.5 - h / 2) / focal, 1.0])
  np.testing.assert_allclose(out['depth'][v, u], pos[2] / -ray[2], rtol=1e-4)
  # The floor's normal (world up) in the camera frame: y (down) negative, towards camera.
  np.testing.assert_allclose(out['normals'][v, u], rot.T @ [0.0, 0.0, 1.0], atol=1e-5)
  assert out['normals'][v, u, 1] < -0.8
  assert len(out['labels']) == 0


def test_class_frequencies_depend_on_scene():
  counts = {s: collections.Counter() for s in rooms_render.SCENES}
  for s in rooms_render.SCENES:
    for i in range(25):
      scene = rooms_layout.furnish(np.random.default_rng([7, i]), s)
      counts[s].update(rooms_render.CLASSES[k] for k in scene.labels)
  assert counts['bathroom']['toilet'] > 10
  assert all(counts[s]['toilet'] == 0 for s in rooms_render.SCENES if s != 'bathroom')
  assert counts['bedroom']['bed'] > 15 and counts['office']['bed'] == 0
  assert counts['office']['monitor'] > 3 * max(counts['kitchen']['monitor'], 1)
  assert counts['kitchen']['chair'] > counts['bathroom']['chair']


def test_builder_tiny(tmp_path):
  builder = synthetic_rooms.load_builder('tiny', data_dir=str(tmp_path))
  info = builder.info
  assert {k: v.num_examples for k, v in info.splits.items()} == {
    'train': 8, 'validation': 4, 'test': 4,
  }  # fmt: skip
  assert info.features['objects']['label'].names == list(rooms_render.CLASSES)
  assert info.features['scene'].names == list(rooms_render.SCENES)
  cfg = builder.builder_config
  ids = set()
  for ex in tfds.as_numpy(builder.as_dataset('validation')):
    ids.add(int(ex['image_id']))
    assert ex['image'].shape == (48, 64, 3) and ex['depth'].shape == (48, 64)
    assert ex['normals'].shape == (48, 64, 3) and ex['normals_mask'].dtype == bool
    # Stored examples are exactly the deterministic rendering of (seed, split, index).
    ref = synthetic_rooms.render_example(cfg, 'validation', int(ex['image_id']) - 1_000_000)
    np.testing.assert_array_equal(ex['image'], ref['image'])
    np.testing.assert_array_equal(ex['depth'], ref['depth'])
    np.testing.assert_allclose(ex['objects']['bbox'], ref['objects']['bbox'])
    np.testing.assert_array_equal(ex['objects']['label'], ref['objects']['label'])
    assert ex['scene'] == ref['scene']
  assert ids == {1_000_000 + i for i in range(4)}
