"""Run a trained detector on a folder of images: COCO-style JSON and Figure-3 panels.

  python -m rock_jax.detect --checkpoint=WORKDIR --images=FOLDER --out=OUT \
      [--config=configs/nyuv2.py] [--score_threshold=0.3] [--latest]
  python -m rock_jax.detect --exported=EXPORT_DIR --images=FOLDER --out=OUT

`--exported` runs an artifact of `rock_jax.export` instead (`EXPORT_DIR` for the
`jax.export` one, `EXPORT_DIR/saved_model` for the SavedModel) without building the
Flax model; its panels show the detections only (artifacts return no auxiliary maps).

`--images` is a folder, one image file or a glob (`'photos/*.jpg'`, quoted). Given a
workdir, detect loads the checkpoint chosen on validation (best mAP@0.5, as the
trainer's test evaluation does) when the run saved validation metrics, else the
latest; `--latest` takes the latest, and a step folder (`WORKDIR/checkpoints/<step>`)
that step. It prints which step it loaded.

Images of any size and mode are read with PIL (EXIF orientation applied), then go
through `input_pipeline.preprocess_image`, the function the eval pipeline uses
(resize without antialiasing, ImageNet normalisation); detections come back as
normalised boxes and are mapped to the original pixels with the evaluator's
`coco.to_pixels_xywh`. Writes:
- `OUT/detections.json`: COCO results, `{image_id, category_id, bbox: [x, y, w, h]
  in original pixels, score}` (every detection above `config.eval.score_threshold`);
- `OUT/images.json`: `images` (id, file_name, height, width) and `categories`
  (id, name), so the results load with pycocotools next to a matching ground truth;
- `OUT/panels/<name>.png`: the Figure-3 row of each image (`rock_jax.panels`).

Without `--config`, the config saved with the checkpoint is used; with it, the
checkpoint must match the model it builds (a one-line error says what differs).

Bad inputs: every image is decoded in full before the model loads or anything is
written; a file that does not decode (truncated, not an image) stops the run with
one line naming it and leaves no output. A damaged newest checkpoint step is
skipped (named in a warning, left in place) and the newest clean one is used.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from rock_jax import cli, coco, inference, input_pipeline, panels, postprocess, serving

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


class DetectError(Exception):
  """A user-facing failure; `str(error)` is one line."""


def list_images(images: str | os.PathLike) -> list[epath.Path]:
  """Returns the image files a folder (not recursive), a file or a glob names, sorted.

  Raises:
    DetectError: nothing there, or no image among it.
  """
  text = os.fspath(images)
  path = epath.Path(text)
  if path.is_file():
    return [path]
  if glob.has_magic(text):
    files = sorted(
      epath.Path(p) for p in glob.glob(text) if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS
    )
    if not files:
      raise DetectError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) match {text}')
    return files
  if not path.is_dir():
    raise DetectError(f'image folder not found (nor an image file or glob): {path}')
  files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise DetectError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {path}')
  return files


def to_rgb8(image: Image.Image) -> np.ndarray:
  """Converts a PIL image of any mode to uint8 RGB, scaling high bit depths.

  PIL's `convert('RGB')` clips 16- and 32-bit greyscale (`I;16`, `I`) at 255, which
  turns a 16-bit PNG into a saturated, near-white image: those modes are scaled
  from 0..65535 to 0..255 instead (float `F` images from 0..1). 16-bit RGB PNGs
  already open as 8-bit RGB (PIL keeps the high byte).
  """
  if image.mode.startswith('I;16') or image.mode == 'I':
    values = np.asarray(image, np.float64)
    grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == 'F':
    values = np.asarray(image, np.float64)
    scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0 / np.nanmax(values)
    grey = np.clip(np.round(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(image.convert('RGB'))


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads an image as uint8 RGB `[H, W, 3]`, upright per its EXIF orientation.

  16-bit images are scaled to 8 bits (`to_rgb8`), greyscale and RGB alike.

  Raises:
    DetectError: the file cannot be read or decoded as an image.
  """
  try:
    with epath.Path(path).open('rb') as f:
      image = Image.open(f)
      image = ImageOps.exif_transpose(image)
      return to_rgb8(image)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise DetectError(f'cannot read image {path}: {cli.one_line(e, max_lines=2)}') from None


