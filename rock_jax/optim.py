"""Optimizer: Adam with the paper's piecewise-constant schedule and parameter groups.

The paper trains with Adam at 5e-5 for 30k steps, then 5e-6 (supplementary,
Section 2). The reference implementation adds a coupled L2 weight decay (as
PyTorch's `Adam(weight_decay=...)` does); decoupled decay (AdamW) is an option.
Parameter groups go through `optax.partition`: the backbone can train with a
learning-rate multiplier or be frozen (multiplier 0).
"""

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

BACKBONE = 'backbone'
HEAD = 'head'


def create_learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Returns the piecewise-constant learning rate of `config.train`.

  The rate starts at `train.learning_rate` and is multiplied by `train.lr_decay`
  at every step of `train.lr_boundaries` (the update with index `b` is the first
  one at the lower rate).

  Args:
    config: the experiment config.

  Returns:
    An optax schedule, step -> learning rate.
  """
  boundaries = {int(b): float(config.train.lr_decay) for b in config.train.lr_boundaries}
  return optax.piecewise_constant_schedule(float(config.train.learning_rate), boundaries)


def param_labels(params: Any) -> Any:
  """Labels every parameter leaf `'backbone'` or `'head'` by its top-level name.

  Args:
    params: the model's parameter tree (top level `backbone`, `rock`, `ssd`, ...).

  Returns:
    A tree of the same structure with a string label per leaf.
  """

  def label(path, _):
    top = path[0].key if path and hasattr(path[0], 'key') else None
    return BACKBONE if top == BACKBONE else HEAD

  return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params: Any, exclude: tuple[str, ...]) -> Any:
  """True for leaves that get weight decay: all but those matching an `exclude` regex."""
  patterns = [re.compile(p) for p in exclude]

  def keep(path, _):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    return not any(p.search(name) for p in patterns)

  return jax.tree_util.tree_map_with_path(keep, params)


def _group_transform(
  config: ml_collections.ConfigDict, schedule: optax.Schedule, multiplier: float
) -> optax.GradientTransformation:
  """Adam (+ weight decay) at `multiplier` times the schedule, for one parameter group."""
  train = config.train
  if multiplier == 0.0:
    # Frozen group: no optimizer state, no update.
    return optax.set_to_zero()
  if train.optimizer != 'adam':
    raise ValueError(f'Unknown optimizer {train.optimizer!r}; expected "adam".')
  lr: Callable[[jnp.ndarray], jnp.ndarray] = (
    schedule if multiplier == 1.0 else (lambda count: multiplier * schedule(count))
  )
  decay = float(train.weight_decay)
  exclude = tuple(train.get('weight_decay_exclude', ()))
  # A callable mask, so it also applies to the sub-trees `optax.partition` passes in.
  mask = lambda p: _decay_mask(p, exclude)
  parts = []
  if decay and not train.decoupled_weight_decay:
    # Coupled L2 (PyTorch Adam): the decay term goes through Adam's normalisation.
    parts.append(optax.add_decayed_weights(decay, mask=mask))
  parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
  if decay and train.decoupled_weight_decay:
    # Decoupled (AdamW): the decay is added after normalisation, scaled by the rate.
    parts.append(optax.add_decayed_weights(decay, mask=mask))
  parts.append(optax.scale_by_learning_rate(lr))
  return optax.chain(*parts)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Builds the optimizer of `config.train`.

  Args:
    config: the experiment config (`train.learning_rate`, `lr_boundaries`,
      `lr_decay`, `weight_decay`, `decoupled_weight_decay`, `clip_grad_norm`,
      `backbone_lr_multiplier`).

  Returns:
    The optax transformation.
  """
  train = config.train
  schedule = create_learning_rate_schedule(config)
  multiplier = float(train.backbone_lr_multiplier)
  if multiplier == 1.0:
    # One group: keep the plain structure (smaller state tree, simpler checkpoints).
    tx = _group_transform(config, schedule, 1.0)
  else:
    tx = optax.partition(
      {
        BACKBONE: _group_transform(config, schedule, multiplier),
        HEAD: _group_transform(config, schedule, 1.0),
      },
      param_labels,
    )
  if train.clip_grad_norm and train.clip_grad_norm > 0:
    # Clip on the global norm over all groups, before any group-specific step.
    tx = optax.chain(optax.clip_by_global_norm(float(train.clip_grad_norm)), tx)
  return tx
