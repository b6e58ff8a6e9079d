"""NYUv2, ROCK with scene, depth and normals (paper Table 1, last row; Table 3 'ROCK (DNS)').

python -m rock_jax.main --config=configs/nyuv2.py --workdir=DIR
python -m rock_jax.main --config=configs/nyuv2.py:smoke --workdir=DIR  # seconds on a CPU
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the paper's NYUv2 setting; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'nyuv2.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  return base.smoke(config) if smoke else config
