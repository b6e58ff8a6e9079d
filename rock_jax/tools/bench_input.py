"""Input pipeline throughput at 480x640 with full augmentation, matching and dense targets.

Usage: `python -m rock_jax.tools.bench_input [--data_dir=DIR] [--batches=N]`. The source
is the small `synthetic_rooms/bench` dataset (64 images at 480x640), rendered into
`data_dir` on the first run and reused after. Prints images/s and images/s per core.
"""

import os
import time

from absl import flags

from rock_jax import cli, input_pipeline
from rock_jax.configs import base
from rock_jax.datasets import synthetic_rooms

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  synthetic_rooms.load_builder('bench', data_dir=FLAGS.data_dir)
  config = base.get_base_config()  # 480x640, batch 8, crop + flip + jitter, 7236 anchors.
  config.model.num_classes = 11
  config.data.name = 'synthetic_rooms'
  config.data.builder_config = 'bench'
  config.data.data_dir = FLAGS.data_dir
  config.data.shuffle_buffer = 64
  ds = input_pipeline.create_train_dataset(config, seed=0, process_index=0, process_count=1)
  it = ds.as_numpy_iterator()
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(it)
  elapsed = time.perf_counter() - start
  cores = len(os.sched_getaffinity(0))
  images = FLAGS.batches * config.train.batch_size
  rate = images / elapsed
  print(f'{images} images at 480x640 in {elapsed:.2f} s: {rate:.1f} images/s, '
        f'{rate / cores:.1f} images/s per core ({cores} cores).')  # fmt: skip


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  flags.DEFINE_string('data_dir', '/tmp/rock_jax_bench', 'TFDS data dir (cache).')
  flags.DEFINE_integer('batches', 40, 'Timed batches (after 5 warm-up batches).')
  cli.run(main)


if __name__ == '__main__':
  _cli()
