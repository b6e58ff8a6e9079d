"""Diagnosis measurements of one training run (issue #11), at initialisation and at the end.

  python -m rock_jax.tools.diagnose --config=CONFIG [--config.FIELD=VALUE ...] \
      --workdir=RUN_WORKDIR [--out=RUN_WORKDIR/diagnosis.json]

Pass the run's own `--config` and overrides (the study driver passes the run's exact
command line), so the model, loss weights, initialisation (`init_backbone` or
`init_from` + `init_exclude`) and the first training batch are the run's. Measures, on
the run's first training batch, for the initial variables (the trainer's fresh init
with the same seed, with the pretrained parts merged in as the trainer does) and for
the run's last checkpoint:

- `scale`: root-mean-square of conv5 (the backbone output), of each ROCK decoder output
  (`rock/<task>_dec`) and of their sum, and the ratio sum / conv5 (how far the fusion
  moves conv5), in training mode as the train step sees them;
- `grad`: per loss part (cls, loc and each task), the norm of the gradient of its
  weighted term (weight x part, as in the total loss) with respect to the shared
  backbone's parameters and to the ROCK trunk's (`rock/trunk1`, `rock/trunk2`), the
  unweighted part value, and the cosine between each task's backbone gradient and the
  detection (cls + loc) one;
- `curves`: the run's training curves (`train/loss/<part>` and the others the trainer
  logs) read from its TensorBoard event files.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rock_jax import checkpoints, cli, input_pipeline, losses, train
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector

FLAGS = flags.FLAGS

TRUNK = ('trunk1', 'trunk2')


def read_curves(workdir: str) -> dict[str, list[list[float]]]:
  """The scalars of the run's TensorBoard event files: `{tag: [[step, value], ...]}`."""
  import tensorflow as tf  # noqa: PLC0415

  curves: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField('tensor'):
          array = tf.make_ndarray(value.tensor)
          if array.size != 1 or array.dtype.kind not in 'fiu':
            continue
          number = float(array.reshape(()))
        elif value.HasField('simple_value'):
          number = float(value.simple_value)
        else:
          continue
        curves.setdefault(value.tag, {})[int(event.step)] = number
  return {tag: [[s, v] for s, v in sorted(points.items())] for tag, points in curves.items()}


def initial_variables(config: ml_collections.ConfigDict, model: detector.Detector) -> dict:
  """The trainer's variables at step 0: fresh init (same key), pretrained parts merged."""
  height, width = config.data.image_size
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  fresh = model.init(init_rng, jnp.zeros((1, height, width, 3), jnp.float32), train=False)
  fresh = jax.device_get({k: fresh[k] for k in ('params', 'batch_stats') if k in fresh})
  fresh.setdefault('batch_stats', {})
  if config.get('init_from'):
    loaded = checkpoints.load_variables(config.init_from)
    return checkpoints.merge_variables(fresh, loaded, tuple(config.get('init_exclude', ())))
  if config.get('init_backbone'):
    return checkpoints.merge_backbone(fresh, checkpoints.load_backbone(config.init_backbone))
  return fresh


def final_variables(
  config: ml_collections.ConfigDict, model: detector.Detector, workdir: str
) -> dict:
  """The run's last checkpoint (its parameters and BatchNorm statistics)."""
  fresh = initial_variables(config, model)
  return checkpoints.merge_variables(fresh, checkpoints.load_variables(workdir))


def first_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The run's first training batch (same seed, augmentation and order)."""
  dataset = input_pipeline.create_train_dataset(
    config, seed=config.seed, process_index=0, process_count=1, start_step=0
  )
  batch = next(dataset.as_numpy_iterator())
  keys = set(train.train_batch_keys(config)) | {
    k for t in tasks_lib.parse(config.model) for k in t.batch_keys
  }
  return {k: v for k, v in batch.items() if k in keys}


def _rms(x: jax.Array) -> float:
  return float(jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))))


def _norm(tree: Any) -> float:
  leaves = jax.tree.leaves(tree)
  return float(np.sqrt(sum(float(jnp.sum(jnp.square(x))) for x in leaves))) if leaves else 0.0


