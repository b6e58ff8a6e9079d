"""ROCK on Cityscapes: 8 instance classes, disparity as the only auxiliary task (Table 7).

"The same configuration as for depth estimation, but with 60,000 training
iterations" (paper Section 4.4): the depth task reads the disparity map. The
paper gives neither the resolution nor the schedule: images are resized to
512x1024 (half resolution, the 1:2 frame kept) and the rate drops at 3/4 of the
run as on NYUv2.

python -m rock_jax.main --config=configs/cityscapes.py --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the Cityscapes setting; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'cityscapes.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  config.data.name = 'cityscapes'
  config.data.builder_config = ''  # The builder has no configs.
  # Cityscapes' test annotations are not public, so there is no test evaluation: like the
  # paper's Table 7, results.json is the validation split, on the final checkpoint (the
  # periodic validation evaluations are a learning curve; none is used to choose).
  config.data.eval_split = 'validation'
  config.data.test_split = ''
  config.data.image_size = (512, 1024)
  config.model.num_classes = 8
  config.model.tasks = 'depth'  # Disparity, in the `depth` field of the examples.
  # The builder puts the disparity (pixels, 0 = invalid) in the `depth` slot, so the
  # depth loss and metrics read it; clamp its log to [1, 256] px as for disparity.
  config.loss.min_depth = 1.0
  config.loss.max_depth = 256.0
  config.train.num_steps = 60_000
  config.train.lr_boundaries = (45_000,)
  if smoke:
    config = base.smoke(config)
  return config
