"""NYUv2 ROCK trained on the first fraction of the train split (paper Table 6).

python -m rock_jax.main --config=configs/nyuv2_fraction.py:0.7 --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns ROCK on a fraction of NYUv2 train; `arg` is e.g. '0.6', '0.7,smoke'."""
  options, smoke = base.split_arg(arg)
  if len(options) > 1:
    raise ValueError(f'Expected one fraction (e.g. 0.7) and optionally smoke, got {arg!r}.')
  fraction = float(options[0]) if options else 0.7
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'The train fraction must be in (0, 1], got {fraction}.')
  config = base.get_base_config()
  config.data.train_fraction = fraction
  return base.smoke(config) if smoke else config
