"""Tests of the reliability fixes of issue #17: checkpoints that are really good.

Damaged newest steps (missing or truncated files, half-deleted folders, non-finite
values) are skipped with one warning line and never deleted; a checkpoint of another
model fails in one line naming the first leaf; a changed config needs
`accept_config_changes`; the trainer never saves a non-finite state. Small pytrees
stand in for the train state except in the trainer tests, which run the real loop
on hand-made batches (as `test_train.py` does).
"""

import glob
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
import test_train

from rock_jax import checkpoints, eval_loop, input_pipeline, train, validate


def small_state(scale: float = 1.0) -> dict:
  return {
    'params': {'w': np.arange(6, dtype=np.float32).reshape(2, 3) * scale},
    'batch_stats': {'mean': np.ones(3, np.float32) * scale},
    'step': np.int32(0),
  }


def small_config(lr: float = 1e-3, num_steps: int = 10) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {'seed': 0, 'train': {'learning_rate': lr, 'num_steps': num_steps}, 'model': {'width': 3}}
  )


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def save_steps(workdir, steps, state_of=lambda step: small_state(step), config=None):
  manager = checkpoints.create_manager(
    checkpoints.checkpoint_dir(workdir), keep=10, async_save=False
  )
  for step in steps:
    checkpoints.save(manager, step, state_of(step), config or small_config())
  manager.wait_until_finished()
  manager.close()
  return checkpoints.checkpoint_dir(workdir)


def damage(step_dir, how: str) -> None:
  """Damages a step folder as a kill, a bad disk or a half-finished delete would."""
  if how == 'manifest_missing':
    os.remove(step_dir / 'state' / 'manifest.ocdbt')
  elif how == 'manifest_truncated':
    with open(step_dir / 'state' / 'manifest.ocdbt', 'r+b') as f:
      f.truncate(20)
  elif how == 'data_truncated':
    for path in glob.glob(str(step_dir / 'state' / 'd' / '*')):
      with open(path, 'r+b') as f:
        f.truncate(10)
  elif how == 'state_missing':
    for path in sorted(glob.glob(str(step_dir / 'state' / '**'), recursive=True), reverse=True):
      os.remove(path) if os.path.isfile(path) else os.rmdir(path)
  elif how == 'half_deleted':  # Orbax's rmtree cut short: metadata gone, data left.
    os.remove(step_dir / 'state' / '_METADATA')
    os.remove(step_dir / 'config' / 'metadata')
  else:
    raise ValueError(how)


def files_of(folder) -> list[str]:
  return sorted(os.path.relpath(p, folder) for p in glob.glob(f'{folder}/**', recursive=True))


DAMAGES = ['manifest_missing', 'manifest_truncated', 'data_truncated', 'state_missing']


