"""NYUv2 flat multi-task baseline: 1x1 heads on conv5, no fusion (Table 1 row 2, Table 2 left).

The optional argument selects the tasks by letter as in `nyuv2_tasks.py`
(default DNS; Table 2 uses DN, DS, NS).

python -m rock_jax.main --config=configs/nyuv2_flat_mtl.py --workdir=DIR
python -m rock_jax.main --config=configs/nyuv2_flat_mtl.py:DS --workdir=DIR
"""

import ml_collections

from rock_jax.configs import nyuv2_tasks


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns flat MTL on NYUv2; `arg` is '[LETTERS][,smoke]'."""
  return nyuv2_tasks.with_tasks(arg, 'flat_mtl')
