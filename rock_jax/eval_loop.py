"""Evaluation: detections, COCO AP and auxiliary-task metrics over a split.

The jitted eval step runs the detector and the (padded, fixed-shape) NMS on the
`('data',)` mesh and reduces the auxiliary metrics to sums on device. Process 0
collects the detections of all hosts and feeds the COCO evaluator, then shares the
results with the other processes.

Auxiliary metrics, pooled over every valid pixel (or image) of the split:
- image-level class task `t` (scene): `t_accuracy`, top-1;
- dense scalar task `t` (depth, disparity): `t_rmse` and `t_rel` (mean absolute
  relative error), in the data's units (metres for depth), on valid pixels, the
  prediction `exp(log-prediction)` clamped to the loss' range;
- dense vector task `t` (normals): `t_mean_angle`, mean angular error in degrees.

The validation loss is the training loss (`losses.multi_loss`) of each eval batch,
averaged over the batches weighted by their number of real images: `loss` and
`loss/<part>`. Process 0 also keeps the first `config.eval.num_panels` images' Figure-3
panels (`Evaluator.panels`, predictions over targets) and the COCO evaluator of the
last run (`Evaluator.coco`), for TensorBoard and `eval/<step>/` (`rock_jax.reporting`).
"""

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rock_jax import boxes as box_lib
from rock_jax import evaluate, input_pipeline, losses, panels, postprocess, reporting
from rock_jax.models import detector

# Host-side ground truth for the COCO evaluator.
_GT_KEYS = ('image_id', 'orig_size', 'gt_boxes', 'gt_labels', 'gt_mask')
# ImageNet statistics, to turn normalised images back into pixels for panels.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def eval_tasks(config: ml_collections.ConfigDict) -> list[str]:
  """The auxiliary tasks the model predicts (none for the baseline)."""
  if config.model.variant == 'baseline':
    return []
  return losses.parse_tasks(config.model.tasks)


def _dense_range(task: str, config: ml_collections.ConfigDict) -> tuple[float, float]:
  """The clamp range of a dense scalar prediction, as in the loss."""
  if task == 'disparity':
    return config.loss.get('min_disparity', 1.0), config.loss.get('max_disparity', 256.0)
  return config.loss.min_depth, config.loss.max_depth


