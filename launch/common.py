"""Helpers shared by the launch scripts: config loading, batch scaling, running commands.

Everything here is pure except `run_commands`, so the scripts' dry runs (and the
tests) see exactly the commands a real launch would run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

# Repository root: the launch scripts run from a checkout and pass config paths
# relative to it, exactly as `python -m rock_jax.main` expects them.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Command = list[str]


class LaunchError(ValueError):
  """A launch request that cannot work; the message is one line for the user."""


def split_config_arg(config: str) -> tuple[str, str | None]:
  """Splits `configs/x.py:arg` into the path and the optional `get_config` argument."""
  path, _, arg = config.partition(':')
  return path, (arg or None)


def load_config(config: str) -> Any:
  """Imports a config file the way `config_flags` does and returns `get_config(arg)`.

  Args:
    config: `path/to/file.py[:arg]`, relative to the repository root or absolute.

  Returns:
    The `ml_collections.ConfigDict` the experiment file returns.

  Raises:
    LaunchError: the file does not exist.
  """
  path, arg = split_config_arg(config)
  full = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
  if not os.path.isfile(full):
    raise LaunchError(f'config file not found: {path}')
  # Experiment files import `configs.base`, so the repository root must be importable.
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  spec = importlib.util.spec_from_file_location('_launch_config', full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A training schedule: global batch, learning rate and step counts."""

  batch_size: int
  learning_rate: float
  num_steps: int
  lr_boundaries: tuple[int, ...]
  eval_every: int
  checkpoint_every: int

  def overrides(self) -> dict[str, Any]:
    """Returns the schedule as `config.train` overrides."""
    return {
      'train.batch_size': self.batch_size,
      'train.learning_rate': self.learning_rate,
      'train.num_steps': self.num_steps,
      'train.lr_boundaries': self.lr_boundaries,
      'train.eval_every': self.eval_every,
      'train.checkpoint_every': self.checkpoint_every,
    }


def schedule_from_config(config: Any) -> Schedule:
  """Reads the schedule fields of a config's `train` section."""
  train = config.train
  return Schedule(
    batch_size=int(train.batch_size),
    learning_rate=float(train.learning_rate),
    num_steps=int(train.num_steps),
    lr_boundaries=tuple(int(b) for b in train.lr_boundaries),
    eval_every=int(train.eval_every),
    checkpoint_every=int(train.checkpoint_every),
  )


LR_SCALINGS = ('sqrt', 'linear', 'none')


def scale_schedule(base: Schedule, global_batch: int, lr_scaling: str = 'sqrt') -> Schedule:
  """Rescales a schedule to another global batch at the same number of images seen.

  Step counts (total, boundaries, eval and checkpoint periods) shrink by
  `base.batch_size / global_batch`, rounded up, so the run sees at least as many
  images as the paper's. The learning rate follows `lr_scaling`: 'sqrt' (the
  usual rule for Adam, whose update size does not grow with the batch), 'linear'
  (the SGD rule; often unstable for Adam beyond ~8x), or 'none'.

  Args:
    base: the schedule the config was tuned with (paper: batch 8).
    global_batch: the new global batch, over all hosts and devices.
    lr_scaling: one of `LR_SCALINGS`.

  Returns:
    The rescaled schedule.

  Raises:
    LaunchError: a non-positive batch or an unknown scaling rule.
  """
  if global_batch <= 0:
    raise LaunchError(f'global batch must be positive, got {global_batch}')
  if lr_scaling not in LR_SCALINGS:
    raise LaunchError(f'lr_scaling must be one of {LR_SCALINGS}, got {lr_scaling!r}')
  ratio = global_batch / base.batch_size
  factor = {'sqrt': math.sqrt(ratio), 'linear': ratio, 'none': 1.0}[lr_scaling]

  def steps(n: int) -> int:
    return max(1, math.ceil(n / ratio))

  return Schedule(
    batch_size=global_batch,
    learning_rate=base.learning_rate * factor,
    num_steps=steps(base.num_steps),
    lr_boundaries=tuple(steps(b) for b in base.lr_boundaries),
    eval_every=steps(base.eval_every),
    checkpoint_every=steps(base.checkpoint_every),
  )


def format_override_value(value: Any) -> str:
  """Formats a value the way `ml_collections.config_flags` parses it back."""
  if isinstance(value, tuple):
    inner = ', '.join(format_override_value(v) for v in value)
    return f'({inner},)' if len(value) == 1 else f'({inner})'
  if isinstance(value, float):
    return repr(value)
  return str(value)


def config_flags(overrides: Mapping[str, Any]) -> list[str]:
  """Turns `{'train.batch_size': 64}` into `['--config.train.batch_size=64']`."""
  return [f'--config.{key}={format_override_value(value)}' for key, value in overrides.items()]


def main_command(
  python: str,
  config: str,
  workdir: str,
  overrides: Mapping[str, Any],
  *,
  heartbeat_timeout: int | None = None,
) -> Command:
  """The `python -m rock_jax.main` command every launcher runs (local, GPU, TPU pod).

  Args:
    python: the interpreter with rock_jax installed.
    config: `path/to/file.py[:arg]`.
    workdir: checkpoints and logs.
    overrides: `config` field overrides (`config_flags`).
    heartbeat_timeout: several hosts: seconds before a silent host counts as dead
      (`rock_jax.main --heartbeat_timeout`); None keeps the entry point's default.

  Returns:
    The argv list.
  """
  command = [python, '-m', 'rock_jax.main', f'--config={config}', f'--workdir={workdir}']
  command += config_flags(overrides)
  if heartbeat_timeout is not None:
    if heartbeat_timeout <= 0:
      raise LaunchError(f'--heartbeat_timeout must be positive, got {heartbeat_timeout}')
    command.append(f'--heartbeat_timeout={heartbeat_timeout}')
  return command


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
  """Parses repeated `--set key=value` arguments (values passed through as text).

  Raises:
    LaunchError: an item without `=` or with an empty key.
  """
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    key = key.strip().removeprefix('config.')
    if not sep or not key:
      raise LaunchError(f'--set expects key=value (e.g. train.num_steps=100), got {pair!r}')
    out[key] = value
  return out


def shell_join(command: Command) -> str:
  """Quotes a command for a POSIX shell (what the dry run prints, copy-pastable)."""
  return shlex.join(command)


def run_commands(
  commands: Sequence[Command], *, dry_run: bool, env: Mapping[str, str] | None = None
) -> int:
  """Prints each command, then runs it unless `dry_run`; stops at the first failure.

  Args:
    commands: argv lists, run without a local shell from the repository root.
    dry_run: print only.
    env: extra environment variables for the commands (printed as a prefix).

  Returns:
    0, or the exit status of the first command that failed.
  """
  prefix = ' '.join(f'{k}={shlex.quote(v)}' for k, v in (env or {}).items())
  for command in commands:
    print(f'{prefix} {shell_join(command)}'.strip(), flush=True)
    if dry_run:
      continue
    # From the repository root: config paths and `.venv` are relative to it.
    result = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, check=False)
    if result.returncode:
      print(f'command failed with exit status {result.returncode}', file=sys.stderr)
      return result.returncode
  return 0
