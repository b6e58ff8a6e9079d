"""Export a trained detector for serving: a `jax.export` artifact and a TF SavedModel.

  python -m rock_jax.export --checkpoint=DIR --out=OUT [--batch=N|dynamic] \
      [--with-postprocess] [--config=configs/nyuv2.py]

Writes the export folder that `rock_jax.serving` describes and loads:
`OUT/model.jax_exported` (StableHLO of preprocessed images -> detections, with
postprocess when `--with-postprocess`, else the head's boxes and logits),
`OUT/saved_model/` (TensorFlow, `serving_default`: uint8 images of any size ->
boxes in pixels, scores, classes, always with postprocess; `preprocessed`: the model
input -> normalised boxes, scores, classes) and `OUT/export.json`.
`--batch=dynamic` gives both a symbolic batch dimension.

The SavedModel goes through `jax2tf.convert` (native serialization, the only mode
left in jax 0.10: the same StableHLO, with the weights as constants, inside one
`XlaCallModule` op), wrapped in the `tf.function` of `preprocessed`. `serving_default`
calls it after `input_pipeline.preprocess_image` (the eval pipeline's resize without
antialiasing and normalisation, traced into the graph) and scales the boxes to the
input's pixels. It loads with `tf.saved_model.load` alone, without rock_jax or JAX.
Both artifacts are lowered for this machine's platform (recorded in `export.json`);
loading one elsewhere gives a one-line error. Weights are constants, so a model
must stay under the 2 GB protobuf limit of a SavedModel (ResNet-50 ROCK: ~0.1 GB).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from rock_jax import cli, inference, input_pipeline, postprocess, serving


def parse_batch(batch: str | int) -> int | None:
  """`'dynamic'` -> None (symbolic), `'N'` -> N >= 1."""
  if str(batch) == 'dynamic':
    return None
  try:
    value = int(batch)
  except ValueError:
    value = 0
  if value < 1:
    raise serving.ExportError(f"--batch must be a positive integer or 'dynamic', got {batch!r}")
  return value


def inference_fn(loaded: inference.LoadedModel, *, with_postprocess: bool) -> Callable:
  """`float32 images [B, H, W, 3] -> outputs` with the variables as constants.

  Outputs: postprocess's detections (`boxes`, `scores`, `classes`, `num`) with the
  config's evaluation settings, or the head's `boxes` and `logits`.
  """
  variables = jax.tree.map(jnp.asarray, loaded.variables)
  default_boxes = jnp.asarray(loaded.default_boxes, jnp.float32)

  def infer(images):
    outputs = loaded.model.apply(variables, images, train=False, with_aux=False)
    if with_postprocess:
      return postprocess.postprocess_outputs(
        outputs, default_boxes, loaded.config, top_k=postprocess.sorted_top_k
      )
    return {'boxes': outputs['boxes'], 'logits': outputs['logits']}

  return infer


def _input_spec(batch: int | None, image_size: Sequence[int]) -> jax.ShapeDtypeStruct:
  height, width = image_size
  leading = jax.export.symbolic_shape('b')[0] if batch is None else batch
  return jax.ShapeDtypeStruct((leading, height, width, 3), jnp.float32)


def export_jax(fn: Callable, batch: int | None, image_size: Sequence[int]) -> jax.export.Exported:
  """`jax.export` of `fn` for this platform, batch `batch` (None: symbolic)."""
  return jax.export.export(jax.jit(fn))(_input_spec(batch, image_size))


def save_saved_model(
  fn: Callable, path: epath.Path, *, batch: int | None, metadata: dict[str, Any]
) -> None:
  """Writes the TF SavedModel of the detection function `fn` (with postprocess).

  Two signatures share one copy of the converted model: `serving.SIGNATURE` takes
  uint8 images of any size and preprocesses them in TensorFlow, `serving.PREPROCESSED`
  takes the model input itself (what `serving.load` runs, so that it sees exactly
  the images the Flax model does).
  """
  import tensorflow as tf  # noqa: PLC0415 - TensorFlow only when writing a SavedModel.
  from jax.experimental import jax2tf  # noqa: PLC0415

  height, width = metadata['image_size']
  poly = None if batch is not None else [f'(b, {height}, {width}, 3)']
  converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False)

  @tf.function(
    input_signature=[tf.TensorSpec([batch, height, width, 3], tf.float32, name='images')],
    autograph=False,
  )
  def detect_preprocessed(images):
    det = converted(images)
    return {
      'boxes': det['boxes'],
      'scores': det['scores'],
      'classes': det['classes'],
      'num_detections': det['num'],
    }

  @tf.function(
    input_signature=[tf.TensorSpec([batch, None, None, 3], tf.uint8, name='images')],
    autograph=False,
  )
  def serve(images):
    size = tf.shape(images)[1:3]
    # The eval pipeline's own preprocessing (resize without antialiasing, normalise),
    # traced into the graph: a photo gives the detections `rock_jax.detect` gives, up
    # to float rounding (TensorFlow's graph optimiser turns the divisions by constants
    # into multiplications by their reciprocals, ~1e-7 on the model input).
    x = input_pipeline.preprocess_image(images, (height, width))
    det = detect_preprocessed(tf.ensure_shape(x, [batch, height, width, 3]))
    scale = tf.cast(tf.concat([size, size], axis=0), tf.float32)
    return {**det, 'boxes': det['boxes'] * scale}

  module = tf.Module()
  module.serve = serve
  module.detect_preprocessed = detect_preprocessed
  signatures = {serving.SIGNATURE: serve, serving.PREPROCESSED: detect_preprocessed}
  tf.saved_model.save(module, os.fspath(path), signatures=signatures)


def run(
  checkpoint: str | os.PathLike,
  out: str | os.PathLike,
  *,
  batch: str | int = 1,
  with_postprocess: bool = False,
  config=None,
) -> dict[str, Any]:
  """Exports a checkpoint; see the module docstring.

  Args:
    checkpoint: a workdir, its `checkpoints` folder or one step folder.
    out: the export folder (replaced if it holds an export).
    batch: N or 'dynamic'.
    with_postprocess: put postprocess (decode, NMS) into the `jax.export` artifact.
    config: the experiment config; None uses the checkpoint's.

  Returns:
    The metadata written to `export.json`.

  Raises:
    serving.ExportError: a bad `batch`; inference.LoadError: a bad checkpoint.
  """
  batch_size = parse_batch(batch)
  loaded = inference.load_model(checkpoint, config)
  image_size = tuple(int(v) for v in loaded.config.data.image_size)
  out = epath.Path(out)
  if (out / serving.METADATA).exists():
    shutil.rmtree(os.fspath(out))
  out.mkdir(parents=True, exist_ok=True)
  metadata = {
    'format': serving.FORMAT,
    'checkpoint': os.fspath(checkpoint),
    'step': loaded.step,
    'batch': batch_size,
    'with_postprocess': bool(with_postprocess),
    'image_size': list(image_size),
    'mean_rgb': list(input_pipeline.IMAGENET_MEAN),
    'std_rgb': list(input_pipeline.IMAGENET_STD),
    'class_names': list(loaded.class_names),
    'platform': jax.default_backend(),
    'jax_version': jax.__version__,
    'config': json.loads(loaded.config.to_json_best_effort()),
  }
  exported = export_jax(
    inference_fn(loaded, with_postprocess=with_postprocess), batch_size, image_size
  )
  (out / serving.JAX_ARTIFACT).write_bytes(bytes(exported.serialize()))
  save_saved_model(
    inference_fn(loaded, with_postprocess=True),
    out / serving.SAVED_MODEL,
    batch=batch_size,
    metadata=metadata,
  )
  text = json.dumps(metadata, indent=1)
  (out / serving.METADATA).write_text(text)
  (out / serving.SAVED_MODEL / serving.METADATA).write_text(text)
  return metadata


def _cli() -> None:
  """Defines the flags and runs (flags only here, so importing defines none)."""
  from absl import flags, logging  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415

  config_flag = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config (default: the one saved with the checkpoint).'
  )
  flags.DEFINE_string('checkpoint', None, 'Workdir, checkpoints folder or step folder.')
  flags.DEFINE_string('out', None, 'Export folder.')
  flags.DEFINE_string('batch', '1', "Batch size of the artifacts, or 'dynamic' (symbolic).")
  flags.DEFINE_bool('with-postprocess', False, 'Put decoding and NMS in the jax.export artifact.')
  flags.mark_flags_as_required(['checkpoint', 'out'])
  values = flags.FLAGS

  def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    try:
      metadata = run(
        values.checkpoint,
        values.out,
        batch=values.batch,
        with_postprocess=values['with-postprocess'].value,
        config=config_flag.value,
      )
    except (serving.ExportError, inference.LoadError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    batch = 'dynamic' if metadata['batch'] is None else metadata['batch']
    print(
      f'Exported step {metadata["step"]} (batch {batch}, '
      f'{"with" if metadata["with_postprocess"] else "without"} postprocess in the jax '
      f'artifact, {metadata["platform"]}) -> {values.out}'
    )

  cli.run(main)


if __name__ == '__main__':
  _cli()
