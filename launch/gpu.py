"""Launch training on one GPU host (one or several GPUs) with `python -m rock_jax.main`.

One process drives every visible GPU: the trainer shards the global batch over a
`('data',)` mesh of all local devices, so a multi-GPU host needs no
`jax.distributed` and no process per GPU.

  python -m launch.gpu --config=configs/nyuv2.py --workdir=runs/nyuv2 --gpus=0
  python -m launch.gpu --config=configs/nyuv2.py --workdir=runs/nyuv2 --gpus=0,1,2,3 \
      --per_gpu_batch=8 --lr_scaling=sqrt --dry_run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launch import common


def parse_gpus(gpus: str) -> list[int]:
  """Parses `--gpus=0,1,3` into device indices.

  Raises:
    common.LaunchError: an empty list, a non-integer, a negative or a repeated index.
  """
  try:
    ids = [int(g) for g in gpus.split(',') if g.strip()]
  except ValueError:
    raise common.LaunchError(f'--gpus expects comma-separated indices, got {gpus!r}') from None
  if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
    raise common.LaunchError(f'--gpus expects distinct non-negative indices, got {gpus!r}')
  return ids


def build_parser() -> argparse.ArgumentParser:
  """Returns the command-line parser (exposed for the tests)."""
  p = argparse.ArgumentParser(
    prog='python -m launch.gpu', description=__doc__.split('\n\n')[0], allow_abbrev=False
  )
  p.add_argument('--config', required=True, help='Experiment file, e.g. configs/nyuv2.py[:arg].')
  p.add_argument('--workdir', required=True, help='Checkpoints and logs (local path or gs://).')
  p.add_argument('--gpus', default='0', help='Comma-separated GPU indices (default: 0).')
  p.add_argument('--data_dir', default=None, help='TFDS data_dir (default: the config).')
  p.add_argument(
    '--per_gpu_batch',
    type=int,
    default=None,
    help='Global batch = this x number of GPUs, with the schedule rescaled to the same '
    'number of images (default: keep the config batch, split over the GPUs).',
  )
  p.add_argument('--lr_scaling', choices=common.LR_SCALINGS, default='sqrt')
  p.add_argument('--bf16', action='store_true', help='bfloat16 compute, float32 parameters.')
  p.add_argument(
    '--mem_fraction',
    type=float,
    default=None,
    help='XLA_PYTHON_CLIENT_MEM_FRACTION (JAX preallocates 75%% of GPU memory by default).',
  )
  p.add_argument('--python', default='.venv/bin/python', help='Interpreter with rock_jax.')
  p.add_argument('--setup', action='store_true', help="First install '.[cuda]' into the venv.")
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='Extra config override, repeatable: --set train.num_steps=100.',
  )
  p.add_argument('--dry_run', action='store_true', help='Print the commands, run nothing.')
  return p


def build_plan(args: argparse.Namespace) -> tuple[list[common.Command], dict[str, str]]:
  """Turns parsed arguments into the commands to run and their environment.

  Returns:
    `(commands, env)`: argv lists run in order from the repository root, and the
    environment variables they need.

  Raises:
    common.LaunchError: GPUs, batch or overrides that cannot work.
  """
  gpus = parse_gpus(args.gpus)
  config = common.load_config(args.config)
  overrides: dict = {}
  base = common.schedule_from_config(config)
  if args.per_gpu_batch is not None:
    if args.per_gpu_batch <= 0:
      raise common.LaunchError(f'--per_gpu_batch must be positive, got {args.per_gpu_batch}')
    schedule = common.scale_schedule(base, args.per_gpu_batch * len(gpus), args.lr_scaling)
    overrides.update(schedule.overrides())
  elif base.batch_size % len(gpus):
    raise common.LaunchError(
      f'global batch {base.batch_size} does not split over {len(gpus)} GPUs; '
      'pass --per_gpu_batch or --set train.batch_size=N'
    )
  if args.data_dir:
    overrides['data.data_dir'] = args.data_dir
  if args.bf16:
    overrides['model.dtype'] = 'bfloat16'
  overrides.update(common.parse_overrides(args.set))

  commands = []
  if args.setup:
    commands.append([args.python, '-m', 'pip', 'install', '-q', '-e', '.[cuda]'])
  commands.append(common.main_command(args.python, args.config, args.workdir, overrides))
  env = {'CUDA_VISIBLE_DEVICES': ','.join(str(g) for g in gpus)}
  if args.mem_fraction is not None:
    if not 0.0 < args.mem_fraction <= 1.0:
      raise common.LaunchError(f'--mem_fraction must be in (0, 1], got {args.mem_fraction}')
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = str(args.mem_fraction)
  return commands, env


def main(argv: Sequence[str] | None = None) -> int:
  """Parses `argv`, prints the commands and runs them unless `--dry_run`."""
  args = build_parser().parse_args(argv)
  try:
    commands, env = build_plan(args)
  except common.LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return common.run_commands(commands, dry_run=args.dry_run, env=env)


if __name__ == '__main__':
  sys.exit(main())
