"""Rehearse a multi-host run on one machine: N processes of `python -m rock_jax.main`.

Each process is one "host" with its own CPU devices; they meet through
`jax.distributed` on 127.0.0.1 and run their collectives over Gloo, so the pod code
path (per-host input shards, `make_array_from_process_local_data`, Orbax saves from
several processes, detections gathered for evaluation) runs for real before a pod run.
The command is built by `common.main_command`, as on a TPU pod (`launch.tpu_pod`) or
a GPU host (`launch.gpu`).

  python -m launch.local --config=configs/synthetic.py:smoke --workdir=/tmp/rehearsal \
      --hosts=2 --set data.train_shards=2
  python -m launch.local --config=configs/synthetic.py:smoke --workdir=/tmp/one --hosts=1 \
      --devices_per_host=2 --set data.train_shards=2   # the same run on one process

Host 0 logs and writes the TensorBoard events, `results.json` and panels; the others
log warnings and errors only. If a host dies, the others stop within
`--heartbeat_timeout` seconds; rerunning the same command resumes from the last
complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from launch import common

LOOPBACK = '127.0.0.1'
# Host processes still running this long after the heartbeat timeout that follows the
# first failure are killed (JAX should have stopped them already).
GRACE_S = 30
DEFAULT_HEARTBEAT_S = 100  # rock_jax.main --heartbeat_timeout's default.


def free_port() -> int:
  """A TCP port on the loopback address that is free now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def host_env(
  process_id: int, hosts: int, port: int, devices_per_host: int, environ: Mapping[str, str]
) -> dict[str, str]:
  """Environment variables of host `process_id` (read by `rock_jax.main`).

  Args:
    process_id: this host.
    hosts: number of hosts; 1 runs without `jax.distributed`.
    port: the coordinator's port on 127.0.0.1 (host 0 serves it).
    devices_per_host: CPU devices each process sees (`JAX_NUM_CPU_DEVICES`).
    environ: the launcher's environment (its device-count XLA flag is dropped so
      that `JAX_NUM_CPU_DEVICES` decides).

  Returns:
    The variables to set on top of the launcher's environment.
  """
  xla_flags = re.sub(
    r'--xla_force_host_platform_device_count=\d+', '', environ.get('XLA_FLAGS', '')
  ).strip()
  env = {
    'JAX_PLATFORMS': 'cpu',
    'JAX_NUM_CPU_DEVICES': str(devices_per_host),
    'XLA_FLAGS': xla_flags,
  }
  if hosts > 1:
    env.update(
      JAX_COORDINATOR_ADDRESS=f'{LOOPBACK}:{port}',
      JAX_NUM_PROCESSES=str(hosts),
      JAX_PROCESS_ID=str(process_id),
      JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
    )
  return env


def build_parser() -> argparse.ArgumentParser:
  """Returns the command-line parser (exposed for the tests)."""
  p = argparse.ArgumentParser(
    prog='python -m launch.local', description=__doc__.split('\n\n')[0], allow_abbrev=False
  )
  p.add_argument('--config', required=True, help='Experiment file, e.g. configs/x.py[:arg].')
  p.add_argument('--workdir', required=True, help='Checkpoints and logs, shared by the hosts.')
  p.add_argument('--hosts', type=int, default=2, help='Processes ("hosts") to start.')
  p.add_argument('--devices_per_host', type=int, default=1, help='CPU devices per process.')
  p.add_argument('--port', type=int, default=0, help='Coordinator port (default: a free one).')
  p.add_argument(
    '--heartbeat_timeout',
    type=int,
    default=None,
    help='Seconds before a silent host counts as dead (rock_jax.main; default 100).',
  )
  p.add_argument('--python', default=sys.executable, help='Interpreter with rock_jax.')
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='Extra config override, repeatable: --set train.num_steps=10.',
  )
  p.add_argument('--dry_run', action='store_true', help='Print the commands, run nothing.')
  return p


def build_plan(
  args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> list[tuple[common.Command, dict[str, str]]]:
  """One `(command, env)` per host: the same command, a different environment.

  Raises:
    common.LaunchError: a host or device count, or overrides, that cannot work.
  """
  if args.hosts < 1 or args.devices_per_host < 1:
    raise common.LaunchError(
      f'--hosts and --devices_per_host must be positive, got {args.hosts} and '
      f'{args.devices_per_host}'
    )
  config = common.load_config(args.config)
  overrides = common.parse_overrides(args.set)
  batch = int(overrides.get('train.batch_size', config.train.batch_size))
  devices = args.hosts * args.devices_per_host
  if batch % devices:
    raise common.LaunchError(
      f'global batch {batch} does not split over {devices} devices; pass --set train.batch_size=N'
    )
  port = args.port or free_port()
  command = common.main_command(
    args.python, args.config, args.workdir, overrides, heartbeat_timeout=args.heartbeat_timeout
  )
  return [
    (command, host_env(i, args.hosts, port, args.devices_per_host, environ))
    for i in range(args.hosts)
  ]


def start(
  plan: Sequence[tuple[common.Command, Mapping[str, str]]],
  base_env: Mapping[str, str] | None = None,
  **popen_kwargs,
) -> list[subprocess.Popen]:
  """Starts every host of `plan` from the repository root; returns the processes.

  Args:
    plan: from `build_plan`.
    base_env: the environment the hosts' variables are added to (default: this one).
    **popen_kwargs: for `subprocess.Popen` (e.g. `stdout`).
  """
  base = os.environ if base_env is None else base_env
  return [
    subprocess.Popen(command, cwd=common.REPO_ROOT, env={**base, **env}, **popen_kwargs)
    for command, env in plan
  ]


def wait(processes: Sequence[subprocess.Popen], grace_s: float = GRACE_S) -> int:
  """Waits for every host; once one fails, kills those still running after `grace_s`.

  Returns:
    0, or the exit status of the first host that failed (negative: killed by a signal).
  """
  failed: tuple[int, int] | None = None
  deadline = None
  while any(p.poll() is None for p in processes):
    for i, p in enumerate(processes):
      if failed is None and p.returncode not in (None, 0):
        failed = (i, p.returncode)
        deadline = time.monotonic() + grace_s
        print(f'host {i} failed with exit status {p.returncode}', file=sys.stderr, flush=True)
    if deadline is not None and time.monotonic() > deadline:
      for i, p in enumerate(processes):
        if p.poll() is None:
          print(f'host {i} still running {grace_s:.0f} s later: killed', file=sys.stderr)
          p.kill()
      break
    time.sleep(0.2)
  for p in processes:
    p.wait()
  if failed is None:
    failed = next(((i, p.returncode) for i, p in enumerate(processes) if p.returncode), None)
  return 0 if failed is None else failed[1]


def main(argv: Sequence[str] | None = None) -> int:
  """Parses `argv`, prints the host commands and runs them unless `--dry_run`."""
  args = build_parser().parse_args(argv)
  try:
    plan = build_plan(args)
  except common.LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for i, (command, env) in enumerate(plan):
    prefix = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())
    print(f'# host {i}\n{prefix} {common.shell_join(command)}', flush=True)
  if args.dry_run:
    return 0
  grace = (args.heartbeat_timeout or DEFAULT_HEARTBEAT_S) + GRACE_S
  return wait(start(plan), grace)


if __name__ == '__main__':
  sys.exit(main())
