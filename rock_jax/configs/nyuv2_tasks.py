"""NYUv2 ROCK or flat MTL with a subset of the auxiliary tasks (paper Tables 2 and 3).

The argument names the tasks by letter (D: depth, N: surface normals, S: scene):
`D` (Table 3 'ROCK (D)'), `DN`, `DS`, `NS` (Table 2), `DNS` (all, = nyuv2.py).

python -m rock_jax.main --config=configs/nyuv2_tasks.py:DN --workdir=DIR
python -m rock_jax.main --config=configs/nyuv2_tasks.py:DN,smoke --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base

TASKS = {'D': 'depth', 'N': 'normals', 'S': 'scene'}
# Task order of the ROCK block (and of the base config).
ORDER = ('scene', 'depth', 'normals')


def tasks_from_letters(letters: str) -> str:
  """Maps e.g. 'DN' to 'depth,normals' (in the block's task order).

  Args:
    letters: some of D, N, S, each at most once.

  Returns:
    The comma string for `config.model.tasks`.
  """
  if not letters or any(c not in TASKS for c in letters) or len(set(letters)) != len(letters):
    raise ValueError(f'Tasks must be letters among D, N, S (e.g. DN), got {letters!r}.')
  chosen = {TASKS[c] for c in letters}
  return ','.join(t for t in ORDER if t in chosen)


def with_tasks(arg: str | None, variant: str) -> ml_collections.ConfigDict:
  """Builds a NYUv2 config of `variant` with the tasks that `arg` names.

  Args:
    arg: 'LETTERS[,smoke]', e.g. 'DN' or 'DN,smoke'; the letters default to DNS.
    variant: the model variant, 'rock' or 'flat_mtl'.

  Returns:
    The config.
  """
  options, smoke = base.split_arg(arg)
  if len(options) > 1:
    raise ValueError(f'Expected one task set (e.g. DN) and optionally smoke, got {arg!r}.')
  config = base.get_base_config()
  config.model.variant = variant
  config.model.tasks = tasks_from_letters(options[0] if options else 'DNS')
  return base.smoke(config) if smoke else config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns ROCK on NYUv2 with the tasks of `arg` (e.g. 'DN', 'DN,smoke')."""
  return with_tasks(arg, 'rock')
