"""Latency of the exported detector (`rock_jax.export`) against the jitted Flax model.

  python -m rock_jax.tools.bench_export --config=configs/synthetic.py --workdir=DIR \
      [--checkpoint=DIR] [--batch=8] [--iters=10] [--warmup=1]

In one process, on one machine: the checkpoint (or, without `--checkpoint`, a freshly
initialised model of `--config` saved to `DIR/run`: latency does not depend on the
weights) is exported with a symbolic batch and postprocess inside (`DIR/export`);
then images -> final detections (host numpy in, host numpy out) is timed at batch
1 and at `--batch` for:
- the jitted Flax model: `model.apply` (no auxiliary outputs) + postprocess, the
  variables as arguments;
- the `jax.export` artifact, deserialized and called under `jax.jit`;
- the TF SavedModel (its `preprocessed` signature, what `serving.load` runs).
Each figure is the median of `--iters` calls after `--warmup` calls (the first
compiles). Prints a markdown table.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from rock_jax import checkpoints, cli, detect, export, inference, postprocess, serving, train
from rock_jax.models import detector


def _median_ms(fn: Callable[[], object], iters: int, warmup: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


def save_fresh_checkpoint(config, workdir: epath.Path) -> None:
  """A freshly initialised model of `config`, saved as the trainer saves (step 0)."""
  model = detector.build_model(config)
  state = jax.jit(functools.partial(train.create_train_state, config, model))(jax.random.key(0))
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
  checkpoints.save(manager, 0, state, config)
  manager.wait_until_finished()
  manager.close()


def bench(checkpoint, out: epath.Path, *, batch: int, iters: int, warmup: int) -> str:
  """Exports `checkpoint` to `out` and returns the markdown table of latencies."""
  loaded = inference.load_model(checkpoint)
  export.run(checkpoint, out, batch='dynamic', with_postprocess=True)
  height, width = loaded.config.data.image_size
  default_boxes = jnp.asarray(loaded.default_boxes, jnp.float32)

  @jax.jit
  def flax_fn(variables, images):
    outputs = loaded.model.apply(variables, images, train=False, with_aux=False)
    return postprocess.postprocess_outputs(outputs, default_boxes, loaded.config)

  variables = jax.tree.map(jnp.asarray, loaded.variables)
  run_flax = lambda x: jax.tree.map(np.asarray, flax_fn(variables, x))
  runners = {
    'jitted Flax model': run_flax,
    '`jax.export` artifact': serving.load(out).predict,
    'TF SavedModel (jax2tf)': serving.load(out / serving.SAVED_MODEL).predict,
  }
  rng = np.random.default_rng(0)
  rows = []
  for name, fn in runners.items():
    cells = []
    for size in (1, batch):
      pixels = rng.integers(0, 255, (size, height, width, 3), np.uint8)
      x = np.stack([detect.preprocess(p, (height, width)) for p in pixels])
      ms = _median_ms(lambda fn=fn, x=x: fn(x), iters, warmup)
      cells.append(f'{ms:.1f} ms ({ms / size:.1f} ms/image)')
    rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  header = [
    f'Device: {jax.device_count()} x {jax.default_backend()}; input {height}x{width}; '
    f'median of {iters} calls after {warmup} warm-up; images -> final detections '
    '(postprocess with NMS), host arrays in and out.',
    '',
    f'| Runner | batch 1 | batch {batch} |',
    '|---|---:|---:|',
  ]
  return '\n'.join(header + rows)


def main(argv: Sequence[str]) -> None:
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save and restore at INFO.
  workdir = epath.Path(flags.FLAGS.workdir)
  checkpoint = flags.FLAGS.checkpoint
  if checkpoint is None:
    checkpoint = workdir / 'run'
    save_fresh_checkpoint(flags.FLAGS.config, checkpoint)
  start = time.time()
  table = bench(
    checkpoint,
    workdir / 'export',
    batch=flags.FLAGS.batch,
    iters=flags.FLAGS.iters,
    warmup=flags.FLAGS.warmup,
  )
  print(table)
  print(f'\n(whole run {time.time() - start:.0f} s)')


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config of a fresh model.')
  flags.DEFINE_string('checkpoint', None, 'Checkpoint to export (default: a fresh model).')
  flags.DEFINE_string('workdir', None, 'Where the checkpoint and the export go.')
  flags.DEFINE_integer('batch', 8, 'The larger batch.')
  flags.DEFINE_integer('iters', 10, 'Timed calls per figure.')
  flags.DEFINE_integer('warmup', 1, 'Untimed calls first.')
  flags.mark_flags_as_required(['workdir'])
  cli.run(main)


if __name__ == '__main__':
  _cli()
