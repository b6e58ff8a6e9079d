"""Pretrains a detector config's backbone on object crops, the way ImageNet pretrains one.

  python -m rock_jax.tools.pretrain_backbone --config=configs/synthetic.py \
      --workdir=workdir/pretrain_backbone [--steps=N] [--processes=2]
  python -m rock_jax.main --config=configs/synthetic.py \
      --config.init_backbone=workdir/pretrain_backbone/backbone \
      --config.model.backbone.freeze_bn_stats=True --workdir=DIR

The backbone is exactly the one of `--config` (`model.backbone`: for
`configs/synthetic.py` the demo's narrow ResNet-18, stages of 32 to 256 channels,
output stride 16), trained with BatchNorm statistics learning, under global average
pooling and a linear classifier over the renderer's 11 object classes plus background
(`rock_jax.datasets.object_crops`: single-object crops of scenes no detection split
contains; RGB and boxes only, no depth, normals or scene label). Adam, cosine decay,
horizontal flips.

Writes into `--workdir`:
- `backbone/`: the backbone's `{'params', 'batch_stats'}` as an Orbax checkpoint, the
  format `config.init_backbone` reads (`rock_jax.checkpoints.save_backbone`);
- `metrics.json`: top-1 on the held-out crops (scenes of another split), per class,
  the crop counts, sizes, wall times and the command;
- `crops_train.npz`, `crops_test.npz`: the rendered crops, reused by a rerun with the
  same crop settings.
A workdir whose `metrics.json` and `backbone/` exist is left alone (`--force` redoes it).

`--smoke` shrinks everything (the smoke detector config's backbone, a few scenes and
steps) for tests and CI.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from rock_jax import checkpoints, cli, input_pipeline
from rock_jax.datasets import object_crops
from rock_jax.models import resnet

FLAGS = flags.FLAGS

# (train scenes, test scenes, crop size, steps, batch) of the real run and of the smoke.
DEFAULTS = {False: (3000, 400, 64, 1500, 64), True: (6, 4, 32, 3, 8)}
METRICS = 'metrics.json'
BACKBONE = 'backbone'


class Classifier(nn.Module):
  """The config's backbone, global average pooling and a linear classifier."""

  backbone_config: Any
  num_classes: int

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    features = resnet.from_config(self.backbone_config)(images, train=train)
    pooled = features.astype(jnp.float32).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name='classifier')(pooled)