def check_images(files: Sequence[epath.Path]) -> None:
  """Decodes every file in full, so that a bad file fails before anything is written.

  Each image is decoded and dropped (it is decoded again when its batch runs), so a
  large folder does not have to fit in memory. `run` calls this first: a truncated
  file stops the run in one line naming it, with nothing written.

  Raises:
    DetectError: naming the first file that is not a readable image.
  """
  for path in files:
    read_image(path)


def preprocess(image: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
  """The model input of an RGB uint8 image: `input_pipeline.preprocess_image`.

  The whole image is resized (no crop, no padding), as the eval pipeline does, so
  boxes map back with one scale per axis.

  Returns:
    float32 `[H, W, 3]`.
  """
  return input_pipeline.preprocess_image(np.asarray(image), tuple(image_size)).numpy()


def make_predict_fn(loaded: inference.LoadedModel) -> Callable[[np.ndarray], tuple[dict, dict]]:
  """Returns `images [B, H, W, 3] -> (detections, aux)` as numpy, jitted once per B.

  Detections are postprocess's output (normalised yxyx boxes, scores, classes 1..C,
  num) with the config's evaluation settings; aux the detector's auxiliary outputs.
  """
  config = loaded.config
  default_boxes = jnp.asarray(loaded.default_boxes)

  @jax.jit
  def predict(variables, images):
    outputs = loaded.model.apply(variables, images, train=False, with_aux=True)
    det = postprocess.postprocess_outputs(outputs, default_boxes, config)
    return det, outputs['aux']

  def run(images: np.ndarray) -> tuple[dict, dict]:
    det, aux = predict(loaded.variables, jnp.asarray(images, jnp.float32))
    return jax.tree.map(np.asarray, det), jax.tree.map(np.asarray, aux)

  return run


def _index(tree: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
  return {k: v[i] for k, v in tree.items()}


def _exported_model(
  directory: str | os.PathLike,
) -> tuple[inference.LoadedModel, Callable, int | None]:
  """An export folder as the `inference.LoadedModel` fields `run` reads, its predict and batch."""
  try:
    served = serving.load(directory)
  except serving.ExportError as e:
    raise DetectError(str(e)) from None
  config = ml_collections.ConfigDict(served.metadata['config'])
  loaded = inference.LoadedModel(
    config=config,
    model=None,
    variables={},
    default_boxes=np.zeros((0, 4), np.float32),
    class_names=served.class_names,
    task_kinds={},
    label_names={},
    step=served.step,
    kind='exported',
  )

  def predict(batch: np.ndarray) -> tuple[dict, dict]:
    try:
      return served.predict(batch), {}
    except serving.ExportError as e:
      raise DetectError(str(e)) from None

  return loaded, predict, served.batch


def run(
  checkpoint: str | os.PathLike | None,
  images: str | os.PathLike,
  out: str | os.PathLike,
  *,
  config: ml_collections.ConfigDict | None = None,
  score_threshold: float = 0.3,
  batch_size: int = 1,
  tile_height: int = 240,
  write_panels: bool = True,
  latest: bool = False,
  exported: str | os.PathLike | None = None,
) -> dict[str, Any]:
  """Detects objects in every image of a folder and writes the JSON files and panels.

  Args:
    checkpoint: see `inference.load_model` (None with `exported`).
    images: a folder of images, one image file or a glob.
    out: output folder (created).
    config: the experiment config; None uses the checkpoint's.
    score_threshold: panels draw detections at or above it (the JSON keeps every
      detection above `config.eval.score_threshold`).
    batch_size: images per forward pass (the last batch is padded).
    tile_height: panel tile height in pixels.
    write_panels: write `panels/<name>.png`.
    latest: take the latest checkpoint, not the best one on validation.
    exported: an export folder of `rock_jax.export` (or its `saved_model`) to run
      instead of a checkpoint; a fixed-batch artifact sets the batch size.

  Returns:
    A summary: `num_images`, `num_detections`, `step`, `checkpoint_kind` and the
    written paths.

  Raises:
    DetectError: a missing checkpoint, a checkpoint that does not match the
      config, a missing or empty folder, or an unreadable image.
  """
  if batch_size < 1:
    raise DetectError(f'batch_size must be >= 1, got {batch_size}')
  files = list_images(images)
  check_images(files)
  if exported is not None:
    loaded, predict, fixed_batch = _exported_model(exported)
    batch_size = fixed_batch or batch_size
  else:
    try:
      loaded = inference.load_model(checkpoint, config, latest=latest)
    except inference.LoadError as e:
      raise DetectError(str(e)) from None
    predict = make_predict_fn(loaded)
  image_size = tuple(loaded.config.data.image_size)
  out = epath.Path(out)
  (out / 'panels').mkdir(parents=True, exist_ok=True)

  results, image_infos = [], []
  for start in range(0, len(files), batch_size):
    chunk = files[start : start + batch_size]
    originals = [read_image(p) for p in chunk]
    batch = np.stack([preprocess(im, image_size) for im in originals])
    if len(chunk) < batch_size:  # Pad to a fixed shape: one compilation for the run.
      pad = np.zeros((batch_size - len(chunk), *batch.shape[1:]), batch.dtype)
      batch = np.concatenate([batch, pad])
    det, aux = predict(batch)
    for j, (path, original) in enumerate(zip(chunk, originals, strict=True)):
      image_id = start + j + 1
      one_det, one_aux = _index(det, j), _index(aux, j)
      height, width = original.shape[:2]
      image_infos.append({'id': image_id, 'file_name': path.name, 'height': height, 'width': width})
      results.extend(coco.coco_detections(one_det, image_id, (height, width)))
      if write_panels:
        panel = panels.figure3_panel(
          original,
          one_det,
          one_aux,
          class_names=loaded.class_names,
          task_kinds=loaded.task_kinds,
          label_names=loaded.label_names,
          score_threshold=score_threshold,
          tile_height=tile_height,
        )
        with (out / 'panels' / f'{path.stem}.png').open('wb') as f:
          panel.save(f, format='PNG')

  categories = [{'id': k + 1, 'name': name} for k, name in enumerate(loaded.class_names)]
  (out / 'detections.json').write_text(json.dumps(results))
  (out / 'images.json').write_text(
    json.dumps({'images': image_infos, 'categories': categories}, indent=1)
  )
  return {
    'num_images': len(files),
    'num_detections': len(results),
    'step': loaded.step,
    'checkpoint_kind': loaded.kind,
    'detections': str(out / 'detections.json'),
    'images': str(out / 'images.json'),
    'panels': str(out / 'panels') if write_panels else None,
  }


_KIND_TEXT = {
  'best': 'best on validation',
  'latest': 'latest',
  'given': 'as given',
  'exported': 'exported artifact',
}


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  from absl import flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config (default: the one saved with the checkpoint).'
  )
  flags.DEFINE_string('checkpoint', None, 'Workdir, checkpoints folder or step folder.')
  flags.DEFINE_string('exported', None, 'Export folder (rock_jax.export) to run instead.')
  flags.DEFINE_string('images', None, 'Folder, image file or glob (quoted) of images.')
  flags.DEFINE_bool('latest', False, 'Load the latest checkpoint, not the best on validation.')
  flags.DEFINE_string('out', None, 'Output folder.')
  flags.DEFINE_float('score_threshold', 0.3, 'Panels draw detections scoring at least this.')
  flags.DEFINE_integer('batch_size', 1, 'Images per forward pass.')
  flags.DEFINE_integer('tile_height', 240, 'Panel tile height in pixels.')
  flags.DEFINE_bool('panels', True, 'Write a Figure-3 panel per image.')
  flags.mark_flags_as_required(['images', 'out'])
  flags.mark_flags_as_mutual_exclusive(['checkpoint', 'exported'], required=True)
  values = flags.FLAGS

  def main(argv: Sequence[str]) -> None:
    del argv
    # Orbax logs every restore at INFO/WARNING; this tool reports on stdout/stderr itself.
    logging.set_verbosity(logging.ERROR)
    try:
      summary = run(
        values.checkpoint,
        values.images,
        values.out,
        config=config_flag.value,
        score_threshold=values.score_threshold,
        batch_size=values.batch_size,
        tile_height=values.tile_height,
        write_panels=values.panels,
        latest=values.latest,
        exported=values.exported,
      )
    except DetectError as e:
      cli.fail(str(e))
    print(
      f'{summary["num_images"]} images, {summary["num_detections"]} detections '
      f'(checkpoint step {summary["step"]}, {_KIND_TEXT[summary["checkpoint_kind"]]}) '
      f'-> {values.out}'
    )

  cli.run(main)


if __name__ == '__main__':
  _cli()