def aux_metric_sums(
  aux: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
  """Per-batch sums for the auxiliary metrics (see the module docstring).

  Args:
    aux: the detector's auxiliary outputs.
    batch: the eval batch (`valid`, and per task `t`, `has_t`, `t_mask`).
    config: the experiment config.

  Returns:
    Scalar sums: `<t>/correct`, `<t>/count` (image tasks), `<t>/sq`, `<t>/rel`,
    `<t>/count` (scalar maps), `<t>/angle`, `<t>/count` (vector maps).
  """
  sums = {}
  for task in eval_tasks(config):
    if task not in aux:
      continue
    kind = config.model.task_specs[task].kind
    present = batch[f'has_{task}'] * batch['valid']
    pred = aux[task].astype(jnp.float32)
    if kind == 'image_class':
      correct = (jnp.argmax(pred, axis=-1) == batch[task]).astype(jnp.float32)
      sums[f'{task}/correct'] = jnp.sum(correct * present)
      sums[f'{task}/count'] = jnp.sum(present)
      continue
    target = batch[task].astype(jnp.float32)
    mask = batch[f'{task}_mask'] * present.reshape((-1,) + (1,) * (batch[f'{task}_mask'].ndim - 1))
    if kind == 'dense_scalar':
      lo, hi = _dense_range(task, config)
      mask = mask * (target > 0)
      value = jnp.clip(jnp.exp(pred), lo, hi)
      diff = value - target
      sums[f'{task}/sq'] = jnp.sum(mask * diff**2)
      sums[f'{task}/rel'] = jnp.sum(mask * jnp.abs(diff) / jnp.maximum(target, 1e-6))
    else:
      unit = pred / jnp.maximum(jnp.linalg.norm(pred, axis=-1, keepdims=True), 1e-6)
      cos = jnp.clip(jnp.sum(unit * target, axis=-1), -1.0, 1.0)
      sums[f'{task}/angle'] = jnp.sum(mask * jnp.degrees(jnp.arccos(cos)))
    sums[f'{task}/count'] = jnp.sum(mask)
  return sums


def aux_metrics_from_sums(sums: Mapping[str, float], config: ml_collections.ConfigDict) -> dict:
  """Turns the summed auxiliary statistics into the named metrics (None if no data)."""
  out = {}
  for task in eval_tasks(config):
    if f'{task}/count' not in sums:
      continue
    count = sums[f'{task}/count']
    div = lambda key, n=count: float(sums[key] / n) if n > 0 else None
    kind = config.model.task_specs[task].kind
    if kind == 'image_class':
      out[f'{task}_accuracy'] = div(f'{task}/correct')
    elif kind == 'dense_scalar':
      mse = div(f'{task}/sq')
      out[f'{task}_rmse'] = None if mse is None else float(np.sqrt(mse))
      out[f'{task}_rel'] = div(f'{task}/rel')
    else:
      out[f'{task}_mean_angle'] = div(f'{task}/angle')
  return out


def eval_step(
  variables: Mapping[str, Any],
  batch: Mapping[str, jax.Array],
  *,
  model: detector.Detector,
  config: ml_collections.ConfigDict,
  default_boxes: np.ndarray,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """Detections, auxiliary-metric sums and auxiliary outputs of one batch.

  Args:
    variables: `{'params', 'batch_stats'}`, replicated.
    batch: the sharded eval batch.
    model: the detector.
    config: the experiment config.
    default_boxes: `[A, 4]` default boxes of the model.

  Returns:
    (postprocess' detections, `aux_metric_sums`, the auxiliary outputs).
  """
  outputs = model.apply(variables, batch['image'], train=False, with_aux=bool(eval_tasks(config)))
  det = postprocess.postprocess_outputs(outputs, default_boxes, config)
  aux = outputs.get('aux') or {}
  sums = aux_metric_sums(aux, batch, config)
  sums.update(loss_sums(outputs, batch, config))
  return det, sums, dict(aux)


def loss_sums(
  outputs: Mapping[str, Any], batch: Mapping[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
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


def dataset_names(config: ml_collections.ConfigDict) -> tuple[list[str], dict[str, list[str]]]:
  """Class names of the detection labels and of image-level class tasks.

  Args:
    config: the experiment config (`data.name`, `data.builder_config`, `data.data_dir`).

  Returns:
    (the C foreground class names, {task: label names} for image-level tasks).
  """
  data = config.data
  builder = input_pipeline.get_builder(
    data.name, data.builder_config, data_dir=data.data_dir, manual_dir=data.manual_dir
  )
  features = builder.info.features
  class_names = list(features['objects']['label'].names)
  labels = {}
  for task in eval_tasks(config):
    if config.model.task_specs[task].kind == 'image_class' and task in features:
      labels[task] = list(features[task].names)
  return class_names, labels


def _pad(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads a host batch with zero examples (`valid` 0) up to `size`."""
  n = len(batch['valid'])
  if n == size:
    return dict(batch)
  return {
    k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()
  }


class Evaluator:
  """Runs the detector over an eval split and computes every metric.

  Attributes:
    config: the experiment config.
    class_names: the detector's foreground class names.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, model: detector.Detector, mesh: jax.sharding.Mesh
  ):
    self.config = config
    self.model = model
    self.mesh = mesh
    self.class_names, self.label_names = dataset_names(config)
    if len(self.class_names) != config.model.num_classes:
      raise ValueError(
        f'The dataset has {len(self.class_names)} classes but config.model.num_classes is '
        f'{config.model.num_classes}.'
      )
    self._replicated = NamedSharding(mesh, P())
    self._data = NamedSharding(mesh, P('data'))
    default_boxes = box_lib.default_boxes(config.model, tuple(config.data.image_size))
    self._step = jax.jit(
      functools.partial(eval_step, model=model, config=config, default_boxes=default_boxes),
      in_shardings=(self._replicated, self._data),
      out_shardings=self._replicated,
    )
    local_devices = max(1, mesh.size // jax.process_count())
    per_host = max(1, config.eval.batch_size // jax.process_count())
    self._host_batch = -(-per_host // local_devices) * local_devices
    self.panels: list[tuple[int, Any]] = []  # (image id, PIL image) of the last run.
    self.coco: evaluate.CocoEvaluator | None = None  # The last run's, on process 0.
    tasks = eval_tasks(config)
    self._device_keys = ('image', 'valid', 'box_targets', 'cls_targets') + tuple(
      k for t in tasks for k in (t, f'has_{t}', f'{t}_mask')
    )

  def run(
    self,
    state_or_variables: Any,
    split: str,
    *,
    step: int | None = None,
    panels_dir: str | epath.Path | None = None,
  ) -> dict[str, Any]:
    """Evaluates on `split`.

    Args:
      state_or_variables: a `TrainState` or `{'params', 'batch_stats'}`.
      split: the dataset split.
      step: the training step, recorded in the results.
      panels_dir: if given, process 0 also writes the Figure-3 panels (kept in
        `self.panels` at every run) of the first `config.eval.num_panels` images
        there.

    Returns:
      COCO metrics (`mAP@[0.5:0.95]`, `mAP@0.5`, `mAP@0.75`, `AP@0.5/<class>`),
      the auxiliary metrics, `step`, `split` and `num_images`.
    """
    config = self.config
    variables = state_or_variables
    if hasattr(state_or_variables, 'params'):
      variables = {
        'params': state_or_variables.params,
        'batch_stats': state_or_variables.batch_stats,
      }
    is_lead = jax.process_index() == 0
    coco = evaluate.CocoEvaluator(self.class_names) if is_lead else None
    dataset = input_pipeline.create_eval_dataset(
      config, split, process_index=jax.process_index(), process_count=jax.process_count()
    )
    sums: dict[str, float] = {}
    num_images = 0
    panels_left = int(config.eval.num_panels)
    self.panels = []
    for index, batch in enumerate(dataset.as_numpy_iterator()):
      if config.eval.max_batches and index >= config.eval.max_batches:
        break
      batch = _pad(batch, max(self._host_batch, len(batch['valid'])))
      device_batch = {
        k: jax.make_array_from_process_local_data(self._data, batch[k])
        for k in self._device_keys
        if k in batch
      }
      det, batch_sums, aux = self._step(variables, device_batch)
      for key, value in jax.device_get(batch_sums).items():
        sums[key] = sums.get(key, 0.0) + float(value)
      # Every host's ground truth and detections, in the global batch order.
      gt = {k: batch[k] for k in _GT_KEYS + ('valid',)}
      if jax.process_count() > 1:
        gt = multihost_utils.process_allgather(gt, tiled=True)
      det = jax.device_get(det)
      keep = np.asarray(gt['valid']) > 0
      num_images += int(keep.sum())
      if coco is not None and keep.any():
        coco.add(
          *(np.asarray(gt[k])[keep] for k in _GT_KEYS),
          {k: np.asarray(v)[keep] for k, v in det.items()},
        )
      if panels_left > 0 and is_lead:
        panels_left = self._write_panels(
          batch, det, jax.device_get(aux), keep, panels_dir, panels_left
        )
    results: dict[str, Any] = {'step': step, 'split': split, 'num_images': num_images}
    if coco is not None:
      results.update(coco.result())
    results.update(aux_metrics_from_sums(sums, config))
    results.update(loss_from_sums(sums))
    self.coco = coco
    return share_from_lead(results)

  def _write_panels(
    self,
    batch: Mapping[str, np.ndarray],
    det: Mapping[str, np.ndarray],
    aux: Mapping[str, np.ndarray],
    keep: np.ndarray,
    panels_dir: str | epath.Path | None,
    left: int,
  ) -> int:
    """Keeps (and writes) the panels of the first valid images; returns how many are left."""
    out = epath.Path(panels_dir) if panels_dir is not None else None
    if out is not None:
      out.mkdir(parents=True, exist_ok=True)
    kinds = {t: self.config.model.task_specs[t].kind for t in eval_tasks(self.config)}
    for i in np.flatnonzero(keep[: len(batch['image'])]):
      if left <= 0:
        break
      image = np.clip((batch['image'][i] * _STD + _MEAN) * 255.0, 0, 255).astype(np.uint8)
      panel = panels.figure3_panel(
        image,
        {k: v[i] for k, v in det.items()},
        {k: v[i] for k, v in aux.items()},
        class_names=self.class_names,
        task_kinds=kinds,
        label_names=self.label_names,
        targets=panels.targets_of(batch, i, kinds),
      )
      self.panels.append((int(batch['image_id'][i]), panel))
      if out is not None:
        with (out / f'panel_{int(batch["image_id"][i])}.png').open('wb') as f:
          panel.save(f, format='PNG')
      left -= 1
    return left

  def report(self, results: Mapping[str, Any], workdir: str | epath.Path) -> None:
    """Process 0 writes `workdir/results.json` and prints the per-class table."""
    if jax.process_index() != 0 or not results:
      return
    path = epath.Path(workdir) / 'results.json'
    path.write_text(json.dumps(reporting.to_json(results), indent=2, sort_keys=True) + '\n')
    variant = self.config.model.variant
    tasks = self.config.model.tasks if variant != 'baseline' else ''  # Baseline: no aux.
    name = f'{variant} ({tasks or "no aux"})'
    print(format_results(results, self.class_names, name), flush=True)
    workdir = epath.Path(workdir)
    written = [
      ('results', path),
      ('config', workdir / reporting.CONFIG_FILE),
      ('metrics log', workdir / reporting.METRICS_FILE),
      ('COCO json', workdir / reporting.EVAL_DIR),
      ('TensorBoard logs', f'{workdir}  (tensorboard --logdir={workdir})'),
      ('checkpoints', workdir / 'checkpoints'),
      ('Figure-3 panels', workdir / 'panels'),
    ]
    for what, where in written:
      if not isinstance(where, str) and not where.exists():
        continue
      print(f'{what + ":":<18}{where}', flush=True)


def share_from_lead(results: dict[str, Any]) -> dict[str, Any]:
  """Process 0's results on every process (as JSON values), so that every host ranks
  checkpoints by the same metrics; unchanged on a single process.
  """
  if jax.process_count() == 1:
    return results
  lead = jax.process_index() == 0
  payload = np.frombuffer(json.dumps(_to_json(results)).encode(), np.uint8) if lead else None
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(payload) if lead else 0)))
  buffer = multihost_utils.broadcast_one_to_all(payload if lead else np.zeros(size, np.uint8))
  return results if lead else json.loads(np.asarray(buffer).tobytes())


def _to_json(tree: Any) -> Any:
  """numpy scalars -> Python numbers, NaN -> None."""
  if isinstance(tree, Mapping):
    return {str(k): _to_json(v) for k, v in tree.items()}
  if isinstance(tree, list | tuple):
    return [_to_json(v) for v in tree]
  if isinstance(tree, np.generic):
    tree = tree.item()
  if isinstance(tree, float) and not np.isfinite(tree):
    return None
  return tree


def scalar_results(results: Mapping[str, Any], prefix: str = 'eval/') -> dict[str, float]:
  """The numeric entries of `results`, for the metric writers (`eval/...`)."""
  return {f'{prefix}{k}': v for k, v in reporting.metric_values(results).items()}


def format_results(results: Mapping[str, Any], class_names: Sequence[str], name: str = '') -> str:
  """The paper's Table-3 layout (AP@0.5 per class, in %) and the three mAPs.

  The other metrics are in the evaluation table printed before (`reporting.format_eval`)
  and in results.json.

  Args:
    results: from `Evaluator.run`.
    class_names: the table's class columns.
    name: the model name in the first column.

  Returns:
    A title line, the table and one line with mAP@0.5, mAP@0.75 and mAP@[0.5:0.95].
  """
  lines = [
    f'Final results, AP@0.5 per class in % ({results.get("split")} split, step '
    f'{results.get("step")}, {results.get("num_images")} images):'
  ]
  lines.append(evaluate.table(results, class_names, fmt='text', name=name))
  # The table shows mAP@0.5 and the per-class AP@0.5; the stricter averages follow.
  lines.append(
    '  '.join(
      f'{key}: ' + ('n/a' if results.get(key) is None else f'{results[key]:.4f}')
      for key in ('mAP@0.5', 'mAP@0.75', 'mAP@[0.5:0.95]')
      if key in results
    )
  )
  return '\n'.join(lines)
