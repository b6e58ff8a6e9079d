"""§1 of issue #11: object-crop pretraining of the demo's backbone, in `init_backbone` format."""

import json
import os
import subprocess
import sys

import cached_env
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from rock_jax import checkpoints
from rock_jax.datasets import object_crops, rooms_render, synthetic_rooms
from rock_jax.models import detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_crop_scenes_are_not_detection_scenes():
  # Detection examples use the entropy [seed, split, index]; crops prepend CROP_ENTROPY.
  for seed in (0, 1):
    for split in range(3):
      detection = np.random.default_rng([seed, split, 0]).integers(1 << 62, size=4)
      for crop_split in object_crops.SPLITS:
        crop = object_crops.scene_rng(seed, crop_split, 0).integers(1 << 62, size=4)
        assert not np.array_equal(detection, crop)
  seeds = {c.seed for c in synthetic_rooms.SyntheticRooms.BUILDER_CONFIGS}
  assert object_crops.CROP_ENTROPY not in seeds


def test_scene_crops_labels_and_sizes():
  crops, labels = object_crops.render_crops(0, 'train', 6, height=72, width=96, size=24)
  assert crops.dtype == np.uint8 and crops.shape[1:] == (24, 24, 3)
  assert len(crops) == len(labels) > 0
  assert set(labels.tolist()) <= set(range(len(rooms_render.CLASSES) + 1))
  assert object_crops.CLASS_NAMES[object_crops.BACKGROUND] == 'background'
  # Deterministic by (seed, split, index); the held-out split is other scenes.
  again, _ = object_crops.render_crops(0, 'train', 6, height=72, width=96, size=24)
  np.testing.assert_array_equal(crops, again)
  test, _ = object_crops.render_crops(0, 'test', 6, height=72, width=96, size=24)
  assert not np.array_equal(crops[: len(test)], test[: len(crops)])


@pytest.mark.slow
def test_smoke_pretraining_loads_through_init_backbone(tmp_path):
  workdir = tmp_path / 'pretrain'
  command = [
    sys.executable,
    '-m',
    'rock_jax.tools.pretrain_backbone',
    '--smoke',
    '--config=configs/synthetic.py:smoke',
    f'--workdir={workdir}',
  ]
  env = cached_env.subprocess_env(tmp_path / 'xla_cache', REPO)
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert 0.0 <= metrics['held_out_top1'] <= 1.0 and metrics['num_held_out_crops'] > 0
  assert metrics['steps'] == 3 and len(metrics['curve']) == 3

  # The detector that `--config.init_backbone` builds takes every backbone leaf from it,
  # BatchNorm statistics included, and nothing else.
  saved = checkpoints.load_backbone(str(workdir / 'backbone'))
  config = synthetic.get_config('smoke')
  config.model.backbone.freeze_bn_stats = True
  model = detector.build_model(config)
  h, w = config.data.image_size
  fresh = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, h, w, 3)), train=False))
  merged = checkpoints.merge_backbone(fresh, saved)
  for collection in ('params', 'batch_stats'):
    got = jax.tree.leaves(merged[collection]['backbone'])
    want = jax.tree.leaves(saved[collection])
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
      np.testing.assert_array_equal(a, b)
  # BN statistics were learned (not the init's zeros and ones).
  stem = saved['batch_stats']['stem_bn']
  assert np.abs(np.asarray(stem['mean'])).max() > 0
  np.testing.assert_array_equal(
    merged['params']['ssd']['cls0']['kernel'], fresh['params']['ssd']['cls0']['kernel']
  )

  # A rerun leaves a finished workdir alone.
  again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert again.returncode == 0 and 'already pretrained' in again.stdout
