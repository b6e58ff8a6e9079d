"""NYUv2 ROCK without feature merging: encoder and predictor only (paper Table 1, row 3).

python -m rock_jax.main --config=configs/nyuv2_rock_no_fusion.py --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns ROCK w/o fusion; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'nyuv2_rock_no_fusion.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  config.model.variant = 'rock_no_fusion'  # No decoder, no fusion: SSD sees the plain conv5.
  return base.smoke(config) if smoke else config
