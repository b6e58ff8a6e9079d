"""Entry point: trains and evaluates ROCK, or evaluates a checkpoint.

  python -m rock_jax.main --config=configs/nyuv2.py --config.init_backbone=IMAGENET_DIR \
      --workdir=DIR
  python -m rock_jax.main --config=configs/synthetic.py:smoke --workdir=/tmp/smoke
  python -m rock_jax.main --config=synthetic:smoke --workdir=/tmp/smoke  # from anywhere
  python -m rock_jax.main --config=configs/nyuv2.py --config.mode=eval \
      --config.init_from=DIR --config.data.eval_split=test --workdir=EVAL_DIR

`--config` takes a file path or the short name of a config shipped in the package
(`nyuv2`, `synthetic:smoke`, ...; see `rock_jax.configs`), so it works from any
directory and after a wheel install. Relative paths (workdir, `init_from`,
`init_backbone`) are taken from the current directory.
Any config field can be overridden with `--config.<field>=value`. Rerunning a
command on the same workdir resumes from its last checkpoint (the newest one that
restores cleanly; one with other config values needs `--accept_config_changes`).
The console shows this project's logs, progress lines and evaluation tables;
`--verbosity=0` (or higher) also shows the libraries' INFO logs (`rock_jax.console`).
A user error (config, data, checkpoint, disk) prints one line `error: ...` and
exits 2; `--verbosity=1` or `ROCK_JAX_TRACEBACK=1` shows the traceback.
"""

import logging as std_logging
import os
from collections.abc import Sequence

from rock_jax import console, huge_pages

if __name__ == '__main__':
  huge_pages.reexec()  # First: glibc's huge-page tunable needs a fresh process.

with console.native_stderr_filtered():  # TensorFlow's start-up lines.
  import jax
  import tensorflow as tf
  from absl import app, flags, logging
  from ml_collections import config_flags

  from rock_jax import cli, preflight, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs and results go here.')
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'on', 'off'],
  'Call jax.distributed.initialize(): on several hosts only ("auto" detects a TPU pod '
  'slice, SLURM, Open MPI or JAX_COORDINATOR_ADDRESS).',
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
  'heartbeat_timeout',
  100,
  'Several hosts: seconds after which jax.distributed declares a silent host dead and '
  'stops every other host with an error (jax.distributed.initialize(heartbeat_timeout_seconds)).',
)
_ACCEPT_CHANGES = flags.DEFINE_bool(
  'accept_config_changes',
  False,
  'Resume a workdir although config fields (learning rate, image size, seed, ...) differ '
  'from those saved with its checkpoint; they are listed in a warning.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def is_multihost(environ: os._Environ | dict[str, str] = os.environ) -> bool:
  """Whether this process is one of several hosts of a job.

  Args:
    environ: the environment to inspect.

  Returns:
    True on a multi-worker TPU slice, a multi-task SLURM or Open MPI job, or when
    a coordinator address is given explicitly.
  """
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  hosts = [h for h in environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]
  if len(hosts) > 1:
    return True
  for key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(environ.get(key, '1') or '1') > 1:
      return True
  return False


def distributed_args(environ: os._Environ | dict[str, str] = os.environ) -> dict[str, int]:
  """`jax.distributed.initialize` arguments that JAX does not read from the environment.

  JAX reads `JAX_COORDINATOR_ADDRESS` itself and detects the rest on TPU, SLURM and
  Open MPI; elsewhere (`launch/local.py`, a hand-made cluster) `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID` give the process count and this process' id.

  Args:
    environ: the environment to inspect.

  Returns:
    `num_processes` and `process_id` where the environment sets them.
  """
  names = {'num_processes': 'JAX_NUM_PROCESSES', 'process_id': 'JAX_PROCESS_ID'}
  return {arg: int(environ[name]) for arg, name in names.items() if environ.get(name)}


def main(argv: Sequence[str]) -> None:
  """Runs `train.train_and_evaluate` with the parsed config."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = absolute_workdir(_WORKDIR.value)
  try:
    # ImageNet weights, paths and data: fail in one line before anything is built.
    config = preflight.run(_CONFIG.value, workdir)
  except preflight.StartupError as error:
    cli.fail(str(error))
  # TensorFlow only feeds data: keep it off the accelerators (and their memory).
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  # Orbax reports every save step at INFO; keep its warnings, drop the chatter so the
  # trainer's progress lines (steps/s, ETA) stay readable.
  logging.get_absl_handler().addFilter(quiet_orbax)
  console.configure()
  if _DISTRIBUTED.value == 'on' or (_DISTRIBUTED.value == 'auto' and is_multihost()):
    # One voice: host 0 logs progress, the others only warnings and errors (quiet until
    # this process knows which host it is).
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    jax.distributed.initialize(
      **distributed_args(), heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value
    )
    if jax.process_index() == 0:
      logging.set_verbosity(verbosity)
  logging.info(
    'JAX process %d / %d, %d local / %d global devices (%s).',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  try:
    train.train_and_evaluate(config, workdir, accept_config_changes=_ACCEPT_CHANGES.value)
  except Exception as error:
    if jax.process_count() > 1:
      # A dead host shows up here as a failed collective; JAX then stops this process
      # within --heartbeat_timeout (the shutdown barrier) instead of waiting forever.
      logging.error(
        'Host %d of %d stops (%s). If another host died, every host exits within '
        '--heartbeat_timeout=%d s; rerun all hosts to resume from the last checkpoint.',
        jax.process_index(),
        jax.process_count(),
        type(error).__name__,
        _HEARTBEAT_TIMEOUT.value,
      )
    raise


def quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Log filter: False (drop) for Orbax's records below WARNING."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def absolute_workdir(path: str) -> str:
  """Makes a local relative workdir absolute (Orbax rejects relative paths); URLs stay."""
  return path if '://' in path else os.path.abspath(path)


if __name__ == '__main__':
  cli.run(main)
