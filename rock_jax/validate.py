"""Checks a config before any work: names of the mode, variant, tasks, datasets and splits.

`check_config` runs first in `train.train_and_evaluate`, before the workdir is
created, the data is read or anything compiles, so that a misspelled eval split
fails at once in one line instead of after `eval_every` steps of training.
"""

from __future__ import annotations

import importlib.util

import ml_collections

from rock_jax import cli, losses
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector

MODES = ('train', 'eval')
# Split names of the project's builders, by (dataset, builder config); None: the default.
SPLITS = {
  ('nyuv2', None): ('train', 'validation', 'test'),
  ('nyuv2', 'paper'): ('train', 'validation', 'test'),
  ('nyuv2', 'official'): ('train', 'test'),
  ('synthetic_rooms', None): ('train', 'validation', 'test'),
  ('cityscapes', None): ('train', 'validation', 'test'),
  ('mlt', None): ('train',),
}
DATASETS = ('nyuv2', 'mlt', 'cityscapes', 'synthetic_rooms')


class ConfigError(cli.UserError, ValueError):
  """A config field with an unusable value; the message names the field."""


def _base_split(split: str) -> list[str]:
  """TFDS split expression ('train[:10%]+validation') -> its split names."""
  return [part.split('[', 1)[0].strip() for part in split.split('+') if part.strip()]


def _check_dataset(field: str, name: str, builder_config: str | None, splits: list[str]) -> None:
  known = importlib.util.find_spec(f'rock_jax.datasets.{name}') is not None
  if not known:
    import tensorflow_datasets as tfds  # noqa: PLC0415 - only for builders registered elsewhere.

    try:
      tfds.core.registered.imported_builder_cls(name)
    except Exception:  # noqa: BLE001 - any lookup failure: the name is unknown.
      raise ConfigError(
        f'{field}.name: unknown dataset {name!r} (one of {", ".join(DATASETS)})'
      ) from None
    return
  allowed = SPLITS.get((name, builder_config), SPLITS.get((name, None)))
  if allowed is None:
    return
  for split_field, split in splits:
    for base in _base_split(split):
      if base not in allowed:
        raise ConfigError(
          f'{split_field}: unknown split {base!r} of {name}'
          f'{"/" + builder_config if builder_config else ""} (one of {", ".join(allowed)})'
        )


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first field with an unknown name.

  Args:
    config: the experiment config.
  """
  if config.mode not in MODES:
    raise ConfigError(f'config.mode must be one of {MODES}, got {config.mode!r}')
  if config.mode == 'eval' and not config.get('init_from'):
    raise ConfigError('config.mode=eval needs config.init_from (a workdir or checkpoint)')
  model = config.model
  if model.variant not in detector.VARIANTS:
    raise ConfigError(
      f'config.model.variant: unknown variant {model.variant!r} (one of {", ".join(detector.VARIANTS)})'
    )
  if model.variant != tasks_lib.BASELINE:
    try:
      for task in tasks_lib.parse(model):
        losses.task_loss_fn(task)
    except (ValueError, KeyError) as e:
      known = ', '.join(model.task_specs.keys())
      raise ConfigError(f'config.model.tasks={model.tasks!r}: {e} (known: {known})') from None
  data = config.data
  splits = [('config.data.eval_split', data.eval_split)]
  if config.mode == 'train':
    splits.append(('config.data.train_split', data.train_split))
    splits.append(('config.data.test_split', data.get('test_split') or ''))
  _check_dataset('config.data', data.name, data.get('builder_config'), splits)
  for k, entry in enumerate(data.get('mixture', ()) or ()):
    name, builder_config = entry[0], entry[1]
    _check_dataset(f'config.data.mixture[{k}]', name, builder_config, [])


class TaskCoverage:
  """Warns once when an auxiliary task has no valid target in the first batches.

  Depth that is all NaN or zero (or normals without a valid pixel) makes the task's
  loss 0: the run trains without it and says nothing. Fed the host batches, this
  counts each task's valid pixels (dense tasks: `<task>_mask` where `has_<task>`)
  or labelled images (`has_<task>`) and, after `num_batches`, logs one warning per
  task that had none.
  """

  def __init__(self, tasks: list[str], num_batches: int = 20):
    self.tasks = list(tasks)
    self.num_batches = num_batches
    self.seen = 0
    self.valid = dict.fromkeys(self.tasks, 0.0)
    self.warned: list[str] = []

  def update(self, batch: dict) -> None:
    """Counts one host batch (numpy); warns after the `num_batches`-th."""
    if self.seen >= self.num_batches or not self.tasks:
      return
    import numpy as np  # noqa: PLC0415

    for task in self.tasks:
      has = np.asarray(batch.get(f'has_{task}', 1.0), np.float64)
      mask = batch.get(f'{task}_mask')
      if mask is None:
        self.valid[task] += float(np.sum(has))
      else:
        mask = np.asarray(mask, np.float64)
        has = has.reshape(has.shape + (1,) * (mask.ndim - has.ndim))
        self.valid[task] += float(np.sum(mask * has))
    self.seen += 1
    if self.seen == self.num_batches:
      self._report()

  def _report(self) -> None:
    from absl import logging  # noqa: PLC0415

    for task in self.tasks:
      if self.valid[task] == 0 and task not in self.warned:
        self.warned.append(task)
        logging.warning(
          'Task %r has no valid target in the first %d batches (depth all NaN or zero, or '
          'no label?): its loss is 0 and it does not train.',
          task,
          self.seen,
        )
