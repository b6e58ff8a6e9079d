"""Times the MLT Beam build (DirectRunner) on the test fixture at 1 and 2 workers.

  python tests/bench_mlt_beam.py [REPEATS]

Not a test (no `test_` prefix): a measurement for launch/README.md. Builds the
`tests/fake_datasets.write_mlt` fixture REPEATS times at each worker count,
alternating, and prints every time, the best of each and their ratio.
"""

import os
import sys
import tempfile
import time

sys.path[:0] = [
  os.path.dirname(os.path.abspath(__file__)),
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]

import fake_datasets as fd  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from rock_jax.datasets import mlt  # noqa: E402, F401  (registers the builder)


def main(repeats: int) -> None:
  root = tempfile.mkdtemp()
  manual = os.path.join(root, 'manual')
  fd.write_mlt(manual)
  times: dict[int, list[float]] = {1: [], 2: []}
  for rep in range(repeats):
    for workers in (1, 2):
      options = PipelineOptions(
        runner='DirectRunner', direct_num_workers=workers, direct_running_mode='multi_processing'
      )
      start = time.perf_counter()
      builder = tfds.builder_cls('mlt')(data_dir=tempfile.mkdtemp(dir=root))
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual, beam_options=options)
      )
      elapsed = time.perf_counter() - start
      assert builder.info.splits['train'].num_examples == len(fd.MLT_VIEWS)
      times[workers].append(elapsed)
      print(f'rep {rep} workers {workers}: {elapsed:.2f} s', flush=True)
  for workers, values in times.items():
    print(f'workers={workers}: min {min(values):.2f} s, all {[round(v, 2) for v in values]}')
  ratio = min(times[1]) / min(times[2])
  print(f'ratio 1 worker / 2 workers (best): {ratio:.2f}; load average {os.getloadavg()}')


if __name__ == '__main__':
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