# Orbax's asyncio loop, closed after a failed restore, reports 'Event loop is closed' from
# a coroutine finalizer at garbage collection; the trainer's own results are what is tested.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('how', [*DAMAGES, 'half_deleted'])
def test_resume_skips_a_damaged_latest_step_and_moves_it_aside(tmp_path, how, caplog):
  directory = save_steps(tmp_path, [1, 2, 3])
  damage(directory / '3', how)
  before = files_of(directory / '3')
  manager = checkpoints.create_manager(directory, keep=10, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, step = checkpoints.restore_latest_good(manager, abstract(small_state()))
  assert step == 2 and manager.latest_step() == 2
  np.testing.assert_array_equal(state['params']['w'], small_state(2)['params']['w'])
  skipped = [r.getMessage() for r in caplog.records if 'Skipping checkpoint' in r.getMessage()]
  assert len(skipped) == 1 and '\n' not in skipped[0], skipped
  assert 'step 3' in skipped[0] and 'moved to' in skipped[0]
  # Moved aside whole, not deleted.
  assert not (directory / '3').exists()
  assert files_of(tmp_path / checkpoints.DAMAGED / '3') == before
  # The next save of step 3 is not shadowed by the damaged folder.
  checkpoints.save(manager, 3, small_state(3), small_config())
  manager.wait_until_finished()
  assert manager.latest_step() == 3
  manager.close()


def test_non_finite_checkpoint_is_never_restored(tmp_path, caplog):
  def state_of(step):
    state = small_state(step)
    if step == 2:
      state['params']['w'][0, 0] = np.inf
      state['batch_stats']['mean'][1] = np.nan
    return state

  directory = save_steps(tmp_path, [1, 2], state_of)
  manager = checkpoints.create_manager(directory, keep=10, async_save=False)
  with caplog.at_level(logging.WARNING):
    _, step = checkpoints.restore_latest_good(manager, abstract(small_state()))
  manager.close()
  assert step == 1
  assert '2 of 9 values are not finite' in caplog.text


def test_detect_and_eval_loading_fall_back_and_leave_the_step_in_place(tmp_path, caplog):
  directory = save_steps(tmp_path, [1, 2, 3])
  damage(directory / '3', 'data_truncated')
  with caplog.at_level(logging.WARNING):
    found, step, variables = checkpoints.load_checkpoint(tmp_path)
  assert (found, step) == (directory, 2)
  np.testing.assert_array_equal(variables['params']['w'], small_state(2)['params']['w'])
  assert 'Skipping checkpoint step 3' in caplog.text and 'left in place' in caplog.text
  assert (directory / '3' / 'state').is_dir()
  # A step folder named explicitly is not replaced by another one.
  with pytest.raises(checkpoints.CheckpointError, match=r'3: cannot restore: ') as e:
    checkpoints.load_checkpoint(directory / '3')
  assert '\n' not in str(e.value)


def test_half_deleted_folders_are_skipped_when_listing(tmp_path):
  directory = save_steps(tmp_path, [1, 2])
  damage(directory / '2', 'half_deleted')
  assert checkpoints.resolve_checkpoint(tmp_path) == (directory, 1)
  assert checkpoints.load_config(tmp_path).train.num_steps == 10
  with pytest.raises(checkpoints.CheckpointError, match='incomplete checkpoint') as e:
    checkpoints.resolve_checkpoint(directory / '2')
  assert '\n' not in str(e.value)


def test_another_model_fails_in_one_line_naming_the_first_leaf(tmp_path):
  directory = save_steps(tmp_path, [1])
  wider = small_state()
  wider['params']['w'] = np.zeros((2, 4), np.float32)
  manager = checkpoints.create_manager(directory, keep=10, async_save=False)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.restore_latest_good(manager, abstract(wider))
  manager.close()
  message = str(e.value)
  assert '\n' not in message and len(message) < 400
  assert 'params/w has shape (2, 3) in the checkpoint, (2, 4) in the model' in message
  assert (directory / '1').is_dir()  # Not damaged: left alone.


def test_changed_config_fails_unless_accepted(tmp_path, caplog):
  directory = save_steps(tmp_path, [1], config=small_config())
  manager = checkpoints.create_manager(directory, keep=10, async_save=False)
  target = abstract(small_state())
  changed = small_config(lr=1e-2, num_steps=20)
  changed.seed = 1
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.restore_latest_good(manager, target, config=changed)
  message = str(e.value)
  assert '\n' not in message and '--accept_config_changes' in message
  assert 'train.learning_rate: 0.001 -> 0.01' in message and 'seed: 0 -> 1' in message
  assert 'num_steps' not in message  # Extending a run is not a change of what it trains.
  with caplog.at_level(logging.WARNING):
    _, step = checkpoints.restore_latest_good(
      manager, target, config=changed, accept_config_changes=True
    )
  assert step == 1 and 'train.learning_rate: 0.001 -> 0.01' in caplog.text
  # Only the step count changed: resumes without a word.
  assert checkpoints.restore_latest_good(manager, target, config=small_config(num_steps=30))[1] == 1
  manager.close()


def test_task_coverage_warns_once_per_task_without_valid_targets(caplog):
  coverage = validate.TaskCoverage(['scene', 'depth', 'normals'], num_batches=2)
  batch = {
    'has_scene': np.ones(2, np.float32),
    'depth_mask': np.zeros((2, 3, 4), np.float32),
    'has_depth': np.ones(2, np.float32),
    'normals_mask': np.ones((2, 3, 4), np.float32),
    'has_normals': np.zeros(2, np.float32),  # Masked pixels, but no image has normals.
  }
  with caplog.at_level(logging.WARNING):
    for _ in range(5):
      coverage.update(batch)
  warnings = [r.getMessage() for r in caplog.records if 'no valid target' in r.getMessage()]
  assert coverage.warned == ['depth', 'normals'] and len(warnings) == 2
  assert "'depth'" in warnings[0] and 'first 2 batches' in warnings[0]


# ------------------------------------------------------------------ the trainer


class FakeEvaluator:
  """Stands in for `eval_loop.Evaluator` (no evaluation data is built)."""

  panels = []  # Reported besides the results: nothing here.
  coco = None
  class_names = ('chair',)

  def __init__(self, config, model, mesh):
    del config, model, mesh

  def run(self, state, split, *, step, panels_dir=None):
    del state, split, step, panels_dir
    return {'mAP@0.5': 0.0}


def run_trainer(workdir, config, batches, **kwargs):
  def fake_train_dataset(cfg, *, seed, process_index, process_count, start_step):
    del cfg, seed, process_index, process_count
    return test_train.FakeDataset(batches[start_step:])

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(input_pipeline, 'create_train_dataset', fake_train_dataset)
    patch.setattr(eval_loop, 'Evaluator', FakeEvaluator)
    return train.train_and_evaluate(config, str(workdir), mesh=test_train.mesh_of(1), **kwargs)


# Orbax's asyncio loop, closed after a failed restore, reports 'Event loop is closed' from
# a coroutine finalizer at garbage collection; the trainer's own results are what is tested.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.slow
def test_trainer_never_saves_a_non_finite_state(tmp_path, caplog):
  """A huge learning rate: finite loss, non-finite update; step 1 stays the last good."""
  config = test_train.make_config()
  config.train.num_steps = 1
  config.train.checkpoint_every = 1
  config.train.eval_every = 0
  config.train.async_checkpoints = False
  batches = [test_train.fake_batch(config, k) for k in range(3)]
  for batch in batches:
    batch['depth_mask'][:] = 0  # All-invalid depth: warned about.
  with caplog.at_level(logging.WARNING):
    run_trainer(tmp_path, config, batches)
  assert "Task 'depth' has no valid target in the first 1 batches" in caplog.text
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1']

  config.train.num_steps = 3
  config.train.learning_rate = float('inf')
  with pytest.raises(train.NonFiniteLossError) as e:
    run_trainer(tmp_path, config, batches, accept_config_changes=True)
  message = str(e.value)
  assert 'The state after step 2 has' in message and 'not saved' in message
  assert 'the last good checkpoint is step 1' in message and '\n' not in message
  steps = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  assert steps == ['1']
  _, step, variables = checkpoints.load_checkpoint(tmp_path)
  assert step == 1 and checkpoints.count_nonfinite(variables)[0] == 0

  # No checkpoint at all yet: the message says so instead of 'step None'.
  config.train.num_steps = 1
  with pytest.raises(train.NonFiniteLossError, match='no checkpoint was saved yet'):
    run_trainer(tmp_path / 'fresh', config, batches)
  # ... and the failed start left nothing behind.
  assert not (tmp_path / 'fresh').exists()


# ------------------------------------------------------------------ no silent misreads


def test_detect_scales_16_bit_png_greyscale_and_rgb(tmp_path):
  import tensorflow as tf
  from PIL import Image

  from rock_jax import detect

  ramp = np.arange(0, 65536, 257 * 5, dtype=np.uint16)  # 0, 1285, ..., 65535: exact x/257.
  grey = np.tile(ramp, (4, 1))
  Image.fromarray(grey).save(tmp_path / 'grey16.png')
  with Image.open(tmp_path / 'grey16.png') as image:
    assert image.mode == 'I;16'  # The mode `convert('RGB')` used to clip at 255.
  got = detect.read_image(tmp_path / 'grey16.png')
  assert got.dtype == np.uint8 and got.shape == (4, ramp.size, 3)
  np.testing.assert_array_equal(got[..., 0], np.tile(ramp // 257, (4, 1)))
  np.testing.assert_array_equal(got[..., 0], got[..., 2])
  assert got.mean() < 200  # Not the saturated, near-white image of before.

  rgb = np.stack([grey, 65535 - grey, grey // 2], axis=-1).astype(np.uint16)
  (tmp_path / 'rgb16.png').write_bytes(tf.io.encode_png(rgb).numpy())
  got = detect.read_image(tmp_path / 'rgb16.png')
  np.testing.assert_allclose(got.astype(int), rgb.astype(float) / 257, atol=1)


def test_detect_decodes_every_input_before_anything_is_written(tmp_path):
  from PIL import Image

  from rock_jax import detect

  folder = tmp_path / 'images'
  folder.mkdir()
  Image.new('RGB', (32, 24), (10, 20, 30)).save(folder / 'a.png')
  data = (folder / 'a.png').read_bytes()
  (folder / 'b_cut.png').write_bytes(data[: len(data) - 30])  # The header still parses.
  with Image.open(folder / 'b_cut.png') as image:
    assert image.size == (32, 24)
  # Fails on the image, before the (missing) checkpoint is even looked at.
  with pytest.raises(detect.DetectError, match=r'cannot read image .*b_cut\.png') as e:
    detect.run(tmp_path / 'no_checkpoint', folder, tmp_path / 'out')
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'out').exists()


def test_nyuv2_wide_instance_ids_do_not_collide():
  from rock_jax.datasets import nyuv2

  labels = np.zeros((4, 8), np.uint16)
  instances = np.zeros((4, 8), np.uint16)
  labels[0, 0], instances[0, 0] = 5, 1025  # Class 0, instance 1025.
  labels[3, 7], instances[3, 7] = 6, 1  # Class 1, instance 1: the same key at stride 1024.
  boxes, classes = nyuv2.boxes_and_labels(labels, instances, {5: 0, 6: 1})
  assert classes.tolist() == [0, 1]
  np.testing.assert_allclose(boxes, [[0, 0, 0.25, 0.125], [0.75, 0.875, 1, 1]])


def test_nyuv2_instances_must_be_uint8(tmp_path):
  import fake_datasets as fd
  import h5py
  import tensorflow_datasets as tfds

  from rock_jax.datasets import files, nyuv2  # noqa: F401 - registers the builder.

  manual = tmp_path / 'manual'
  fd.write_nyu(str(manual))
  mat = manual / 'nyu_depth_v2_labeled.mat'
  with h5py.File(mat, 'r+') as f:
    wide = f['instances'][()].astype(np.uint16)
    del f['instances']
    f.create_dataset('instances', data=wide)
  builder = tfds.builder_cls('nyuv2')(config='official', data_dir=str(tmp_path / 'data'))
  with pytest.raises(files.DataError, match="key 'instances' has dtype uint16, expected uint8"):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
