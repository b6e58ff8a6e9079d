"""Losses of the detector and of the auxiliary tasks, and the weighted multi-task loss.

Every function is jittable with fixed shapes (masks and top-k ranks, no boolean
indexing) and returns a scalar. Normalisation:
- Detection: sums over anchors and images divided by the number of positive anchors in
  the batch (at least 1, so a batch without positives gives a finite value).
- Auxiliary tasks: each example carries a presence flag `has_<task>`; a dense loss is
  first averaged over the valid pixels of each example, then every loss is averaged
  over the present examples. A missing task contributes zero loss and zero gradient;
  a batch where nobody has the task gives 0.

Every logged part is >= 0 with the default config, so a total near 0 means good: the
classification and scene cross-entropies, smooth-L1 and the log-depth berHu/Huber are
non-negative by construction, and the normals loss `-cos + ||n - g||^2` (in [-1, 5])
gets the reference's `+1` offset (`config.loss.normals_offset`, 0 for the plain form).

Task losses are chosen by task name (`TASK_LOSSES`), falling back on the task kind
(`KIND_LOSSES`); register a new task by adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rock_jax import tasks as tasks_lib

Array = jax.Array
_EPS = 1e-6  # Normals normalisation and berHu threshold floor.


def _safe_div(num: Array, den: Array) -> Array:
  """num / den where den > 0, else 0 (keeps gradients finite)."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _masked_example_mean(values: Array, weights: Array) -> tuple[Array, Array]:
  """Per-example weighted mean over all but the batch axis, and whether it is defined."""
  axes = tuple(range(1, values.ndim))
  total = jnp.sum(values * weights, axis=axes)
  count = jnp.sum(weights, axis=axes)
  return _safe_div(total, count), (count > 0).astype(values.dtype)


def _mean_over_present(per_example: Array, present: Array) -> Array:
  """Mean of `per_example` `[B]` over examples with `present` `[B]` > 0 (0 if none)."""
  present = present.astype(per_example.dtype)
  # where() rather than a product so a NaN/inf in an absent example cannot leak.
  values = jnp.where(present > 0, per_example, 0.0)
  return _safe_div(jnp.sum(values * present), jnp.sum(present))


# ------------------------------------------------------------------ detection


