"""Tests of `rock_jax.checkpoints`: retention, sharded restore, resume order and handoff.

The handoff test builds the real parameter trees of two smoke detectors through
`jax.eval_shape` (no compilation) and fills them with random numbers: an MLT-style
model (5 classes, depth and normals) is saved, then loaded into a NYUv2-style one
(7 classes, plus scene) with the fine-tuning config's exclusion regexes.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import nyuv2_finetune, synthetic
from rock_jax import checkpoints, optim, train
from rock_jax.models import detector


def random_variables(config, seed: int):
  """The detector's variables, shapes from eval_shape, random values (host numpy)."""
  model = detector.build_model(config)
  height, width = config.data.image_size
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, height, width, 3)), train=False)
  )
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), dict(abstract))


def make_state(config, variables):
  return train.TrainState.create(
    apply_fn=None,
    params=variables['params'],
    tx=optim.create_optimizer(config),
    batch_stats=variables['batch_stats'],
  )


def abstract_of(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def mlt_style_config():
  config = synthetic.get_config('smoke')
  config.model.num_classes = 5
  config.model.tasks = 'depth,normals'
  return config


def nyu_style_config(init_from):
  config = synthetic.get_config('smoke')
  config.model.num_classes = 7
  config.model.tasks = 'scene,depth,normals'
  config.init_from = str(init_from)
  config.init_exclude = nyuv2_finetune.get_config().init_exclude
  return config


def save_steps(manager, config, state, metrics_by_step):
  for step, metrics in metrics_by_step:
    checkpoints.save(manager, step, state, config, metrics=metrics)
  manager.wait_until_finished()


SMALL = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'step': np.int32(0)}
CONFIG = ml_collections.ConfigDict({'model': {'num_classes': 3}})


def test_keeps_the_last_k_and_the_best_across_restarts(tmp_path):
  directory = checkpoints.checkpoint_dir(tmp_path)
  manager = checkpoints.create_manager(directory, keep=2, async_save=False)
  save_steps(
    manager,
    CONFIG,
    SMALL,
    [(1, None), (2, {'mAP@0.5': 0.5}), (3, None), (4, {'mAP@0.5': 0.9}), (5, None),
     (6, {'mAP@0.5': 0.1, 'AP@0.5/x': None})],
  )  # fmt: skip
  assert manager.all_steps() == [4, 5, 6]
  manager.close()
  # The best step's metrics are on disk: it survives a restart and later saves.
  manager = checkpoints.create_manager(directory, keep=2, async_save=False)
  assert manager.best_step() == 4
  save_steps(manager, CONFIG, SMALL, [(7, None), (8, None)])
  assert manager.all_steps() == [4, 7, 8]
  assert manager.latest_step() == 8
  manager.close()


def test_restore_into_an_abstract_sharded_target(tmp_path):
  config = synthetic.get_config('smoke')
  config.train.backbone_lr_multiplier = 0.1  # optax.partition state round trip too.
  state = make_state(config, random_variables(config, 0))
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(tmp_path), async_save=False)
  save_steps(manager, config, state, [(7, None)])
  mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  restored = checkpoints.restore_state(manager, abstract_of(state, replicated))
  manager.close()
  assert isinstance(restored, train.TrainState) and int(restored.step) == 7
  leaves = jax.tree.leaves(restored)
  assert all(leaf.sharding == replicated for leaf in leaves)
  for a, b in zip(jax.tree.leaves(state), leaves, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert checkpoints.load_config(tmp_path).train.backbone_lr_multiplier == 0.1


def test_resolve_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError):
    checkpoints.resolve_checkpoint(tmp_path)
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(tmp_path), async_save=False)
  save_steps(manager, CONFIG, SMALL, [(3, None), (5, None)])
  manager.close()
  directory = checkpoints.checkpoint_dir(tmp_path)
  assert checkpoints.resolve_checkpoint(tmp_path) == (directory, 5)
  assert checkpoints.resolve_checkpoint(directory) == (directory, 5)
  assert checkpoints.resolve_checkpoint(directory / '3') == (directory, 3)


@pytest.fixture
def mlt_checkpoint(tmp_path):
  config = mlt_style_config()
  variables = random_variables(config, 1)
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(tmp_path), async_save=False)
  save_steps(manager, config, make_state(config, variables), [(10, None)])
  manager.close()
  return tmp_path, variables


def flat(tree):
  """`{'params/ssd/cls0/kernel': leaf}`."""
  return {
    '/'.join(str(k.key) for k in path): value
    for path, value in jax.tree_util.tree_leaves_with_path(tree)
  }


