"""Launch training on a Cloud TPU VM pod slice: the same command on every worker.

Each worker (host) of the slice runs `python -m rock_jax.main` with identical
arguments; `jax.distributed.initialize()` finds the other workers from the TPU
metadata, each host feeds its own shard of the global batch, and the trainer's
`('data',)` mesh spans all chips. Data and checkpoints live on Cloud Storage so
that every worker sees the same TFDS `data_dir` and workdir.

  python -m launch.tpu_pod create --tpu=rock --zone=us-central2-b --accelerator_type=v4-32
  python -m launch.tpu_pod setup  --tpu=rock --zone=us-central2-b --repo=https://...git
  python -m launch.tpu_pod train  --tpu=rock --zone=us-central2-b --accelerator_type=v4-32 \
      --bucket=gs://my-bucket --config=configs/mlt_pretrain.py --dry_run
  python -m launch.tpu_pod logs|stop|delete --tpu=rock --zone=us-central2-b
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Sequence

from launch import common

# Where the code, the log and the pid file go on each worker (home directory).
REMOTE_DIR = '~/rock_jax'
REMOTE_LOG = '~/rock_jax_train.log'
REMOTE_PID = '~/rock_jax_train.pid'

# Default runtime (software) version per TPU generation, from the Cloud TPU docs.
RUNTIME_VERSIONS = {
  'v2': 'tpu-ubuntu2204-base',
  'v3': 'tpu-ubuntu2204-base',
  'v4': 'tpu-ubuntu2204-base',
  'v5litepod': 'v2-alpha-tpuv5-lite',
  'v5p': 'v2-alpha-tpuv5',
  'v6e': 'v2-alpha-tpuv6e',
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """What an accelerator type means for JAX: devices in the mesh and worker VMs."""

  generation: str
  num_devices: int  # jax.device_count() on the whole slice.
  num_hosts: int  # Worker VMs; each runs one process.


def tpu_topology(accelerator_type: str) -> Topology:
  """Decodes an accelerator type such as 'v4-32' or 'v5litepod-16'.

  The suffix counts TensorCores for v2, v3, v4 and v5p and chips for v5e and
  v6e. JAX shows one device per core on v2/v3 (8 per host) and one per chip on
  the later generations (megacore on v4/v5p; 4 chips per host in multi-host
  slices, a single host up to 8 chips on v5e/v6e).

  Raises:
    common.LaunchError: an unknown generation or a malformed size.
  """
  match = re.fullmatch(r'(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)', accelerator_type)
  if not match:
    raise common.LaunchError(
      f'unknown accelerator type {accelerator_type!r}; expected e.g. v3-32, v4-32, v5p-64, '
      'v5litepod-16 or v6e-32'
    )
  generation, size = match.group(1), int(match.group(2))
  if generation in ('v2', 'v3'):
    devices, per_host, single_host_max = size, 8, 8
  elif generation in ('v4', 'v5p'):
    if size % 2:
      raise common.LaunchError(f'{accelerator_type}: size counts TensorCores, must be even')
    devices, per_host, single_host_max = size // 2, 4, 4
  else:
    devices, per_host, single_host_max = size, 4, 8
  hosts = 1 if devices <= single_host_max else devices // per_host
  return Topology(generation=generation, num_devices=devices, num_hosts=hosts)


def build_parser() -> argparse.ArgumentParser:
  """Returns the command-line parser with one subcommand per step (exposed for tests)."""
  parser = argparse.ArgumentParser(
    prog='python -m launch.tpu_pod', description=__doc__.split('\n\n')[0], allow_abbrev=False
  )
  sub = parser.add_subparsers(dest='action', required=True)

  def add(name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, allow_abbrev=False)
    p.add_argument('--tpu', required=True, help='TPU VM (slice) name.')
    p.add_argument('--zone', required=True, help='e.g. us-central2-b.')
    p.add_argument('--project', default=None, help='GCP project (default: gcloud config).')
    p.add_argument('--dry_run', action='store_true', help='Print the commands, run nothing.')
    return p

  p = add('create', 'Create the pod slice.')
  p.add_argument('--accelerator_type', required=True, help='e.g. v4-32, v5litepod-32.')
  p.add_argument('--version', default=None, help='Runtime version (default per generation).')
  p.add_argument('--spot', action='store_true', help='Spot VMs (cheaper, may be preempted).')

  p = add('setup', 'Clone the code and install rock_jax[tpu] on every worker.')
  p.add_argument('--repo', required=True, help='Git URL of this repository.')
  p.add_argument('--ref', default='main', help='Branch, tag or commit to check out.')

  p = add('train', 'Start `python -m rock_jax.main` on every worker.')
  p.add_argument('--accelerator_type', required=True, help='Sizes the global batch.')
  p.add_argument('--config', default='configs/mlt_pretrain.py', help='Experiment file[:arg].')
  p.add_argument('--bucket', required=True, help='gs://bucket for data and checkpoints.')
  p.add_argument(
    '--data_dir', default=None, help='TFDS data_dir (default: BUCKET/tensorflow_datasets).'
  )
  p.add_argument('--workdir', default=None, help='Default: BUCKET/rock_jax/TPU/CONFIG.')
  p.add_argument('--per_device_batch', type=int, default=8, help='Examples per chip/core.')
  p.add_argument('--global_batch', type=int, default=None, help='Overrides per_device_batch.')
  p.add_argument('--lr_scaling', choices=common.LR_SCALINGS, default='sqrt')
  p.add_argument(
    '--dtype', choices=('bfloat16', 'float32'), default='bfloat16', help='Compute dtype.'
  )
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='Extra config override, repeatable: --set train.log_every=100.',
  )
  p.add_argument(
    '--heartbeat_timeout',
    type=int,
    default=None,
    help='Seconds before a silent worker counts as dead and the others stop '
    '(rock_jax.main --heartbeat_timeout; default 100).',
  )
  p.add_argument(
    '--foreground', action='store_true', help='Stay attached (default: nohup, log to a file).'
  )

  p = add('logs', 'Show the end of the training log of worker 0.')
  p.add_argument('--lines', type=int, default=50)
  add('stop', 'Stop the training processes started by `train`.')
  add('delete', 'Delete the pod slice.')
  return parser


def _gcloud(args: argparse.Namespace, verb: str, *rest: str) -> common.Command:
  command = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, args.tpu, f'--zone={args.zone}']
  if args.project:
    command.append(f'--project={args.project}')
  return command + list(rest)


def _ssh(args: argparse.Namespace, remote: str, worker: str = 'all') -> common.Command:
  return _gcloud(args, 'ssh', f'--worker={worker}', f'--command={remote}')


def _is_gcs(path: str) -> bool:
  return path.startswith('gs://') and len(path) > len('gs://')


def train_plan(args: argparse.Namespace) -> tuple[str, common.Schedule, Topology]:
  """Builds the remote training command run on every worker.

  Returns:
    `(remote_command, schedule, topology)`: the shell command (a string the
    worker's shell parses), the rescaled schedule and the slice's topology.

  Raises:
    common.LaunchError: non-GCS paths, or a batch that does not split over the chips.
  """
  topology = tpu_topology(args.accelerator_type)
  bucket = args.bucket.rstrip('/')
  if not _is_gcs(bucket):
    raise common.LaunchError(f'--bucket must be a gs:// path, got {args.bucket!r}')
  config_path, config_arg = common.split_config_arg(args.config)
  stem = os.path.splitext(os.path.basename(config_path))[0] + (
    f'_{config_arg}' if config_arg else ''
  )
  data_dir = args.data_dir or f'{bucket}/tensorflow_datasets'
  workdir = args.workdir or f'{bucket}/rock_jax/{args.tpu}/{stem}'
  # Every worker must read the same data and write the same checkpoints: a local
  # path would name a different disk on each VM.
  for flag, path in (('--data_dir', data_dir), ('--workdir', workdir)):
    if not _is_gcs(path):
      raise common.LaunchError(f'{flag} must be a gs:// path on a pod slice, got {path!r}')

  if args.global_batch is not None:
    global_batch = args.global_batch
  elif args.per_device_batch > 0:
    global_batch = args.per_device_batch * topology.num_devices
  else:
    raise common.LaunchError(f'--per_device_batch must be positive, got {args.per_device_batch}')
  if global_batch <= 0 or global_batch % topology.num_devices:
    raise common.LaunchError(
      f'global batch {global_batch} must be a positive multiple of the '
      f'{topology.num_devices} devices of {args.accelerator_type}'
    )
  base = common.schedule_from_config(common.load_config(args.config))
  schedule = common.scale_schedule(base, global_batch, args.lr_scaling)

  overrides = {'data.data_dir': data_dir, 'model.dtype': args.dtype, **schedule.overrides()}
  overrides.update(common.parse_overrides(args.set))
  main = common.main_command(
    '.venv/bin/python',
    args.config,
    workdir,
    overrides,
    heartbeat_timeout=args.heartbeat_timeout,
  )
  run = common.shell_join(main)
  if args.foreground:
    remote = f'cd {REMOTE_DIR} && {run}'
  else:
    # Detached so that a dropped ssh session does not kill a days-long run; the
    # pid file lets `stop` end exactly these processes.
    remote = (
      f'cd {REMOTE_DIR} && nohup {run} > {REMOTE_LOG} 2>&1 < /dev/null & echo $! > {REMOTE_PID}'
    )
  return remote, schedule, topology


def build_plan(args: argparse.Namespace) -> list[common.Command]:
  """Returns the gcloud commands for the chosen subcommand.

  Raises:
    common.LaunchError: arguments that cannot work (see `train_plan`).
  """
  if args.action == 'create':
    topology = tpu_topology(args.accelerator_type)
    version = args.version or RUNTIME_VERSIONS[topology.generation]
    extra = ['--spot'] if args.spot else []
    return [
      _gcloud(
        args,
        'create',
        f'--accelerator-type={args.accelerator_type}',
        f'--version={version}',
        *extra,
      )
    ]
  if args.action == 'setup':
    repo, ref = shlex.quote(args.repo), shlex.quote(args.ref)
    remote = (
      'set -e; '
      f'if [ ! -d {REMOTE_DIR} ]; then git clone -q {repo} {REMOTE_DIR}; fi; '
      f'cd {REMOTE_DIR} && git fetch -q origin {ref} && git checkout -q --detach FETCH_HEAD && '
      "python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
    )
    return [_ssh(args, remote)]
  if args.action == 'train':
    remote, _, _ = train_plan(args)
    return [_ssh(args, remote)]
  if args.action == 'logs':
    return [_ssh(args, f'tail -n {int(args.lines)} {REMOTE_LOG}', worker='0')]
  if args.action == 'stop':
    return [_ssh(args, f'test -f {REMOTE_PID} && kill "$(cat {REMOTE_PID})" && rm {REMOTE_PID}')]
  if args.action == 'delete':
    return [_gcloud(args, 'delete', '--quiet')]
  raise common.LaunchError(f'unknown action {args.action!r}')


def main(argv: Sequence[str] | None = None) -> int:
  """Parses `argv`, prints the commands and runs them unless `--dry_run`."""
  args = build_parser().parse_args(argv)
  try:
    commands = build_plan(args)
    if args.action == 'train':
      _, schedule, topology = train_plan(args)
      print(
        f'# {args.accelerator_type}: {topology.num_hosts} workers, {topology.num_devices} '
        f'devices; global batch {schedule.batch_size}, lr {schedule.learning_rate:.3g} '
        f'({args.lr_scaling} scaling), {schedule.num_steps} steps, '
        f'boundaries {schedule.lr_boundaries}',
        flush=True,
      )
  except common.LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return common.run_commands(commands, dry_run=args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