def _scales(
  model: detector.Detector,
  variables: Mapping[str, Any],
  images: np.ndarray,
  *,
  train: bool,
  with_aux: bool,
) -> dict[str, Any]:
  """RMS of conv5, of each ROCK decoder output, of their sum, and sum / conv5."""

  def is_probe(module, method_name):
    return method_name == '__call__' and (
      module.name == 'backbone' or (module.name or '').endswith('_dec')
    )

  _, state = model.apply(
    dict(variables),
    images,
    train=train,
    with_aux=with_aux,
    mutable=['batch_stats', 'intermediates'],
    capture_intermediates=is_probe,
  )
  inter = state['intermediates']
  conv5 = inter['backbone']['__call__'][0]
  scale: dict[str, Any] = {'conv5_rms': _rms(conv5)}
  decoders = {
    k[: -len('_dec')]: v['__call__'][0]
    for k, v in inter.get('rock', {}).items()
    if k.endswith('_dec')
  }
  if decoders:
    total = sum(decoders.values())
    scale.update({f'{t}_dec_rms': _rms(v) for t, v in decoders.items()})
    scale['decoders_sum_rms'] = _rms(total)
    scale['ratio_sum_to_conv5'] = scale['decoders_sum_rms'] / max(scale['conv5_rms'], 1e-12)
  return scale


def measure(
  config: ml_collections.ConfigDict,
  model: detector.Detector,
  variables: Mapping[str, Any],
  batch: Mapping[str, np.ndarray],
) -> dict[str, Any]:
  """Decoder-output scales and per-task gradient norms into the shared trunk."""
  with_aux = bool(tasks_lib.active(config))
  names = ['cls', 'loc', *tasks_lib.names_in(config.model.tasks)]
  weights = config.loss.weights

  scale = _scales(model, variables, batch['image'], train=True, with_aux=with_aux)
  scale['eval_mode'] = _scales(model, variables, batch['image'], train=False, with_aux=with_aux)

  def parts_vector(params):
    outputs, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      batch['image'],
      train=True,
      with_aux=with_aux,
      mutable=['batch_stats'],
    )
    _, parts = losses.multi_loss(outputs, batch, config=config)
    return jnp.stack([parts[n] for n in names])

  values, jac = jax.jit(lambda p: (parts_vector(p), jax.jacrev(parts_vector)(p)))(
    variables['params']
  )
  grad: dict[str, Any] = {}
  flat_backbone = {}
  for i, name in enumerate(names):
    w = float(weights.get(name, 1.0))
    per = jax.tree.map(lambda leaf, i=i: leaf[i], jac)
    entry = {'weight': w, 'value': float(values[i])}
    entry['backbone_norm'] = abs(w) * _norm(per['backbone'])
    if 'rock' in per:
      entry['rock_trunk_norm'] = abs(w) * _norm([per['rock'][t] for t in TRUNK if t in per['rock']])
    flat_backbone[name] = w * jnp.concatenate(
      [x.reshape(-1) for x in jax.tree.leaves(per['backbone'])]
    )
    grad[name] = entry
  detection = flat_backbone['cls'] + flat_backbone['loc']
  for name in names[2:]:
    g = flat_backbone[name]
    denom = float(jnp.linalg.norm(g) * jnp.linalg.norm(detection))
    grad[name]['cosine_to_detection'] = float(jnp.dot(g, detection)) / denom if denom else None
  return {'scale': scale, 'grad': grad}


def diagnose(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """All measurements of a run (see the module doc)."""
  model = detector.build_model(config)
  batch = first_batch(config)
  result: dict[str, Any] = {
    'variant': config.model.variant,
    'seed': int(config.seed),
    'batch_size': int(batch['image'].shape[0]),
    'init': measure(config, model, initial_variables(config, model), batch),
  }
  _, step = checkpoints.resolve_checkpoint(workdir)
  result['end'] = measure(config, model, final_variables(config, model, workdir), batch)
  result['end_step'] = int(step)
  result['curves'] = read_curves(workdir)
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir or FLAGS.config is None:
    raise app.UsageError('--config and --workdir are required.')
  result = diagnose(FLAGS.config, FLAGS.workdir)
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'diagnosis.json')
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'Wrote {out}')


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  config_flags.DEFINE_config_file('config', None, 'The run config file[:arg].')
  flags.DEFINE_string('workdir', None, 'The run workdir (its checkpoints).')
  flags.DEFINE_string('out', None, 'Output JSON (default WORKDIR/diagnosis.json).')
  cli.run(main)


if __name__ == '__main__':
  _cli()