@pytest.mark.slow
def test_handoff_from_mlt_to_nyuv2(mlt_checkpoint, tmp_path_factory, caplog):
  mlt_dir, mlt_variables = mlt_checkpoint
  config = nyu_style_config(mlt_dir)
  fresh = random_variables(config, 2)
  own = checkpoints.create_manager(
    checkpoints.checkpoint_dir(tmp_path_factory.mktemp('nyu')), async_save=False
  )

  def with_variables(state, variables):
    return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])

  with caplog.at_level(logging.INFO):
    state, source = checkpoints.restore_or_initialize(
      config,
      own,
      init_state=lambda: make_state(config, fresh),
      abstract_state=None,
      with_variables=with_variables,
    )
  own.close()
  assert source == f'initialised from {mlt_dir}'
  got = flat({'params': state.params, 'batch_stats': state.batch_stats})
  loaded, kept = flat(mlt_variables), flat(fresh)
  assert set(got) == set(kept)
  fresh_paths = [p for p in got if '/ssd/cls' in p or '/rock/scene_' in p]
  # Class predictors (5 -> 7 classes) and the new scene branch keep their fresh init,
  # and each of them is logged.
  assert any('/ssd/cls' in p for p in fresh_paths) and any('scene_' in p for p in fresh_paths)
  for path in fresh_paths:
    np.testing.assert_array_equal(got[path], kept[path])
    assert f'keeping fresh init for {path}' in caplog.text
  # Everything else (backbone, box predictors, extras, depth/normals branches, BN
  # statistics) comes from the MLT checkpoint.
  others = [p for p in got if p not in fresh_paths]
  assert any(p.startswith('batch_stats/backbone') for p in others)
  assert 'params/rock/depth_enc/kernel' in others and 'params/ssd/box0/kernel' in others
  for path in others:
    np.testing.assert_array_equal(got[path], loaded[path])


def test_handoff_without_exclusions_names_every_mismatch(mlt_checkpoint):
  mlt_dir, _ = mlt_checkpoint
  config = nyu_style_config(mlt_dir)
  fresh = random_variables(config, 2)
  with pytest.raises(ValueError) as error:
    checkpoints.merge_variables(fresh, checkpoints.load_variables(mlt_dir))
  message = str(error.value)
  assert 'params/ssd/cls0/kernel: checkpoint shape' in message
  assert 'params/rock/scene_enc/kernel: missing from the checkpoint' in message
  assert 'params/backbone' not in message


def test_checkpoint_leaf_unknown_to_the_model_is_an_error():
  fresh = {'params': {'a': np.zeros(2, np.float32)}}
  loaded = {'params': {'a': np.ones(2, np.float32), 'old_head': np.ones(3, np.float32)}}
  with pytest.raises(ValueError, match='old_head: in the checkpoint but not in the model'):
    checkpoints.merge_variables(fresh, loaded)
  merged = checkpoints.merge_variables(fresh, loaded, exclude=('old_head',))
  np.testing.assert_array_equal(merged['params']['a'], 1.0)


@pytest.mark.slow
def test_resume_from_own_workdir_wins_over_init_from(tmp_path_factory):
  config = mlt_style_config()
  config.init_from = '/does/not/exist'  # Must not be read: the workdir resumes.
  state = make_state(config, random_variables(config, 3)).replace(step=np.int32(4))
  own = checkpoints.create_manager(
    checkpoints.checkpoint_dir(tmp_path_factory.mktemp('own')), async_save=False
  )
  save_steps(own, config, state, [(4, None)])
  device = NamedSharding(
    jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,)), P()
  )
  restored, source = checkpoints.restore_or_initialize(
    config,
    own,
    init_state=lambda: pytest.fail('must not initialise'),
    abstract_state=abstract_of(state, device),
    with_variables=lambda s, v: pytest.fail('must not merge'),
  )
  assert source == 'resumed at step 4' and int(restored.step) == 4
  own.close()


def test_init_backbone_replaces_only_the_backbone():
  fresh = {
    'params': {'backbone': {'w': np.zeros(2, np.float32)}, 'ssd': {'w': np.zeros(1, np.float32)}},
    'batch_stats': {'backbone': {'mean': np.zeros(2, np.float32)}},
  }
  imported = {
    'params': {'w': np.ones(2, np.float32)},
    'batch_stats': {'mean': np.ones(2, np.float32)},
  }
  merged = checkpoints.merge_backbone(fresh, imported)
  np.testing.assert_array_equal(merged['params']['backbone']['w'], 1.0)
  np.testing.assert_array_equal(merged['batch_stats']['backbone']['mean'], 1.0)
  np.testing.assert_array_equal(merged['params']['ssd']['w'], 0.0)
  with pytest.raises(ValueError, match='backbone/w: checkpoint shape'):
    checkpoints.merge_backbone(
      fresh, {'params': {'w': np.ones(3, np.float32)}, 'batch_stats': imported['batch_stats']}
    )
