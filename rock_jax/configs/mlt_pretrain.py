"""ROCK pretraining on MLT / PBRS synthetic views (paper Section 4.3).

23 object classes in the paper (see below), depth and normals (MLT has no scene label, so no scene
branch), 240k steps at 5e-5 then 80k at 5e-6, otherwise the NYUv2 setting.
Fine-tune the result with `nyuv2_finetune.py`.

python -m rock_jax.main --config=configs/mlt_pretrain.py --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the MLT pretraining setting; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'mlt_pretrain.py takes only "smoke", got {arg!r}.')
  config = base.get_base_config()
  config.data.name = 'mlt'
  # The paper's 23 MLT classes are not published; the builder's class list is
  # configurable and its default config has the 17 NYUv2 detection classes found in
  # NYU-40. With a custom 23-class builder config, set both fields below to match.
  config.data.builder_config = 'nyu40_17'
  config.model.num_classes = 17
  # MLT has a single split (no validation, no test): the periodic evaluation only
  # monitors training, on the first 100 batches of `train`, and chooses nothing. Fine-
  # tuning (`nyuv2_finetune.py`) starts from the final checkpoint; the choice of model
  # is made later, on NYUv2. No test evaluation.
  config.data.eval_split = 'train'
  config.data.test_split = ''
  config.eval.max_batches = 100
  config.model.tasks = 'depth,normals'  # No scene annotation in MLT.
  config.train.num_steps = 320_000
  config.train.lr_boundaries = (240_000,)
  config.train.eval_every = 20_000
  config.train.checkpoint_every = 10_000
  config.train.log_every = 100
  if smoke:
    config = base.smoke(config)
  return config
