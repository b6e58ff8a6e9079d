"""ROCK pretraining on the MLT analog: `synthetic_rooms/source` (issue #11, paper Table 3).

The source set is larger than the demo's (5000 training images against 2500), styled differently
(lighting, textures, camera range and object mix: `rooms_render.STYLES['source']`) and
has no scene labels, as MLT has none. So ROCK learns depth and normals only (no scene
branch), from the §1 backbone (`rock_jax.tools.pretrain_backbone`) with BatchNorm
statistics frozen, as the paper starts MLT pretraining from ImageNet. Everything else
is the demo's model (`configs/synthetic.py`), so the checkpoint fine-tunes on the demo's
set through `configs/synthetic_finetune.py`, exactly the `init_from` + `init_exclude`
path of `configs/nyuv2_finetune.py`.

python -m rock_jax.main --config=configs/synthetic_source.py \
  --config.init_backbone=BACKBONE_DIR --workdir=SOURCE_WORKDIR
"""

import ml_collections

from rock_jax.configs import base, synthetic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the source pretraining setting; `arg='smoke'` uses `source_tiny`."""
  options, smoke = base.split_arg(arg)
  if options:
    raise ValueError(f'synthetic_source.py takes only "smoke", got {arg!r}.')
  config = synthetic.get_config('smoke' if smoke else None)
  config.data.builder_config = 'source_tiny' if smoke else 'source'
  # The source has its own validation split; its test split is never used for choices.
  config.data.eval_split = 'validation'
  config.model.tasks = 'depth,normals'  # No scene annotation in the source (as MLT).
  config.model.backbone.freeze_bn_stats = True  # Pretrained backbone, as in the paper.
  return config