def backbone_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.model.backbone` with BatchNorm statistics learning (pretraining)."""
  bb = ml_collections.ConfigDict(config.model.backbone.to_dict())
  bb.freeze_bn_stats = False
  return bb


def normalise(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 RGB to the detector's input normalisation (ImageNet mean and std)."""
  mean = jnp.asarray(input_pipeline.IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(input_pipeline.IMAGENET_STD, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def load_or_render(
  workdir: str,
  split: str,
  num_scenes: int,
  *,
  seed: int,
  height: int,
  width: int,
  size: int,
  processes: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
  """The crops of a split, from `workdir/crops_<split>.npz` when it has these settings."""
  path = os.path.join(workdir, f'crops_{split}.npz')
  meta = np.asarray([seed, num_scenes, height, width, size], np.int64)
  if os.path.exists(path):
    with np.load(path) as data:
      if np.array_equal(data['meta'], meta):
        return data['crops'], data['labels']
  crops, labels = object_crops.render_crops(
    seed, split, num_scenes, height=height, width=width, size=size, processes=processes
  )
  np.savez(path, crops=crops, labels=labels, meta=meta)
  return crops, labels


def accuracy(
  apply: Any, variables: Any, crops: np.ndarray, labels: np.ndarray, batch: int
) -> tuple[float, dict[str, float]]:
  """Top-1 overall and per class (classes absent from `labels` are left out)."""
  predictions = []
  for start in range(0, len(crops), batch):
    predictions.append(np.asarray(apply(variables, crops[start : start + batch])))
  predicted = np.concatenate(predictions) if predictions else np.zeros((0,), np.int32)
  correct = predicted == labels
  per_class = {
    name: float(correct[labels == k].mean())
    for k, name in enumerate(object_crops.CLASS_NAMES)
    if (labels == k).any()
  }
  return float(correct.mean()) if len(correct) else 0.0, per_class


def pretrain(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  smoke: bool,
  steps: int,
  batch_size: int,
  train_scenes: int,
  test_scenes: int,
  crop_size: int,
  seed: int,
  learning_rate: float,
  weight_decay: float,
  command: str,
  processes: int = 1,
) -> dict[str, Any]:
  """Renders the crops, trains, evaluates, writes `backbone/` and `metrics.json`."""
  os.makedirs(workdir, exist_ok=True)
  height, width = config.data.image_size  # Objects at the scale the detector sees them.
  start = time.time()
  render = dict(seed=seed, height=height, width=width, size=crop_size, processes=processes)
  train_x, train_y = load_or_render(workdir, 'train', train_scenes, **render)
  test_x, test_y = load_or_render(workdir, 'test', test_scenes, **render)
  render_seconds = time.time() - start
  print(
    f'{len(train_x)} train crops from {train_scenes} scenes, {len(test_x)} held-out crops '
    f'from {test_scenes} scenes ({render_seconds:.0f} s)',
    flush=True,
  )

  model = Classifier(backbone_config(config), len(object_crops.CLASS_NAMES))
  variables = model.init(jax.random.key(seed), jnp.zeros((1, crop_size, crop_size, 3)), train=False)
  schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1))
  tx = optax.adamw(schedule, weight_decay=weight_decay)
  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, batch_stats, opt_state, images, labels, rng):
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)

    def loss_fn(params):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        normalise(images),
        train=True,
        mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (updates['batch_stats'], (logits.argmax(-1) == labels).mean())

    (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, acc

  @jax.jit
  def predict(variables, images):
    return model.apply(variables, normalise(images), train=False).argmax(-1)

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed + 1)
  curve = []
  train_start = time.time()
  order = rng.permutation(len(train_x))
  cursor = 0
  window_loss, window_acc = [], []
  log_every = max(1, steps // 15)
  for step in range(1, steps + 1):
    if cursor + batch_size > len(order):
      order, cursor = rng.permutation(len(train_x)), 0
    index = order[cursor : cursor + batch_size]
    cursor += batch_size
    params, batch_stats, opt_state, loss, acc = train_step(
      params,
      batch_stats,
      opt_state,
      jnp.asarray(train_x[index]),
      jnp.asarray(train_y[index]),
      jax.random.fold_in(key, step),
    )
    window_loss.append(loss)
    window_acc.append(acc)
    if step % log_every == 0 or step == steps:
      mean_loss = float(np.mean(jax.device_get(window_loss)))
      mean_acc = float(np.mean(jax.device_get(window_acc)))
      curve.append({'step': step, 'loss': mean_loss, 'train_top1': mean_acc})
      print(f'step {step}/{steps}: loss {mean_loss:.3f}, batch top-1 {mean_acc:.3f}', flush=True)
      window_loss, window_acc = [], []
  train_seconds = time.time() - train_start

  final = {'params': params, 'batch_stats': batch_stats}
  top1, per_class = accuracy(predict, final, test_x, test_y, 256)
  counts = np.bincount(test_y, minlength=len(object_crops.CLASS_NAMES))
  majority = float(counts.max() / max(counts.sum(), 1))
  print(f'held-out top-1 {top1:.3f} ({len(test_x)} crops; majority class {majority:.3f})')

  # Exactly what `config.init_backbone` reads: the backbone's params and BN statistics.
  out = os.path.join(workdir, BACKBONE)
  if os.path.exists(out):
    shutil.rmtree(out)
  checkpoints.save_backbone(
    {'params': params['backbone'], 'batch_stats': batch_stats['backbone']},
    out,
  )
  metrics = {
    'held_out_top1': top1,
    'held_out_per_class_top1': per_class,
    'held_out_majority_class_rate': majority,
    'num_train_crops': len(train_x),
    'num_held_out_crops': len(test_x),
    'train_scenes': train_scenes,
    'held_out_scenes': test_scenes,
    'train_class_counts': dict(
      zip(
        object_crops.CLASS_NAMES,
        np.bincount(train_y, minlength=len(object_crops.CLASS_NAMES)).tolist(),
        strict=True,
      )
    ),
    'crop_size': crop_size,
    'render_size': [int(height), int(width)],
    'steps': steps,
    'batch_size': batch_size,
    'learning_rate': learning_rate,
    'weight_decay': weight_decay,
    'seed': seed,
    'backbone': dict(backbone_config(config).to_dict(), freeze_bn_stats='learned'),
    'smoke': smoke,
    'curve': curve,
    'render_seconds': render_seconds,
    'train_seconds': train_seconds,
    'wall_seconds': time.time() - start,
    'command': command,
  }
  with open(os.path.join(workdir, METRICS), 'w') as f:
    json.dump(metrics, f, indent=1)
  return metrics


def is_done(workdir: str) -> bool:
  """Whether `workdir` holds a finished pretraining (metrics and backbone)."""
  return os.path.exists(os.path.join(workdir, METRICS)) and os.path.isdir(
    os.path.join(workdir, BACKBONE)
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required.')
  smoke = FLAGS.smoke
  config = FLAGS.config
  if config is None:
    from rock_jax.configs import synthetic  # noqa: PLC0415

    config = synthetic.get_config('smoke' if smoke else None)
  if is_done(FLAGS.workdir) and not FLAGS.force:
    print(f'{FLAGS.workdir} is already pretrained (--force redoes it).')
    return
  scenes, held_out, crop, steps, batch = DEFAULTS[smoke]
  pretrain(
    config,
    FLAGS.workdir,
    smoke=smoke,
    steps=FLAGS.steps or steps,
    batch_size=FLAGS.batch_size or batch,
    train_scenes=FLAGS.train_scenes or scenes,
    test_scenes=FLAGS.test_scenes or held_out,
    crop_size=FLAGS.crop_size or crop,
    seed=FLAGS.seed,
    learning_rate=FLAGS.learning_rate,
    weight_decay=FLAGS.weight_decay,
    command=shlex.join(['python', '-m', 'rock_jax.tools.pretrain_backbone', *sys.argv[1:]]),
    processes=FLAGS.processes,
  )


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  config_flags.DEFINE_config_file(
    'config', None, 'The detection config whose model.backbone is pretrained.'
  )
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_bool('smoke', False, 'Tiny sizes, a few steps (tests, CI).')
  flags.DEFINE_integer('steps', None, 'Training steps (default 1500; smoke 3).')
  flags.DEFINE_integer('batch_size', None, 'Batch size (default 64; smoke 8).')
  flags.DEFINE_float('learning_rate', 2e-3, 'Peak Adam learning rate (cosine decay).')
  flags.DEFINE_float('weight_decay', 5e-5, 'Decoupled weight decay (AdamW).')
  flags.DEFINE_integer('train_scenes', None, 'Scenes for training crops.')
  flags.DEFINE_integer('test_scenes', None, 'Held-out scenes for top-1.')
  flags.DEFINE_integer('crop_size', None, 'Crop side in pixels (default 64).')
  flags.DEFINE_integer('seed', 0, 'Crop set and training seed.')
  flags.DEFINE_integer('processes', 1, 'Render worker processes.')
  flags.DEFINE_bool('force', False, 'Redo a finished workdir.')
  cli.run(main)


if __name__ == '__main__':
  _cli()
