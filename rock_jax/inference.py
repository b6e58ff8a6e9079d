"""A trained detector for inference: built from a checkpoint's config, variables restored.

`load_model` is the one way to get a trained model outside the training loop: detect,
`mode=eval`, export, the benchmarks, the notebook and the tests use it. It picks the
checkpoint step the way the trainer's test evaluation does (best on validation when the
run saved validation metrics, else the latest; `latest=True` or a step folder override),
rebuilds the model from the config saved with that step (or the given one), and checks
that every variable fits it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rock_jax import boxes as box_lib
from rock_jax import checkpoints, cli, input_pipeline
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector


class LoadError(Exception):
  """No checkpoint there, or one that does not fit its model; `str(error)` is one line."""


@dataclasses.dataclass
class LoadedModel:
  """A detector with its variables and everything needed to read its outputs.

  Attributes:
    config: the experiment config the model was built from.
    model: the Flax module.
    variables: `{'params', 'batch_stats'}` as numpy arrays.
    default_boxes: `[A, 4]` `(cy, cx, h, w)` for `config.data.image_size`.
    class_names: the C foreground class names (index = class id - 1).
    task_kinds: auxiliary task name -> kind, in config order.
    label_names: task name -> class names for image-level class tasks.
    step: the checkpoint step.
    kind: how the step was chosen: 'best' (on validation), 'latest' or 'given'
      ('exported' for an artifact of `rock_jax.export`).
    path: the step folder it was restored from.
  """

  config: ml_collections.ConfigDict
  model: detector.Detector
  variables: dict[str, Any]
  default_boxes: np.ndarray
  class_names: tuple[str, ...]
  task_kinds: dict[str, str]
  label_names: dict[str, tuple[str, ...]]
  step: int
  kind: str = 'given'
  path: str = ''


def class_names_for(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], dict]:
  """Returns the detector's class names and the image-level tasks' label names.

  Names come from the dataset's builder when it fixes them and the count matches the
  config; otherwise they fall back to 'class k' (e.g. a custom MLT class list).

  Args:
    config: the experiment config.

  Returns:
    `(class_names, label_names)` with `label_names[task]` for image_class tasks.
  """
  try:
    objects, labels = input_pipeline.class_names(config)
  except Exception as e:  # noqa: BLE001 - names are cosmetic: fall back to 'class k'.
    logging.warning(
      'No class names for dataset %r: %s', config.data.name, cli.one_line(e, max_lines=2)
    )
    objects, labels = (), {}
  num_classes = int(config.model.num_classes)
  if len(objects) != num_classes:
    objects = tuple(f'class {k}' for k in range(1, num_classes + 1))
  label_names = {}
  for task in tasks_lib.active(config):
    if task.kind == 'image_class':
      names = labels.get(task.name, ())
      names = names if len(names) == task.width else ()
      label_names[task.name] = names or tuple(f'{task.name} {k}' for k in range(task.width))
  return objects, label_names


def load_model(
  checkpoint: str | os.PathLike,
  config: ml_collections.ConfigDict | None = None,
  *,
  latest: bool = False,
) -> LoadedModel:
  """Loads a checkpoint's variables into the detector its config describes.

  Args:
    checkpoint: a workdir, its `checkpoints` folder (the best step on validation, else
      the latest) or one step folder (that step).
    config: the experiment config; None uses the one saved with the checkpoint.
    latest: take the latest step, not the best one on validation.

  Returns:
    The loaded model.

  Raises:
    LoadError: no checkpoint there, or a checkpoint that does not fit the model.
  """
  try:
    directory, step, kind = checkpoints.select_checkpoint(checkpoint, latest=latest)
    if kind == 'latest':
      # The newest step that restores cleanly: a damaged one is skipped (and named).
      directory, step, loaded = checkpoints.load_checkpoint(directory)
    else:  # The chosen step itself, or a one-line error.
      directory, step, loaded = checkpoints.load_checkpoint(directory / str(step))
  except FileNotFoundError:
    raise LoadError(f'no checkpoint found at {checkpoint}') from None
  except checkpoints.CheckpointError as e:
    raise LoadError(str(e)) from None
  if config is None:
    config = checkpoints.load_config(directory / str(step))
  model = detector.build_model(config)
  height, width = config.data.image_size
  try:
    abstract = jax.eval_shape(
      lambda: model.init(
        jax.random.key(0), jnp.zeros((1, height, width, 3), jnp.float32), train=False
      )
    )
  except (ValueError, KeyError, TypeError) as e:
    raise LoadError(
      f'cannot build the model of this config: {cli.one_line(e, max_lines=2)}'
    ) from None
  try:
    # Nothing excluded: every leaf must load with the model's shape.
    variables = checkpoints.merge_variables(dict(abstract), loaded)
  except ValueError as e:
    detail = cli.one_line(e, max_lines=2).split('must keep its fresh init: ', 1)[-1]
    raise LoadError(
      f'checkpoint {directory}/{step} does not match the config '
      f'(variant {config.model.variant!r}, {config.model.num_classes} classes): {detail}'
    ) from None
  class_names, label_names = class_names_for(config)
  task_kinds = {t.name: t.kind for t in tasks_lib.active(config)}
  return LoadedModel(
    config=config,
    model=model,
    variables=variables,
    default_boxes=box_lib.default_boxes(config.model, (height, width)),
    class_names=class_names,
    task_kinds=task_kinds,
    label_names=label_names,
    step=step,
    kind=kind,
    path=str(directory / str(step)),
  )
