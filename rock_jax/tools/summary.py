"""Table-4 style model complexity: parameters per part and FLOPs per image.

  python -m rock_jax.tools.summary --config=configs/nyuv2.py
  python -m rock_jax.tools.summary --config=configs/nyuv2.py --config.model.variant=baseline --json

Parameters come from `jax.eval_shape` of the initialisation (nothing is computed); FLOPs
from XLA's cost analysis of the compiled forward pass (inference mode, auxiliary outputs
included) on one image of `config.data.image_size`. XLA counts a multiply-add as 2 FLOPs.
"""

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rock_jax import cli
from rock_jax.models import detector


def _count(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def params_by_part(params: dict[str, Any]) -> dict[str, int]:
  """Splits parameter counts into backbone, auxiliary block, SSD extras and SSD heads.

  Args:
    params: The detector's `params` collection (arrays or shape structs).

  Returns:
    Part name -> count, in network order: 'backbone', 'rock' or 'flat_mtl' (when present),
    'ssd_extras', 'ssd_heads'.
  """
  parts = {'backbone': _count(params['backbone'])}
  for block in ('rock', 'flat_mtl'):
    if block in params:
      parts[block] = _count(params[block])
  ssd = params['ssd']
  parts['ssd_extras'] = sum(_count(v) for k, v in ssd.items() if k.startswith('extra'))
  parts['ssd_heads'] = sum(_count(v) for k, v in ssd.items() if not k.startswith('extra'))
  return parts


def _flops(model: detector.Detector, variables: Any, images: jax.ShapeDtypeStruct) -> float:
  """FLOPs of one inference forward pass from XLA's cost analysis."""
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = forward.lower(variables, images).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX returned one dict per computation.
    cost = cost[0]
  return float(cost['flops'])


def summarize(config: ml_collections.ConfigDict, *, flops: bool = True) -> dict[str, Any]:
  """Computes the complexity summary of the configured detector.

  Args:
    config: The experiment ConfigDict (uses `config.model` and `config.data.image_size`).
    flops: Also compile the forward pass and report FLOPs per image (slow at full size
      on a CPU).

  Returns:
    A JSON-serialisable dict: `variant`, `image_size`, `num_anchors`, `params_total`,
    `params_by_part`, and `flops` (None when not computed).
  """
  model = detector.build_model(config)
  images = jax.ShapeDtypeStruct((1, *config.data.image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  parts = params_by_part(variables['params'])
  return {
    'variant': config.model.variant,
    'image_size': list(config.data.image_size),
    'num_anchors': out['boxes'].shape[1],
    'params_total': sum(parts.values()),
    'params_by_part': parts,
    'flops': _flops(model, variables, images) if flops else None,
  }


def format_table(summary: dict[str, Any]) -> str:
  """Formats a summary as a plain-text table.

  Args:
    summary: As returned by `summarize`.

  Returns:
    The table, one line per part, then the total and the FLOPs.
  """
  height, width = summary['image_size']
  lines = [
    f'variant {summary["variant"]}, input {height}x{width}, {summary["num_anchors"]} default boxes',
    f'{"part":<12}{"parameters":>14}',
  ]
  for part, count in summary['params_by_part'].items():
    lines.append(f'{part:<12}{count:>14,}')
  lines.append(f'{"total":<12}{summary["params_total"]:>14,}')
  if summary['flops'] is not None:
    lines.append(f'{"GFLOPs":<12}{summary["flops"] / 1e9:>14.2f}  (per image, XLA cost analysis)')
  return '\n'.join(lines)


def _cli() -> None:
  """Defines the flags and prints the summary of --config.

  Flags are defined here, not at import, so that other tools (bench, the trainer) can
  import this module next to their own `--config` flag.
  """
  from absl import flags
  from ml_collections import config_flags

  config = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].')
  as_json = flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  with_flops = flags.DEFINE_bool('flops', True, 'Compile the forward pass to count FLOPs.')
  flags.mark_flags_as_required(['config'])

  def main(argv: list[str]) -> None:
    del argv
    summary = summarize(config.value, flops=with_flops.value)
    print(json.dumps(summary) if as_json.value else format_table(summary))

  cli.run(main)


if __name__ == '__main__':
  _cli()
