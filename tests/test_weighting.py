"""Tests of `rock_jax.weighting`: hand-computed values, and each method in the real step.

The step tests run the smoke model on hand-made batches (`tests/test_train.py`):
three steps on 1 device, the third redone from a checkpoint of the second (bitwise
equal: resume is exact) and on the 4 simulated devices of `tests/conftest.py`.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import fake_batch, make_config, mesh_of

from rock_jax import checkpoints, losses, train, weighting
from rock_jax.models import detector

# ------------------------------------------------------------------ hand-computed


def test_uncertainty_total_and_gradient_by_hand():
  parts = jnp.array([2.0, 0.5, 1.0, 7.0])
  log_vars = jnp.array([0.0, math.log(2.0), math.log(1 / 3), 5.0])
  base = jnp.array([1.0, 3.0, 3.0, 0.0])  # The last part is switched off.
  total, weights = weighting.uncertainty_total(parts, log_vars, base)
  # 1 * 2 + 0 + 0.5 * 0.5 + ln 2 + 3 * 1 + ln(1/3); the switched-off part adds nothing.
  np.testing.assert_allclose(total, 2 + 0.25 + 0.6931472 + 3 - 1.0986123, rtol=1e-6)
  np.testing.assert_allclose(weights, [1.0, 0.5, 3.0, 0.0], rtol=1e-6)
  # d/ds (exp(-s) L + s) = 1 - exp(-s) L.
  grad = jax.grad(lambda s: weighting.uncertainty_total(parts, s, base)[0])(log_vars)
  np.testing.assert_allclose(grad, [-1.0, 0.75, -2.0, 0.0], rtol=1e-5, atol=1e-6)


def test_uncertainty_starts_from_the_fixed_weights():
  config = make_config()
  config.loss.weighting = 'uncertainty'
  state = weighting.init_state(config)
  assert weighting.part_names(config) == ['cls', 'loc', 'scene', 'depth', 'normals']
  np.testing.assert_allclose(jnp.exp(-state['log_vars']), [1.0, 3.0, 3.0, 3.0, 30.0], rtol=1e-6)


def test_dwa_weights_by_hand():
  last, prev = jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0])
  # r = (1, 2), T = 2: 2 e^0.5 / (e^0.5 + e^1) = 0.755081, 2 e / (e^0.5 + e) = 1.244919.
  lam = weighting.dwa_weights(last, prev, jnp.array(True), 2.0)
  np.testing.assert_allclose(lam, [0.755081, 1.244919], rtol=1e-5)
  np.testing.assert_array_equal(weighting.dwa_weights(last, prev, jnp.array(False), 2.0), [1, 1])
  # A part never seen (previous mean 0) counts as ratio 1.
  lam = weighting.dwa_weights(jnp.array([0.0, 3.0]), jnp.array([0.0, 3.0]), jnp.array(True), 2.0)
  np.testing.assert_allclose(lam, [1.0, 1.0], rtol=1e-6)


def test_dwa_window_means():
  state = weighting.init_state(_config('dwa'))
  state = {k: v[:2] if v.ndim else v for k, v in state.items()}
  for parts in ([1.0, 4.0], [3.0, 6.0], [5.0, 1.0], [7.0, 3.0], [9.0, 9.0]):
    state = weighting.dwa_update(state, jnp.array(parts), window=2)
  np.testing.assert_allclose(state['prev'], [2.0, 5.0])  # Mean of steps 1-2.
  np.testing.assert_allclose(state['last'], [6.0, 2.0])  # Mean of steps 3-4.
  np.testing.assert_allclose(state['sum'], [9.0, 9.0])  # Step 5, window open.
  assert int(state['count']) == 5


@pytest.mark.slow
def test_pcgrad_by_hand():
  # g1 . g2 = -1 < 0: g1' = g1 + 0.5 g2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1).
  grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
  for order in ([0, 1], [1, 0]):
    total, conflicts = weighting.pcgrad(grads, jnp.array(order))
    np.testing.assert_allclose(total, [0.5, 1.5], rtol=1e-6)
    assert int(conflicts) == 2
  # No conflict: the plain sum.
  total, conflicts = weighting.pcgrad(jnp.array([[1.0, 0.0], [1.0, 1.0]]), jnp.array([0, 1]))
  np.testing.assert_allclose(total, [2.0, 1.0])
  assert int(conflicts) == 0
  # Three parts, where the order matters (g1 . g3 = 0, the other pairs conflict).
  # Order (g1, g2, g3): g1 -> +0.5 g2 = (0.5, 0.5), . g3 = -0.5 -> +0.5 g3 = (0.5, 0);
  # g2 -> +g1 = (0, 1), . g3 = -1 -> +g3 = (0, 0); g3 -> . g1 = 0, . g2 = -1 ->
  # +0.5 g2 = (-0.5, -0.5). Sum (0, -0.5).
  grads = jnp.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]])
  total, conflicts = weighting.pcgrad(grads, jnp.array([0, 1, 2]))
  np.testing.assert_allclose(total, [0.0, -0.5], atol=1e-6)
  assert int(conflicts) == 4
  # Order (g2, g1, g3): g1 and g2 as before; g3 -> +0.5 g2 = (-0.5, -0.5), now . g1 =
  # -0.5 -> +0.5 g1 = (0, -0.5). Sum (0.5, -0.5).
  total, _ = weighting.pcgrad(grads, jnp.array([1, 0, 2]))
  np.testing.assert_allclose(total, [0.5, -0.5], atol=1e-6)


def test_unknown_method_is_one_clear_error():
  with pytest.raises(ValueError, match="Unknown config.loss.weighting 'gradnorm'"):
    weighting.init_state(_config('gradnorm'))


# ------------------------------------------------------------------ in the step


def _config(method: str):
  config = make_config()
  config.loss.weighting = method
  config.loss.dwa_window = 1  # So the third step already uses loss ratios.
  return config


def _step_fn(config, model, mesh):
  functions = train.step_functions(config, model, mesh, donate=False)
  return lambda state, batch, rng: functions.step(
    state, train.shard_batch(batch, functions.data), rng
  )


def _abstract(config, model, mesh):
  return train.step_functions(config, model, mesh).abstract_state


def _assert_trees(a, b, **tolerance):
  got = dict(jax.tree_util.tree_leaves_with_path(a))
  want = dict(jax.tree_util.tree_leaves_with_path(b))
  assert got.keys() == want.keys()
  for path, value in got.items():
    if tolerance:
      np.testing.assert_allclose(value, want[path], err_msg=jax.tree_util.keystr(path), **tolerance)
    else:
      np.testing.assert_array_equal(value, want[path], err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
@pytest.mark.parametrize('method', ['uncertainty', 'dwa', 'pcgrad'])
def test_step_resumes_bitwise_and_four_devices_agree(method, tmp_path):
  config = _config(method)
  model = detector.build_model(config)
  batches = [fake_batch(config, seed) for seed in range(3)]
  keys = [jax.random.key(10 + i) for i in range(3)]
  one, four = mesh_of(1), mesh_of(4)

  with jax.set_mesh(one):
    state = jax.jit(functools.partial(train.create_train_state, config, model))(jax.random.key(0))
    step = _step_fn(config, model, one)
    history = []
    for batch, key in zip(batches, keys, strict=True):
      before = jax.device_get(state.weighting)
      state, metrics = step(state, batch, key)
      history.append((before, jax.device_get(metrics)))
      if len(history) == 2:
        manager = checkpoints.create_manager(tmp_path, async_save=False)
        checkpoints.save(manager, 2, state, config)
        manager.wait_until_finished()
    final = jax.device_get(state)
    resumed = checkpoints.restore_state(manager, _abstract(config, model, one), 2)
    resumed, resumed_metrics = step(resumed, batches[2], keys[2])
    resumed = jax.device_get(resumed)
  # Resume is exact, weighting state included.
  _assert_trees(resumed, final)
  _assert_trees(resumed_metrics, history[2][1])

  with jax.set_mesh(four):
    state4 = checkpoints.restore_state(manager, _abstract(config, model, four), 2)
    manager.close()
    state4, metrics4 = _step_fn(config, model, four)(state4, batches[2], keys[2])
    state4 = jax.device_get(state4)
  # The same global batch on 4 devices: the same step (float reassociation aside; see
  # test_train for why Adam's updates get 1 % of the rate of slack).
  _assert_trees(state4.weighting, final.weighting, rtol=1e-4, atol=1e-6)
  _assert_trees(state4.params, final.params, rtol=1e-4, atol=1e-5)
  for name in ('loss', 'loss/cls', 'loss/depth', 'weight/normals'):
    np.testing.assert_allclose(metrics4[name], history[2][1][name], rtol=1e-4)

  # What each method did in the third step, from the logged parts and the state before it.
  weighting_before, metrics = history[2]
  names = weighting.part_names(config)
  parts = np.array([metrics[f'loss/{n}'] for n in names])
  weights = np.array([metrics[f'weight/{n}'] for n in names])
  base = np.array([1.0, 3.0, 3.0, 3.0, 30.0])
  if method == 'uncertainty':
    s = np.asarray(weighting_before['log_vars'])
    np.testing.assert_allclose(weights, np.exp(-s), rtol=1e-6)
    np.testing.assert_allclose(metrics['loss'], np.sum(np.exp(-s) * parts + s), rtol=1e-5)
    assert np.max(np.abs(s + np.log(base))) > 1e-4  # Two Adam steps moved them.
  elif method == 'dwa':
    # Window 1: r = L(step 2) / L(step 1), lambda = K softmax(r / 2).
    first, second = (np.array([m[f'loss/{n}'] for n in names]) for _, m in history[:2])
    ratio = second / first
    lam = len(names) * np.exp(ratio / 2) / np.sum(np.exp(ratio / 2))
    np.testing.assert_allclose(weights, base * lam, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss'], np.sum(weights * parts), rtol=1e-5)
    np.testing.assert_allclose(final.weighting['last'], parts, rtol=1e-6)
    np.testing.assert_allclose(final.weighting['prev'], second, rtol=1e-6)
  else:
    np.testing.assert_allclose(weights, base)
    np.testing.assert_allclose(metrics['loss'], np.sum(base * parts), rtol=1e-5)
    assert 0 <= metrics['pcgrad/conflicts'] <= len(names) * (len(names) - 1)


@pytest.mark.slow
def test_fixed_reproduces_the_original_step_bitwise_and_pcgrad_only_touches_shared():
  """`fixed` against the step as it was before weighting existed (copied here)."""
  config = _config('fixed')
  model = detector.build_model(config)
  batch = fake_batch(config, 5)
  key = jax.random.key(3)

  def original_step(state, batch, rng):
    def compute_loss(params):
      variables = {'params': params, 'batch_stats': state.batch_stats}
      outputs, updates = model.apply(
        variables,
        batch['image'],
        train=True,
        with_aux=True,
        mutable=['batch_stats'],
        rngs={'dropout': rng},
      )
      total, parts = losses.multi_loss(outputs, batch, config=config)
      return total, (parts, updates['batch_stats'])

    (total, (parts, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params
    )
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), total, parts

  with jax.set_mesh(mesh_of(1)):
    init = jax.jit(functools.partial(train.create_train_state, config, model))(jax.random.key(0))
    assert init.weighting == {}
    want_state, want_total, want_parts = jax.device_get(jax.jit(original_step)(init, batch, key))
    step = jax.jit(functools.partial(train.train_step, model=model, config=config))
    got_state, metrics = jax.device_get(step(init, batch, key))
    assert metrics['loss'] == want_total
    for name, value in want_parts.items():
      assert metrics[f'loss/{name}'] == value, name
    _assert_trees(got_state.params, want_state.params)
    _assert_trees(got_state.batch_stats, want_state.batch_stats)
    for name, value in config.loss.weights.items():
      assert metrics[f'weight/{name}'] == value

    # PCGrad from the same state: the same loss, the same update outside the backbone
    # (the plain summed gradient), a different one in it when parts conflict.
    pc_config = _config('pcgrad')
    pc_step = jax.jit(functools.partial(train.train_step, model=model, config=pc_config))
    pc_state, pc_metrics = jax.device_get(pc_step(init, batch, key))
  np.testing.assert_allclose(pc_metrics['loss'], want_total, rtol=1e-6)
  for top in ('rock', 'ssd'):
    _assert_trees(pc_state.params[top], want_state.params[top], rtol=1e-4, atol=1e-7)
  assert pc_metrics['pcgrad/conflicts'] > 0
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))),
    pc_state.params['backbone'],
    want_state.params['backbone'],
  )
  assert max(jax.tree.leaves(moved)) > 0
