"""The eval step on device: detections, the auxiliary tasks' metrics and the loss, as sums.

Each batch reduces to sums on device, added up over the split on the host and divided
at the end, so the metrics are pooled over every valid pixel (or image) of the split,
whatever the batching. By task kind (`KIND_METRICS`):
- image_class task `t` (scene): `t_accuracy`, top-1;
- dense_scalar task `t` (depth, disparity): `t_rmse` and `t_rel` (mean absolute
  relative error), in the data's units (metres for depth), on valid pixels, the
  prediction `exp(log-prediction)` clamped to the loss' range
  (`config.loss.min_depth`, `max_depth`);
- dense_vector task `t` (normals): `t_mean_angle`, mean angular error in degrees.

The validation loss is the training loss (`losses.multi_loss`) of each batch, averaged
over the batches weighted by their number of real images: `loss` and `loss/<part>`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rock_jax import losses, postprocess
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector

Sums = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class KindMetric:
  """How one task kind is measured.

  Attributes:
    sums: `(pred, target, mask, config) -> {stat: sum}` on device; `mask` is the valid
      examples (`[B]`) or pixels (`[B, h, w]`), `count` is added from it.
    values: `(stats, count) -> {metric suffix: value}` on the host, from the split's
      summed statistics (`count > 0`).
  """

  sums: Callable[..., Sums]
  values: Callable[[Mapping[str, float], float], dict[str, float]]


def _class_sums(pred, target, mask, config) -> Sums:
  del config
  correct = (jnp.argmax(pred, axis=-1) == target).astype(jnp.float32)
  return {'correct': jnp.sum(correct * mask)}


def _scalar_sums(pred, target, mask, config) -> Sums:
  mask = mask * (target > 0)
  value = jnp.clip(jnp.exp(pred), config.loss.min_depth, config.loss.max_depth)
  diff = value - target
  return {
    'sq': jnp.sum(mask * diff**2),
    'rel': jnp.sum(mask * jnp.abs(diff) / jnp.maximum(target, 1e-6)),
    'count': jnp.sum(mask),  # Only the positive targets count.
  }


def _vector_sums(pred, target, mask, config) -> Sums:
  del config
  unit = pred / jnp.maximum(jnp.linalg.norm(pred, axis=-1, keepdims=True), 1e-6)
  cos = jnp.clip(jnp.sum(unit * target, axis=-1), -1.0, 1.0)
  return {'angle': jnp.sum(mask * jnp.degrees(jnp.arccos(cos)))}


KIND_METRICS: dict[str, KindMetric] = {
  'image_class': KindMetric(_class_sums, lambda s, n: {'accuracy': s['correct'] / n}),
  'dense_scalar': KindMetric(
    _scalar_sums, lambda s, n: {'rmse': float(np.sqrt(s['sq'] / n)), 'rel': s['rel'] / n}
  ),
  'dense_vector': KindMetric(_vector_sums, lambda s, n: {'mean_angle': s['angle'] / n}),
}
# The metric names of each kind, for a task with no valid target in the split (None).
_NAMES = {
  'image_class': ('accuracy',),
  'dense_scalar': ('rmse', 'rel'),
  'dense_vector': ('mean_angle',),
}


def aux_metric_sums(
  aux: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], config: ml_collections.ConfigDict
) -> Sums:
  """One batch's sums of every active task's statistics: `<t>/<stat>` and `<t>/count`.

  Args:
    aux: the detector's auxiliary outputs.
    batch: the eval batch (`valid`, and each task's `tasks.Task.batch_keys`).
    config: the experiment config.
  """
  sums = {}
  for task in tasks_lib.active(config):
    if task.name not in aux:
      continue
    mask = batch[f'has_{task.name}'] * batch['valid']
    if task.dense:
      pixels = batch[f'{task.name}_mask']
      mask = pixels * mask.reshape((-1,) + (1,) * (pixels.ndim - 1))
    target = batch[task.name]
    if task.dense:
      target = target.astype(jnp.float32)
    stats = {'count': jnp.sum(mask)}
    stats.update(
      KIND_METRICS[task.kind].sums(aux[task.name].astype(jnp.float32), target, mask, config)
    )
    sums.update({f'{task.name}/{k}': v for k, v in stats.items()})
  return sums


def aux_metrics_from_sums(sums: Mapping[str, float], config: ml_collections.ConfigDict) -> dict:
  """The named metrics `<t>_<metric>` from the split's sums (None where nothing counted)."""
  out = {}
  for task in tasks_lib.active(config):
    if f'{task.name}/count' not in sums:
      continue
    count = sums[f'{task.name}/count']
    stats = {k.split('/', 1)[1]: v for k, v in sums.items() if k.startswith(f'{task.name}/')}
    if count > 0:
      values = KIND_METRICS[task.kind].values(stats, count)
    else:
      values = dict.fromkeys(_NAMES.get(task.kind, ()))
    out.update({f'{task.name}_{k}': None if v is None else float(v) for k, v in values.items()})
  return out


def loss_sums(
  outputs: Mapping[str, Any], batch: Mapping[str, jax.Array], config: ml_collections.ConfigDict
) -> Sums:
  """The batch's loss and parts times its number of real images (`loss_count`)."""
  total, parts = losses.multi_loss(outputs, batch, config=config)
  count = jnp.sum(batch['valid'])
  sums = {'loss': total * count, 'loss_count': count}
  sums.update({f'loss/{k}': v * count for k, v in parts.items()})
  return sums


def loss_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
  """`loss` and `loss/<part>` averaged over the real images (see `loss_sums`)."""
  count = sums.get('loss_count', 0.0)
  if count <= 0:
    return {}
  return {k: float(v / count) for k, v in sums.items() if k == 'loss' or k.startswith('loss/')}


def eval_step(
  variables: Mapping[str, Any],
  batch: Mapping[str, jax.Array],
  *,
  model: detector.Detector,
  config: ml_collections.ConfigDict,
  default_boxes: np.ndarray,
) -> tuple[dict[str, jax.Array], Sums, dict[str, jax.Array]]:
  """Detections, metric sums and auxiliary outputs of one batch (jitted by the evaluator).

  Args:
    variables: `{'params', 'batch_stats'}`, replicated.
    batch: the sharded eval batch.
    model: the detector.
    config: the experiment config.
    default_boxes: `[A, 4]` default boxes of the model.

  Returns:
    (postprocess' detections, `aux_metric_sums` and `loss_sums`, the auxiliary outputs).
  """
  outputs = model.apply(
    variables, batch['image'], train=False, with_aux=bool(tasks_lib.active(config))
  )
  det = postprocess.postprocess_outputs(outputs, default_boxes, config)
  aux = outputs.get('aux') or {}
  sums = aux_metric_sums(aux, batch, config)
  sums.update(loss_sums(outputs, batch, config))
  return det, sums, dict(aux)
