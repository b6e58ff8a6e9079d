"""NYUv2 ROCK with every auxiliary loss weight at 0 (paper Table 5, 'ROCK w/o aux. sup.').

The whole block is there (same parameters as ROCK), but nothing supervises the
auxiliary tasks: this checks that ROCK's gain is not only its extra parameters.

python -m rock_jax.main --config=configs/nyuv2_no_aux_sup.py --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns ROCK without auxiliary supervision; `arg='smoke'` shrinks it."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'nyuv2_no_aux_sup.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  config.model.variant = 'rock'
  for task in ('scene', 'depth', 'normals'):
    config.loss.weights[task] = 0.0
  return base.smoke(config) if smoke else config
