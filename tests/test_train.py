"""Tests of the train step, the optimizer and the training loop's non-finite stop.

Runs on the 4 simulated CPU devices of `tests/conftest.py`, with the synthetic smoke
model (48x64 inputs) and hand-made batches, so no dataset is built.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import synthetic
from rock_jax import boxes, checkpoints, input_pipeline, optim, train
from rock_jax.models import detector

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

BATCH = 4


def make_config():
  config = synthetic.get_config('smoke')
  config.train.batch_size = BATCH
  return config


def fake_batch(config, seed: int, nan_depth: bool = False) -> dict[str, np.ndarray]:
  """A batch with the input pipeline's keys and shapes, some positive anchors."""
  rng = np.random.default_rng(seed)
  height, width = config.data.image_size
  anchors = boxes.default_boxes(config.model, (height, width)).shape[0]
  grid = input_pipeline.conv5_size(config)
  cls = rng.integers(0, config.model.num_classes + 1, (BATCH, anchors)).astype(np.int32)
  cls[rng.random((BATCH, anchors)) < 0.7] = 0
  depth = rng.uniform(0.5, 8.0, (BATCH, *grid)).astype(np.float32)
  if nan_depth:
    depth[1, 0, 0] = np.nan
  normals = rng.normal(size=(BATCH, *grid, 3)).astype(np.float32)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  return {
    'image': rng.normal(size=(BATCH, height, width, 3)).astype(np.float32),
    'box_targets': rng.normal(size=(BATCH, anchors, 4)).astype(np.float32),
    'cls_targets': cls,
    'scene': rng.integers(0, synthetic.NUM_SCENES, BATCH).astype(np.int32),
    'has_scene': np.ones(BATCH, np.float32),
    'depth': depth,
    'depth_mask': np.ones((BATCH, *grid), np.float32),
    'has_depth': np.ones(BATCH, np.float32),
    'normals': normals,
    'normals_mask': np.ones((BATCH, *grid), np.float32),
    'has_normals': np.ones(BATCH, np.float32),
  }


def mesh_of(n: int) -> jax.sharding.Mesh:
  return jax.make_mesh(
    (n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n]
  )


class FakeDataset:
  """Stands in for the tf.data pipeline: `as_numpy_iterator` over fixed batches."""

  def __init__(self, batches):
    self.batches = batches

  def as_numpy_iterator(self):
    return iter(self.batches)


@pytest.fixture(scope='module')
def nan_run(tmp_path_factory):
  """The real training loop on 1 device; the third batch has a NaN depth target.

  Returns the workdir (checkpoints after steps 1 and 2), the error message and the
  batches.
  """
  workdir = tmp_path_factory.mktemp('nan_run')
  config = make_config()
  config.train.num_steps = 5
  config.train.checkpoint_every = 1
  config.train.keep_checkpoints = 5
  config.train.eval_every = 0
  config.train.async_checkpoints = False
  batches = [fake_batch(config, 0), fake_batch(config, 1), fake_batch(config, 2, nan_depth=True)]
  batches += [fake_batch(config, 3)] * 2

  def fake_train_dataset(cfg, *, seed, process_index, process_count, start_step):
    del cfg, seed, process_index, process_count
    return FakeDataset(batches[start_step:])

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(input_pipeline, 'create_train_dataset', fake_train_dataset)
    with pytest.raises(train.NonFiniteLossError) as error:
      train.train_and_evaluate(config, str(workdir), mesh=mesh_of(1))
  return workdir, str(error.value), batches


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(nan_run):
  workdir, message, _ = nan_run
  assert 'step 3' in message and 'depth' in message
  assert 'last good checkpoint is step 2' in message
  # Steps 1 and 2 stay on disk; nothing after the failure was written.
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [1, 2]
  assert not (workdir / 'results.json').exists()


def test_four_devices_make_the_same_step_as_one(nan_run):
  """Step 2 of the 1-device run, redone on 4 devices from its step-1 checkpoint."""
  assert jax.device_count() == 4
  workdir, _, batches = nan_run
  config = make_config()
  model = detector.build_model(config)
  mesh = mesh_of(4)
  with jax.set_mesh(mesh):
    functions = train.step_functions(config, model, mesh)
    manager = checkpoints.create_manager(checkpoints.checkpoint_dir(workdir), read_only=True)
    state = checkpoints.restore_state(manager, functions.abstract_state, step=1)
    manager.close()
    assert state.params['ssd']['cls0']['kernel'].sharding.is_fully_replicated
    batch = train.shard_batch(batches[1], functions.data)
    state, metrics = functions.step(state, batch, jax.random.key(1))
    state = jax.device_get(state)
  assert float(metrics['finite']) == 1.0 and int(state.step) == 2
  expected = checkpoints.load_variables(checkpoints.checkpoint_dir(workdir) / '2')
  got = {'params': state.params, 'batch_stats': state.batch_stats}
  want = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert len(want) == len(jax.tree.leaves(got))
  # The same global batch gives the same update, BatchNorm statistics included (they
  # are computed over the global batch). Adam divides by sqrt(v): where a gradient is
  # ~0, float reassociation across devices can move an update by a fraction of the
  # learning rate (1e-3), so allow 1 % of it.
  for path, value in jax.tree_util.tree_leaves_with_path(got):
    np.testing.assert_allclose(
      value, want[path], rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )
  before = checkpoints.load_variables(checkpoints.checkpoint_dir(workdir) / '1')
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got['params'], before['params'])
  assert max(jax.tree.leaves(moved)) > 0


