"""NYUv2 ROCK fine-tuned from an MLT-pretrained checkpoint (paper Table 3, 'ROCK (DNS+MLT)').

Everything that does not depend on the classes or on the scene task loads from
the MLT run; the class predictors (`ssd/cls<k>`, 23 -> 19 classes) and the new
scene branch of the ROCK block keep their fresh initialisation (each such leaf is
logged). Table 3 trains on the official train split and reports the test split.

The official split has no validation images, so no checkpoint is chosen: there is no
periodic evaluation and the final checkpoint is evaluated once on the test split.
(To choose a checkpoint on held-out images instead, train on the paper's 673 / 122
split: `--config.data.builder_config=paper --config.data.eval_split=validation`.)

python -m rock_jax.main --config=configs/nyuv2_finetune.py \
  --config.init_from=MLT_WORKDIR --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the fine-tuning setting; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'nyuv2_finetune.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  # Table 3 protocol: train on the 795 official train images, test on the 654 test ones
  # once, with the final checkpoint (no validation split to choose another on).
  config.data.builder_config = 'official'
  config.data.eval_split = ''
  config.data.test_split = 'test'
  # Paths (regex, `re.search`) of variables that must not load from the MLT checkpoint:
  # the class-dependent SSD predictors and the ROCK scene branch (params and BN stats).
  config.init_exclude = (r'/ssd/cls\d+/', r'/rock/scene_')
  if smoke:
    config = base.smoke(config)
  return config
