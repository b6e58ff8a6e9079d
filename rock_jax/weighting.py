"""Multi-task loss weighting: fixed, uncertainty, DWA and PCGrad (`config.loss.weighting`).

The parts of the multi-task loss (`cls`, `loc`, then one per auxiliary task, the
order of `part_names`) are combined into the total by one of:
- `fixed`: `sum_i w_i L_i` with `w = config.loss.weights` (the paper; the train
  step then runs exactly the code it always did, bitwise);
- `uncertainty` (Kendall, Gal & Cipolla, CVPR 2018, in the `exp(-s) L + s` form of
  LibMTL): one learnable log-variance `s_i` per part, `sum_i exp(-s_i) L_i + s_i`.
  `s_i` starts at `-log w_i`, so training starts from the fixed weights, and is
  trained by its own Adam (`loss.weighting_lr`); at its optimum `exp(-s_i) = 1 / L_i`;
- `dwa` (Dynamic Weight Average, Liu, Johns & Davison, CVPR 2019): `w_i * lambda_i`
  with `lambda = K softmax(r / T)`, `r_i = Lbar_i(t-1) / Lbar_i(t-2)` the ratio of the
  mean loss of the last two complete windows of `loss.dwa_window` steps (the paper's
  epochs), `T = loss.dwa_temperature`; `lambda = 1` until two windows are complete;
- `pcgrad` (Yu et al., NeurIPS 2020): the fixed weighted parts, but the gradients of
  the shared parameters (paths matching `loss.pcgrad_shared`, the backbone by
  default) are the sum of the per-part gradients after projecting each one, in a
  random order per step, off every other part's gradient it conflicts with
  (negative dot product). The other parameters get the plain summed gradient.

A part whose fixed weight is 0 keeps weight 0 in every method (e.g. the
'no auxiliary supervision' ablation). Weighting state lives in the train state
(`TrainState.weighting`), is saved with it and resumes bitwise: the log-variances
and their Adam state (uncertainty), the window sums and means (dwa); fixed and
pcgrad have none (`{}`; pcgrad's order comes from the step's key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from rock_jax import tasks as tasks_lib

Array = jax.Array
METHODS = ('fixed', 'uncertainty', 'dwa', 'pcgrad')


def method(config: ml_collections.ConfigDict) -> str:
  """`config.loss.weighting` ('fixed' when unset), checked."""
  name = config.loss.get('weighting', 'fixed')
  if name not in METHODS:
    raise ValueError(f'Unknown config.loss.weighting {name!r}; expected one of {METHODS}.')
  return name


def part_names(config: ml_collections.ConfigDict) -> list[str]:
  """The loss parts in order: `cls`, `loc`, then the auxiliary tasks (none for baseline)."""
  return ['cls', 'loc', *tasks_lib.names(config)]


def base_weights(config: ml_collections.ConfigDict) -> jnp.ndarray:
  """`[K]` fixed weights of `config.loss.weights` (1 for a part without one)."""
  weights = config.loss.weights
  return jnp.asarray([float(weights.get(n, 1.0)) for n in part_names(config)], jnp.float32)


def _uncertainty_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(float(config.loss.get('weighting_lr', 1e-3)))


def init_state(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The weighting state at step 0 (`{}` for the stateless methods)."""
  name = method(config)
  k = len(part_names(config))
  if name == 'uncertainty':
    base = base_weights(config)
    log_vars = jnp.where(base > 0, -jnp.log(jnp.where(base > 0, base, 1.0)), 0.0)
    return {'log_vars': log_vars, 'opt_state': _uncertainty_optimizer(config).init(log_vars)}
  if name == 'dwa':
    zeros = jnp.zeros((k,), jnp.float32)
    return {'sum': zeros, 'last': zeros, 'prev': zeros, 'count': jnp.zeros([], jnp.int32)}
  return {}


# ------------------------------------------------------------------ pure pieces