def smooth_l1(x: Array, beta: float = 1.0) -> Array:
  """Elementwise smooth L1 (Huber with threshold `beta`, PyTorch form)."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def hard_negative_mask(
  neg_losses: Array, negatives: Array, num_pos: Array, neg_pos_ratio: float
) -> Array:
  """Selects, per image, the `neg_pos_ratio * num_pos` negatives with the highest losses.

  Args:
    neg_losses: `[B, A]` classification loss of each anchor as background.
    negatives: `[B, A]` bool, anchors that may be picked (background targets).
    num_pos: `[B]` number of positives per image.
    neg_pos_ratio: negatives per positive (3 in SSD).

  Returns:
    `[B, A]` bool mask of the selected negatives (fewer when not enough exist).
  """
  ranked = jnp.where(negatives, jax.lax.stop_gradient(neg_losses), -jnp.inf)
  # Rank of each anchor by decreasing loss: argsort of the argsort (a top-k mask without
  # data-dependent shapes). Ties go to the lower index (stable sort).
  order = jnp.argsort(-ranked, axis=-1, stable=True)
  ranks = jnp.argsort(order, axis=-1, stable=True)
  num_neg = jnp.floor(neg_pos_ratio * num_pos.astype(jnp.float32)).astype(jnp.int32)
  return (ranks < num_neg[:, None]) & negatives


def softmax_hnm_loss(
  logits: Array, cls_targets: Array, *, neg_pos_ratio: float = 3.0
) -> tuple[Array, Array]:
  """Summed softmax cross-entropy over positives and hard negatives.

  Args:
    logits: `[B, A, C + 1]` class logits (0 = background).
    cls_targets: `[B, A]` int targets, 0 background, -1 ignored.
    neg_pos_ratio: hard negatives per positive.

  Returns:
    `(loss_sum, num_pos)`: the unnormalised sum and the number of positives (float).
  """
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(cls_targets, 0))
  positives = cls_targets > 0
  negatives = cls_targets == 0
  num_pos = jnp.sum(positives, axis=-1)
  selected = positives | hard_negative_mask(ce, negatives, num_pos, neg_pos_ratio)
  return jnp.sum(jnp.where(selected, ce, 0.0)), jnp.sum(num_pos).astype(jnp.float32)


def softmax_focal_loss(
  logits: Array, cls_targets: Array, *, alpha: float = 0.25, gamma: float = 2.0
) -> tuple[Array, Array]:
  """Summed softmax focal loss over all non-ignored anchors.

  `-a_t (1 - p_t)^gamma log p_t` with `a_t = alpha` for foreground targets and
  `1 - alpha` for background (Lin et al. 2017, on a softmax over C + 1 classes).

  Args:
    logits: `[B, A, C + 1]` class logits.
    cls_targets: `[B, A]` int targets, 0 background, -1 ignored.
    alpha: foreground weight.
    gamma: focusing exponent.

  Returns:
    `(loss_sum, num_pos)`.
  """
  logits = logits.astype(jnp.float32)
  labels = jnp.maximum(cls_targets, 0)
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
  p = jnp.exp(log_p)
  a_t = jnp.where(cls_targets > 0, alpha, 1.0 - alpha)
  loss = -a_t * (1.0 - p) ** gamma * log_p
  num_pos = jnp.sum(cls_targets > 0).astype(jnp.float32)
  return jnp.sum(jnp.where(cls_targets >= 0, loss, 0.0)), num_pos


def localization_loss(box_preds: Array, box_targets: Array, cls_targets: Array) -> Array:
  """Summed smooth L1 (beta 1) over the 4 offsets of positive anchors.

  Args:
    box_preds: `[B, A, 4]` predicted offsets.
    box_targets: `[B, A, 4]` encoded targets.
    cls_targets: `[B, A]` targets; positives are > 0.

  Returns:
    The unnormalised sum.
  """
  per_anchor = jnp.sum(smooth_l1(box_preds.astype(jnp.float32) - box_targets), axis=-1)
  return jnp.sum(jnp.where(cls_targets > 0, per_anchor, 0.0))


def detection_loss(
  box_preds: Array, logits: Array, box_targets: Array, cls_targets: Array, *, loss_config: Any
) -> tuple[Array, Array]:
  """SSD losses normalised by the number of positives in the batch.

  Args:
    box_preds: `[B, A, 4]` offsets.
    logits: `[B, A, C + 1]` class logits.
    box_targets: `[B, A, 4]` encoded targets.
    cls_targets: `[B, A]` int targets (0 background, -1 ignored).
    loss_config: `config.loss` (`cls`, `neg_pos_ratio`, `focal_alpha`, `focal_gamma`).

  Returns:
    `(cls_loss, loc_loss)`, both 0 for a batch without positives and without selected
    anchors (focal still counts the background in that case, divided by 1).
  """
  if loss_config.cls == 'softmax_hnm':
    cls_sum, num_pos = softmax_hnm_loss(
      logits, cls_targets, neg_pos_ratio=loss_config.neg_pos_ratio
    )
  elif loss_config.cls == 'focal':
    cls_sum, num_pos = softmax_focal_loss(
      logits, cls_targets, alpha=loss_config.focal_alpha, gamma=loss_config.focal_gamma
    )
  else:
    raise ValueError(f'Unknown loss.cls {loss_config.cls!r}.')
  norm = jnp.maximum(num_pos, 1.0)
  loc_sum = localization_loss(box_preds, box_targets, cls_targets)
  return cls_sum / norm, loc_sum / norm


# ------------------------------------------------------------------ auxiliary tasks


def classification_loss(logits: Array, labels: Array, present: Array) -> Array:
  """Softmax cross-entropy `[B, K]` vs int labels `[B]`, mean over present examples."""
  ce = optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), jnp.clip(labels, 0, logits.shape[-1] - 1)
  )
  return _mean_over_present(ce, present)


def berhu(x: Array, c: Array) -> Array:
  """Reverse Huber of `x >= 0`: `x` if `x <= c`, else `(x^2 + c^2) / (2c)`."""
  safe_c = jnp.maximum(c, _EPS)
  return jnp.where(x <= c, x, (x * x + safe_c * safe_c) / (2.0 * safe_c))


def log_space_regression_loss(
  pred: Array,
  target: Array,
  valid: Array,
  present: Array,
  *,
  kind: str,
  c: float,
  min_value: float,
  max_value: float,
) -> Array:
  """Regression of a log-space prediction against a positive target (depth, disparity).

  Args:
    pred: `[B, h, w]` predicted log-value.
    target: `[B, h, w]` value (e.g. metres); clamped to `[min_value, max_value]`, then log.
    valid: `[B, h, w]` valid-pixel mask (float or bool).
    present: `[B]` presence flags.
    kind: 'berhu' (threshold `c` times the batch max of the residual, Laina et al.),
      'berhu_fixed' (threshold `c`) or 'huber' (smooth L1 with threshold `c`).
    c: see `kind`.
    min_value: clamp range, lower end.
    max_value: clamp range, upper end.

  Returns:
    Mean over present examples of the per-example mean over valid pixels.
  """
  pred = pred.astype(jnp.float32)
  weights = valid.astype(jnp.float32) * (present.astype(jnp.float32) > 0)[:, None, None]
  x = jnp.abs(pred - jnp.log(jnp.clip(target, min_value, max_value)))
  if kind == 'berhu':
    # The threshold is a statistic of the batch, not something to optimise.
    threshold = c * jax.lax.stop_gradient(jnp.max(jnp.where(weights > 0, x, 0.0)))
    per_pixel = berhu(x, threshold)
  elif kind == 'berhu_fixed':
    per_pixel = berhu(x, jnp.asarray(c, jnp.float32))
  elif kind == 'huber':
    per_pixel = smooth_l1(x, c)
  else:
    raise ValueError(f'Unknown depth loss {kind!r}.')
  per_example, has_pixels = _masked_example_mean(per_pixel, weights)
  return _mean_over_present(per_example, present.astype(jnp.float32) * has_pixels)


def normals_loss(
  pred: Array, target: Array, valid: Array, present: Array, *, offset: float = 1.0
) -> Array:
  """`-dot(n, g) + ||n - g||^2 + offset` per valid pixel, `n` the L2-normalised prediction.

  With unit vectors `-dot + ||n - g||^2 = 2 - 3 cos(n, g)` lies in [-1, 5]: the default
  offset 1 (the reference's) makes it >= 0, exactly 0 for a perfect prediction.

  Args:
    pred: `[B, h, w, 3]` unnormalised prediction.
    target: `[B, h, w, 3]` unit normals.
    valid: `[B, h, w]` valid-pixel mask.
    present: `[B]` presence flags.
    offset: constant added per pixel (1, the reference's, keeps the loss >= 0).

  Returns:
    Mean over present examples of the per-example mean over valid pixels.
  """
  pred = pred.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(pred * pred, axis=-1, keepdims=True) + _EPS * _EPS)
  n = pred / norm
  per_pixel = -jnp.sum(n * target, axis=-1) + jnp.sum((n - target) ** 2, axis=-1) + offset
  weights = valid.astype(jnp.float32) * (present.astype(jnp.float32) > 0)[:, None, None]
  per_example, has_pixels = _masked_example_mean(per_pixel, weights)
  return _mean_over_present(per_example, present.astype(jnp.float32) * has_pixels)


# ------------------------------------------------------------------ task registry

TaskLoss = Callable[[str, Mapping[str, Array], Mapping[str, Array], Any], Array]


def _scene_task(task: str, aux: Mapping[str, Array], batch: Mapping[str, Array], config) -> Array:
  return classification_loss(aux[task], batch[task], batch[f'has_{task}'])


def _depth_task(task: str, aux: Mapping[str, Array], batch: Mapping[str, Array], config) -> Array:
  loss = config.loss
  return log_space_regression_loss(
    aux[task],
    batch[task],
    batch[f'{task}_mask'],
    batch[f'has_{task}'],
    kind=loss.depth,
    c=loss.depth_c,
    min_value=loss.min_depth,
    max_value=loss.max_depth,
  )


def _normals_task(task: str, aux: Mapping[str, Array], batch: Mapping[str, Array], config) -> Array:
  return normals_loss(
    aux[task],
    batch[task],
    batch[f'{task}_mask'],
    batch[f'has_{task}'],
    offset=config.loss.normals_offset,
  )


# Losses by task name, then by kind for tasks not listed by name.
TASK_LOSSES: dict[str, TaskLoss] = {
  'scene': _scene_task,
  'depth': _depth_task,
  'normals': _normals_task,
}
KIND_LOSSES: dict[str, TaskLoss] = {
  'image_class': _scene_task,
  'dense_scalar': _depth_task,
  'dense_vector': _normals_task,
}


def task_loss_fn(task: tasks_lib.Task) -> TaskLoss:
  """Returns the loss function of an auxiliary task (by name, else by kind)."""
  if task.name in TASK_LOSSES:
    return TASK_LOSSES[task.name]
  if task.kind in KIND_LOSSES:
    return KIND_LOSSES[task.kind]
  raise ValueError(f'No loss for auxiliary task {task.name!r} (kind {task.kind!r}).')


def multi_loss(
  outputs: Mapping[str, Any], batch: Mapping[str, Array], *, config: Any
) -> tuple[Array, dict[str, Array]]:
  """The weighted multi-task loss.

  Args:
    outputs: the detector's output dict (`boxes`, `logits`, optional `aux`).
    batch: the input batch (`box_targets`, `cls_targets`, and per task `t`: `t`,
      `has_t`, and `t_mask` for dense tasks).
    config: the whole config (uses `config.loss` and `config.model.tasks`).

  Returns:
    `(total, parts)`: `parts` holds the unweighted `cls`, `loc` and one entry per task of
    `config.model.tasks`; `total` is the sum weighted by `config.loss.weights` (weight 1
    for a part without one). A task absent from `outputs['aux']` (e.g. the 'baseline'
    variant) gets part 0 and adds nothing.
  """
  weights = config.loss.weights
  cls_loss, loc_loss = detection_loss(
    outputs['boxes'],
    outputs['logits'],
    batch['box_targets'],
    batch['cls_targets'],
    loss_config=config.loss,
  )
  parts = {'cls': cls_loss, 'loc': loc_loss}
  aux = outputs.get('aux') or {}
  for task in tasks_lib.parse(config.model):
    if task.name in aux:
      parts[task.name] = task_loss_fn(task)(task.name, aux, batch, config)
    else:
      parts[task.name] = jnp.zeros([], jnp.float32)
  total = sum(weights.get(name, 1.0) * value for name, value in parts.items())
  return total, parts
