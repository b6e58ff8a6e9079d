"""ROCK on the demo's set, fine-tuned from a `configs/synthetic_source.py` checkpoint.

The Table-3 analog of issue #11 ('ROCK (DNS+MLT)'): the target is the demo's set
(`synthetic_rooms/cpu`, scene, depth and normals); everything that does not depend on
the classes or on the scene task loads from the source run (`init_from`), and the
class predictors (`ssd/cls<k>`) and the scene branch of the ROCK block keep their fresh
initialisation, with exactly the `init_exclude` of `configs/nyuv2_finetune.py`.
BatchNorm statistics stay frozen (the backbone arrives pretrained).

python -m rock_jax.main --config=configs/synthetic_finetune.py \
  --config.init_from=SOURCE_WORKDIR --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base, nyuv2_finetune, synthetic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the fine-tuning setting; `arg='smoke'` shrinks it for CPU tests."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'synthetic_finetune.py takes only "smoke", got {arg!r}.')
  config = synthetic.get_config('smoke' if smoke else None)
  # The handoff of the real NYUv2 fine-tuning, not a copy of it.
  config.init_exclude = tuple(nyuv2_finetune.get_config().init_exclude)
  config.model.backbone.freeze_bn_stats = True
  return config