def test_check_finite_names_the_parts():
  good = {'loss': 1.0, 'loss/cls': 0.5, 'loss/depth': 0.5, 'grad_norm': 2.0, 'finite': 1.0}
  train.check_finite(7, good)
  with pytest.raises(train.NonFiniteLossError, match=r'step 7 in: loss, depth'):
    train.check_finite(7, {**good, 'loss': np.nan, 'loss/depth': np.inf, 'finite': 0.0})
  with pytest.raises(train.NonFiniteLossError, match=r'step 8 in: gradient'):
    train.check_finite(8, {**good, 'grad_norm': np.nan, 'finite': 0.0})


def test_create_mesh_uses_the_devices_the_batch_divides_over():
  assert train.create_mesh(8).devices.size == 4
  assert train.create_mesh(2).devices.size == 2
  assert train.create_mesh(3).devices.size == 3
  assert train.create_mesh(4).axis_names == ('data',)


def test_train_batch_keys_follow_the_tasks():
  config = make_config()
  keys = train.train_batch_keys(config)
  assert {'image', 'box_targets', 'cls_targets', 'scene', 'has_depth', 'normals_mask'} <= set(keys)
  config.model.variant = 'baseline'
  assert set(train.train_batch_keys(config)) == {'image', 'box_targets', 'cls_targets'}


# ---------------------------------------------------------------- optimizer


def paper_config():
  config = synthetic.get_config()
  config.train.learning_rate = 5e-5
  config.train.lr_boundaries = (30_000,)
  config.train.lr_decay = 0.1
  return config


def test_learning_rate_schedule_is_piecewise_constant():
  schedule = optim.create_learning_rate_schedule(paper_config())
  np.testing.assert_allclose(schedule(0), 5e-5)
  np.testing.assert_allclose(schedule(29_999), 5e-5)
  np.testing.assert_allclose(schedule(30_000), 5e-6, rtol=1e-6)
  np.testing.assert_allclose(schedule(39_999), 5e-6, rtol=1e-6)


PARAMS = {'backbone': {'w': jnp.ones((3,))}, 'ssd': {'w': jnp.ones((2,))}}
GRADS = {'backbone': {'w': jnp.full((3,), 0.5)}, 'ssd': {'w': jnp.full((2,), -0.5)}}


def one_update(config):
  tx = optim.create_optimizer(config)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  return updates


def test_first_adam_step_is_minus_lr_times_sign():
  updates = one_update(paper_config())
  np.testing.assert_allclose(updates['backbone']['w'], -5e-5, rtol=1e-4)
  np.testing.assert_allclose(updates['ssd']['w'], 5e-5, rtol=1e-4)


def test_frozen_and_slower_backbone():
  config = paper_config()
  config.train.backbone_lr_multiplier = 0.0
  updates = one_update(config)
  np.testing.assert_array_equal(updates['backbone']['w'], 0.0)
  np.testing.assert_allclose(updates['ssd']['w'], 5e-5, rtol=1e-4)
  config.train.backbone_lr_multiplier = 0.1
  updates = one_update(config)
  np.testing.assert_allclose(updates['backbone']['w'], -5e-6, rtol=1e-4)


def test_coupled_and_decoupled_weight_decay():
  config = paper_config()
  config.train.weight_decay = 2e-3
  # Coupled: the gradient becomes 0.5 + 2e-3; Adam's first step still has unit size.
  np.testing.assert_allclose(one_update(config)['backbone']['w'], -5e-5, rtol=1e-4)
  config.train.decoupled_weight_decay = True
  # Decoupled: -lr * (1 + wd * w).
  np.testing.assert_allclose(one_update(config)['backbone']['w'], -5e-5 * (1 + 2e-3), rtol=1e-5)
  config.train.weight_decay_exclude = ('^ssd/',)
  np.testing.assert_allclose(one_update(config)['ssd']['w'], 5e-5, rtol=1e-5)


def test_gradient_clipping_is_global():
  config = paper_config()
  config.train.clip_grad_norm = 0.1
  tx = optim.create_optimizer(config)
  _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  # Adam's first moment after one step is (1 - b1) times the gradient it saw.
  mu = optax.tree.get(state, 'mu')
  scale = 0.1 / float(optax.tree.norm(GRADS))
  for key in ('backbone', 'ssd'):
    np.testing.assert_allclose(mu[key]['w'], 0.1 * scale * GRADS[key]['w'], rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_loss():
  """`model.dtype=bfloat16`: the step runs, params and loss stay float32, close to float32."""
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config = make_config()
    config.model.dtype = dtype
    model = detector.build_model(config)
    state = train.create_train_state(config, model, jax.random.key(0))
    step = jax.jit(functools.partial(train.train_step, model=model, config=config))
    state, metrics = step(state, fake_batch(config, seed=3), jax.random.key(1))
    dtypes = {x.dtype for x in jax.tree.leaves(state.params)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
    assert metrics['loss'].dtype == jnp.float32 and np.isfinite(float(metrics['loss']))
    results[dtype] = float(metrics['loss'])
  # Same init and batch: bfloat16 compute only rounds, it must not change the loss much.
  np.testing.assert_allclose(results['bfloat16'], results['float32'], rtol=0.05)


def test_state_is_donated_on_accelerators_only():
  """On a CPU the default keeps the input state (donating made the step slower there)."""
  assert jax.default_backend() == 'cpu'
  config = make_config()
  model = detector.build_model(config)
  mesh = mesh_of(1)
  with jax.set_mesh(mesh):
    for donate, donated in ((None, False), (True, True), (False, False)):
      functions = train.step_functions(config, model, mesh, donate=donate)
      batch = train.shard_batch(fake_batch(config, 0), functions.data)
      text = functions.step.lower(functions.abstract_state, batch, jax.random.key(0)).as_text()
      aliased = 'tf.aliasing_output' in text or 'jax.buffer_donor' in text
      assert aliased == donated, donate
