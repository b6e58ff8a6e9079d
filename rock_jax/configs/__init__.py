"""The experiment configs, shipped inside the package (the checkout's `configs/` links here).

Every file is a `get_config(arg=None)` experiment, read by `ml_collections.config_flags`.
Besides a path, `--config` accepts the short name of a shipped file, so that the paper's
experiments run after `pip install rock_jax-*.whl`, from any directory:

  python -m rock_jax.main --config=nyuv2 --config.init_backbone=DIR --workdir=DIR
  python -m rock_jax.main --config=synthetic:smoke --workdir=/tmp/smoke

`resolve` maps `nyuv2[.py][:arg]` to this folder's `nyuv2.py[:arg]`; a path that exists
is kept as it is (made absolute), so `--config=configs/nyuv2.py` works in a checkout.
"""

import os
from collections.abc import Sequence

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
# Flags that take an experiment file (the trainer's and the tools').
_CONFIG_FLAGS = ('--config',)


def names() -> list[str]:
  """The short names of the shipped experiment files (base and this module excluded)."""
  return sorted(
    name[:-3]
    for name in os.listdir(CONFIG_DIR)
    if name.endswith('.py') and name not in ('__init__.py', 'base.py')
  )


def resolve(value: str) -> str:
  """Maps `--config`'s value to an absolute file path, keeping its `:arg`.

  Args:
    value: `path/to/file.py[:arg]` or a short name `nyuv2[:arg]` (`nyuv2.py` too).

  Returns:
    `/abs/path/file.py[:arg]`; a value that names neither an existing file nor a shipped
    config comes back unchanged, so `config_flags` reports it as usual.
  """
  path, sep, arg = value.partition(':')
  if os.path.isfile(path):
    return os.path.abspath(path) + sep + arg
  name = path.removesuffix('.py')
  if os.sep not in path and '/' not in path and name in names():
    return os.path.join(CONFIG_DIR, name + '.py') + sep + arg
  return value


def resolve_argv(argv: Sequence[str]) -> list[str]:
  """`resolve`s the value of every `--config=...` (or `--config ...`) in a command line.

  Overrides such as `--config.train.num_steps=4` are left alone.
  """
  out = list(argv)
  for i, token in enumerate(out):
    flag, eq, value = token.partition('=')
    if flag in _CONFIG_FLAGS and eq:
      out[i] = f'{flag}={resolve(value)}'
    elif token in _CONFIG_FLAGS and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out
