"""NYUv2 ROCK with depth as the only auxiliary task, fusion by addition or product (Table 5).

python -m rock_jax.main --config=configs/nyuv2_depth_fusion.py:add --workdir=DIR
python -m rock_jax.main --config=configs/nyuv2_depth_fusion.py:product --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base

FUSIONS = ('add', 'product')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns depth-only ROCK; `arg` is 'add' or 'product' (default add), plus ',smoke'."""
  options, smoke = base.split_arg(arg)
  fusion = options[0] if options else 'add'
  if len(options) > 1 or fusion not in FUSIONS:
    raise ValueError(f'Expected one of {FUSIONS} and optionally smoke, got {arg!r}.')
  config = base.get_base_config()
  config.model.variant = 'rock'
  config.model.tasks = 'depth'
  config.model.rock.fusion = fusion
  return base.smoke(config) if smoke else config
