"""Loading and running an exported detector (`rock_jax.export`) without the Flax model.

An export folder `OUT` holds:
- `export.json`: the format version, what was exported (batch, postprocess), the
  model input size, the class names, the platform, the checkpoint and its config;
- `model.jax_exported`: a serialized `jax.export.Exported` (StableHLO) of
  `images float32 [B, H, W, 3] (normalised as in training) -> outputs`, where the
  outputs are postprocess's detections (`--with-postprocess`) or the head's
  fixed-shape `boxes` and `logits` (then postprocess runs here, with the saved
  evaluation settings and default boxes computed from the saved config);
- `saved_model/`: a TensorFlow SavedModel (`export.json` copied inside) whose
  `serving_default` signature takes `images` uint8 `[B, height, width, 3]` of any
  size (preprocessed as the eval pipeline does) and returns `boxes` (ymin, xmin,
  ymax, xmax in pixels of the input), `scores`, `classes` (1..C) and
  `num_detections`; its `preprocessed` signature takes the model input (float32
  `[B, H, W, 3]`, normalised) and returns the same with normalised boxes.

`load(DIR)` takes `OUT` (the `jax.export` artifact) or `OUT/saved_model` and returns
a `ServingModel` whose `predict` maps preprocessed images to postprocess's
detections (for a SavedModel through `preprocessed`: the very input the Flax model
gets, not pixels rebuilt from it), so `rock_jax.detect --exported=DIR` runs either
artifact. Every failure is an `ExportError` whose message is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

FORMAT = 'rock_jax.export/1'
METADATA = 'export.json'
JAX_ARTIFACT = 'model.jax_exported'
SAVED_MODEL = 'saved_model'
SIGNATURE = 'serving_default'
PREPROCESSED = 'preprocessed'  # The SavedModel's signature on the model input.


class ExportError(Exception):
  """A bad, missing or incompatible artifact; `str(error)` is one line."""


def one_line(error: BaseException) -> str:
  """The first non-empty line of an error message (its type name if none)."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


@dataclasses.dataclass
class ServingModel:
  """An exported detector, ready to run.

  Attributes:
    kind: 'jax' (the `jax.export` artifact) or 'saved_model'.
    metadata: the contents of `export.json`.
    image_size: `(H, W)` the model sees.
    batch: the exported batch size, or None for a symbolic batch.
    class_names: the C foreground class names.
    step: the checkpoint step it was exported from.
    predict: `float32 images [B, H, W, 3] -> detections` (numpy dict: normalised
      yxyx `boxes`, `scores`, `classes`, `num`).
  """

  kind: str
  metadata: dict[str, Any]
  image_size: tuple[int, int]
  batch: int | None
  class_names: tuple[str, ...]
  step: int
  predict: Callable[[np.ndarray], dict[str, np.ndarray]]


def read_metadata(directory: epath.Path) -> dict[str, Any]:
  """Reads and checks `export.json` of an export folder or its `saved_model`."""
  path = directory / METADATA
  if not path.exists():
    raise ExportError(f'{path}: missing; not a rock_jax export folder (rock_jax.export writes it)')
  try:
    metadata = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ExportError(f'{path}: not valid JSON: {one_line(e)}') from None
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    found = metadata.get('format') if isinstance(metadata, dict) else None
    raise ExportError(f'{path}: format {found!r} is not {FORMAT!r}; export the checkpoint again')
  return metadata


def _load_jax(directory: epath.Path, metadata: dict[str, Any]) -> Callable:
  path = directory / JAX_ARTIFACT
  if not path.exists():
    raise ExportError(f'{path}: missing')
  try:
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
  except Exception as e:  # noqa: BLE001 - flatbuffers and MLIR raise many types.
    raise ExportError(f'{path}: not a readable jax.export artifact: {one_line(e)}') from None
  platform = jax.default_backend()
  if platform not in exported.platforms:
    raise ExportError(
      f'{path}: exported for {", ".join(exported.platforms)}, this machine runs {platform}; '
      'export again here'
    )
  postprocess_fn = None
  if not metadata['with_postprocess']:
    from rock_jax import boxes as box_lib  # noqa: PLC0415 - only when the artifact lacks NMS.
    from rock_jax import postprocess  # noqa: PLC0415

    config = ml_collections.ConfigDict(metadata['config'])
    default_boxes = jnp.asarray(
      box_lib.default_boxes(config.model, tuple(metadata['image_size'])), jnp.float32
    )
    postprocess_fn = lambda outputs: postprocess.postprocess_outputs(outputs, default_boxes, config)

  @jax.jit
  def run(images):
    outputs = exported.call(images)
    return outputs if postprocess_fn is None else postprocess_fn(outputs)

  def predict(images: np.ndarray) -> dict[str, np.ndarray]:
    try:
      det = run(jnp.asarray(images, jnp.float32))
    except (TypeError, ValueError) as e:
      raise ExportError(f'{path}: cannot run on images {images.shape}: {one_line(e)}') from None
    return jax.tree.map(np.asarray, dict(det))

  return predict


def _load_saved_model(directory: epath.Path) -> Callable:
  import tensorflow as tf  # noqa: PLC0415 - only for SavedModels.

  try:
    loaded = tf.saved_model.load(os.fspath(directory))
    signatures = loaded.signatures
  except Exception as e:  # noqa: BLE001 - TensorFlow raises many types for a bad folder.
    raise ExportError(f'{directory}: not a loadable SavedModel: {one_line(e)}') from None
  if PREPROCESSED not in signatures:
    raise ExportError(
      f'{directory}: the SavedModel has no {PREPROCESSED!r} signature (an older export); '
      'export the checkpoint again'
    )
  # Not `serving_default` on pixels rebuilt from `images`: `detect.preprocess` resizes
  # in float, so rounding back to uint8 would change the input of every resized image.
  run = signatures[PREPROCESSED]

  def predict(images: np.ndarray) -> dict[str, np.ndarray]:
    out = run(images=tf.constant(np.asarray(images, np.float32)))
    return {
      'boxes': out['boxes'].numpy(),
      'scores': out['scores'].numpy(),
      'classes': out['classes'].numpy(),
      'num': out['num_detections'].numpy(),
    }

  return predict


def load(directory: str | os.PathLike) -> ServingModel:
  """Loads an export folder (the `jax.export` artifact) or its `saved_model` folder.

  Raises:
    ExportError: a missing folder or file, an unreadable or incompatible artifact.
  """
  directory = epath.Path(directory)
  if not directory.is_dir():
    raise ExportError(f'{directory}: no such export folder')
  metadata = read_metadata(directory)
  if (directory / 'saved_model.pb').exists():
    kind, predict = 'saved_model', _load_saved_model(directory)
  else:
    kind, predict = 'jax', _load_jax(directory, metadata)
  return ServingModel(
    kind=kind,
    metadata=metadata,
    image_size=tuple(metadata['image_size']),
    batch=metadata['batch'],
    class_names=tuple(metadata['class_names']),
    step=int(metadata['step']),
    predict=predict,
  )