def uncertainty_total(parts: Array, log_vars: Array, base: Array) -> tuple[Array, Array]:
  """Kendall et al.: `(sum_i exp(-s_i) L_i + s_i, weights exp(-s_i))` over parts with w_i > 0.

  Args:
    parts: `[K]` loss parts.
    log_vars: `[K]` log-variances `s`.
    base: `[K]` fixed weights; parts with 0 are left out (weight 0, no `s` term).

  Returns:
    `(total, weights)`.
  """
  on = base > 0
  weights = jnp.where(on, jnp.exp(-log_vars), 0.0)
  return jnp.sum(weights * parts + jnp.where(on, log_vars, 0.0)), weights


def dwa_weights(last: Array, prev: Array, ready: Array, temperature: float) -> Array:
  """Liu et al.: `K softmax(r / T)`, `r = last / prev`, or ones until `ready`.

  A part whose previous mean is 0 (a task never present) gets ratio 1.
  """
  k = last.shape[0]
  ratio = jnp.where(prev > 0, last / jnp.where(prev > 0, prev, 1.0), 1.0)
  lam = k * jax.nn.softmax(ratio / temperature)
  return jnp.where(ready, lam, jnp.ones_like(lam))


def dwa_update(state: Mapping[str, Array], parts: Array, window: int) -> dict[str, Array]:
  """Adds one step's parts to the window; at a window's end shifts the means."""
  total = state['sum'] + parts
  count = state['count'] + 1
  done = count % window == 0
  return {
    'sum': jnp.where(done, jnp.zeros_like(total), total),
    'last': jnp.where(done, total / window, state['last']),
    'prev': jnp.where(done, state['last'], state['prev']),
    'count': count,
  }


def pcgrad(grads: Array, order: Array) -> tuple[Array, Array]:
  """PCGrad on `[K, D]` per-part gradients: the summed projected gradient `[D]`.

  Each part's gradient `g_i`, in turn, is projected off every other part's original
  gradient `g_j` (taken in `order`) it has a negative dot product with:
  `g_i <- g_i - (g_i . g_j) / |g_j|^2 g_j`.

  Args:
    grads: `[K, D]` gradients of each part.
    order: `[K]` a permutation: the order in which the `g_j` are applied.

  Returns:
    `(sum_i g_i projected [D], number of conflicting pairs (i, j), i != j, in the
    original gradients)`.
  """
  k = grads.shape[0]
  sq = jnp.sum(grads * grads, axis=-1)
  projected = []
  for i in range(k):
    g = grads[i]
    for m in range(k):
      j = order[m]
      gj = grads[j]
      dot = jnp.dot(g, gj)
      coef = jnp.where(
        (j != i) & (dot < 0) & (sq[j] > 0), dot / jnp.where(sq[j] > 0, sq[j], 1.0), 0
      )
      g = g - coef * gj
    projected.append(g)
  dots = grads @ grads.T
  conflicts = jnp.sum((dots < 0) & ~jnp.eye(k, dtype=bool))
  return jnp.sum(jnp.stack(projected), axis=0), conflicts


def shared_mask(params: Any, patterns: tuple[str, ...]) -> Any:
  """True for parameter leaves whose path (`backbone/stem/conv/kernel`) matches a regex."""
  compiled = [re.compile(p) for p in patterns]

  def shared(path, _):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    return any(p.search(name) for p in compiled)

  return jax.tree_util.tree_map_with_path(shared, params)


# ------------------------------------------------------------------ the step's part

Forward = Callable[[Any], tuple[Array, tuple[dict[str, Array], Any]]]


