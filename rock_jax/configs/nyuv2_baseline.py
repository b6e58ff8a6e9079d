"""NYUv2 detection baseline: SSD on conv5, no auxiliary task (paper Table 1, first row).

python -m rock_jax.main --config=configs/nyuv2_baseline.py --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the baseline setting; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'nyuv2_baseline.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  config.model.variant = 'baseline'
  config.model.tasks = ''  # No auxiliary prediction and no auxiliary loss.
  return base.smoke(config) if smoke else config
