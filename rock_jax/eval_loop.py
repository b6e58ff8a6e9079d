"""Evaluation over a split: runs the eval step, gathers every host's detections, feeds COCO.

The jitted eval step (`rock_jax.metrics.eval_step`) runs the detector and the (padded,
fixed-shape) NMS on the `('data',)` mesh and reduces the auxiliary metrics and the loss
to sums on device. Process 0 collects the detections of all hosts and feeds the COCO
evaluator (`rock_jax.coco`), then shares the results with the other processes. It also
keeps the first `config.eval.num_panels` images' Figure-3 panels (`Evaluator.panels`)
and the COCO evaluator of the last run (`Evaluator.coco`), which `rock_jax.reporting`
writes (TensorBoard, `eval/<step>/`, results.json).
"""

import functools
import json
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rock_jax import boxes as box_lib
from rock_jax import coco, input_pipeline, metrics, panels, reporting
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector

# Host-side ground truth for the COCO evaluator.
_GT_KEYS = ('image_id', 'orig_size', 'gt_boxes', 'gt_labels', 'gt_mask')


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
    self.class_names, self.label_names = input_pipeline.class_names(config)
    if len(self.class_names) != config.model.num_classes:
      raise ValueError(
        f'The dataset has {len(self.class_names)} classes but config.model.num_classes is '
        f'{config.model.num_classes}.'
      )
    self._replicated = NamedSharding(mesh, P())
    self._data = NamedSharding(mesh, P('data'))
    default_boxes = box_lib.default_boxes(config.model, tuple(config.data.image_size))
    self._step = jax.jit(
      functools.partial(metrics.eval_step, model=model, config=config, default_boxes=default_boxes),
      in_shardings=(self._replicated, self._data),
      out_shardings=self._replicated,
    )
    local_devices = max(1, mesh.size // jax.process_count())
    per_host = max(1, config.eval.batch_size // jax.process_count())
    self._host_batch = -(-per_host // local_devices) * local_devices
    self.panels: list[tuple[int, Any]] = []  # (image id, PIL image) of the last run.
    self.coco: coco.CocoEvaluator | None = None  # The last run's, on process 0.
    self._device_keys = ('image', 'valid', 'box_targets', 'cls_targets')
    self._device_keys += tasks_lib.batch_keys(config)
    self._task_kinds = {t.name: t.kind for t in tasks_lib.active(config)}

  def run(
    self,
    variables: Mapping[str, Any],
    split: str,
    *,
    step: int | None = None,
    panels_dir: str | epath.Path | None = None,
  ) -> dict[str, Any]:
    """Evaluates on `split`.

    Args:
      variables: `{'params', 'batch_stats'}` (`train.TrainState.variables`).
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
    is_lead = jax.process_index() == 0
    evaluator = coco.CocoEvaluator(self.class_names) if is_lead else None
    dataset = input_pipeline.create_eval_dataset(
      config, split, process_index=jax.process_index(), process_count=jax.process_count()
    )
    sums: dict[str, float] = {}
    num_images = 0
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
      if evaluator is not None and keep.any():
        evaluator.add(
          *(np.asarray(gt[k])[keep] for k in _GT_KEYS),
          {k: np.asarray(v)[keep] for k, v in det.items()},
        )
      if is_lead and len(self.panels) < config.eval.num_panels:
        self.panels += panels.eval_panels(
          input_pipeline.image_pixels(batch['image']),
          batch,
          det,
          jax.device_get(aux),
          keep,
          class_names=self.class_names,
          label_names=self.label_names,
          task_kinds=self._task_kinds,
          limit=config.eval.num_panels - len(self.panels),
        )
    if is_lead and panels_dir is not None:
      reporting.write_panels(self.panels, panels_dir)
    results: dict[str, Any] = {'step': step, 'split': split, 'num_images': num_images}
    if evaluator is not None:
      results.update(evaluator.result())
    results.update(metrics.aux_metrics_from_sums(sums, config))
    results.update(metrics.loss_from_sums(sums))
    self.coco = evaluator
    return share_from_lead(results)


def share_from_lead(results: dict[str, Any]) -> dict[str, Any]:
  """Process 0's results on every process (as JSON values), so that every host ranks
  checkpoints by the same metrics; unchanged on a single process.
  """
  if jax.process_count() == 1:
    return results
  lead = jax.process_index() == 0
  payload = (
    np.frombuffer(json.dumps(reporting.to_json(results)).encode(), np.uint8) if lead else None
  )
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(payload) if lead else 0)))
  buffer = multihost_utils.broadcast_one_to_all(payload if lead else np.zeros(size, np.uint8))
  return results if lead else json.loads(np.asarray(buffer).tobytes())