def value_and_grad(
  forward: Forward,
  params: Any,
  state: Mapping[str, Any],
  rng: Array,
  *,
  config: ml_collections.ConfigDict,
) -> tuple[Array, dict[str, Array], Any, Any, dict[str, Any], dict[str, Array]]:
  """The total loss, its parameter gradient and the new weighting state (not `fixed`).

  Args:
    forward: `params -> (fixed total, (parts, new batch_stats))`, the train step's loss.
    params: the model parameters.
    state: the weighting state (`init_state`).
    rng: this step's key (pcgrad's order).
    config: the experiment config.

  Returns:
    `(total, parts, batch_stats, grads, new_state, extra metrics)`; the metrics
    hold the weights in force per part (`weight/<part>`), and for pcgrad the
    number of conflicting gradient pairs (`pcgrad/conflicts`).
  """
  name = method(config)
  names = part_names(config)
  base = base_weights(config)

  def stacked(params):
    _, (parts, batch_stats) = forward(params)
    return jnp.stack([parts[n] for n in names]), (parts, batch_stats)

  extra: dict[str, Array] = {}
  if name == 'uncertainty':

    def objective(params, log_vars):
      vector, aux = stacked(params)
      total, weights = uncertainty_total(vector, log_vars, base)
      return total, (aux, weights)

    (total, ((parts, batch_stats), weights)), (grads, log_var_grad) = jax.value_and_grad(
      objective, argnums=(0, 1), has_aux=True
    )(params, state['log_vars'])
    tx = _uncertainty_optimizer(config)
    updates, opt_state = tx.update(log_var_grad, state['opt_state'], state['log_vars'])
    new_state = {
      'log_vars': optax.apply_updates(state['log_vars'], updates),
      'opt_state': opt_state,
    }
  elif name == 'dwa':
    ready = state['count'] >= 2 * int(config.loss.dwa_window)
    lam = dwa_weights(state['last'], state['prev'], ready, float(config.loss.dwa_temperature))
    weights = base * lam

    def objective(params):
      vector, aux = stacked(params)
      return jnp.sum(weights * vector), (vector, aux)

    (total, (vector, (parts, batch_stats))), grads = jax.value_and_grad(objective, has_aux=True)(
      params
    )
    new_state = dwa_update(state, vector, int(config.loss.dwa_window))
  elif name == 'pcgrad':
    weights = base

    def weighted(params):
      vector, aux = stacked(params)
      return weights * vector, (vector, aux)

    # One backward pass per part (vmapped VJPs): rows of the Jacobian.
    jacobian, (vector, (parts, batch_stats)) = jax.jacrev(weighted, has_aux=True)(params)
    total = jnp.sum(weights * vector)
    mask = shared_mask(params, tuple(config.loss.pcgrad_shared))
    leaves, treedef = jax.tree.flatten(jacobian)
    flags = jax.tree.leaves(mask)
    shared = [leaf for leaf, on in zip(leaves, flags, strict=True) if on]
    if not shared:
      raise ValueError(
        f'config.loss.pcgrad_shared {config.loss.pcgrad_shared} matches no parameter.'
      )
    flat = jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in shared], axis=1)
    order = jax.random.permutation(jax.random.fold_in(rng, 0x9C), len(names))
    summed, conflicts = pcgrad(flat, order)
    extra['pcgrad/conflicts'] = conflicts.astype(jnp.float32)
    out, offset = [], 0
    for leaf, on in zip(leaves, flags, strict=True):
      if on:
        size = leaf[0].size
        out.append(summed[offset : offset + size].reshape(leaf.shape[1:]))
        offset += size
      else:
        out.append(jnp.sum(leaf, axis=0))
    grads = jax.tree.unflatten(treedef, out)
    new_state = dict(state)
  else:
    raise ValueError(f'value_and_grad is for the adaptive methods, not {name!r}.')
  extra.update({f'weight/{n}': weights[i] for i, n in enumerate(names)})
  return total, parts, batch_stats, grads, new_state, extra


def fixed_weight_metrics(config: ml_collections.ConfigDict) -> dict[str, Array]:
  """`weight/<part>` of the fixed method, for the same report as the adaptive ones."""
  return {f'weight/{n}': w for n, w in zip(part_names(config), base_weights(config), strict=True)}
