"""Learning curves of one run or several, overlaid, into one PNG.

  python -m rock_jax.tools.plot --workdir=DIR [DIR ...] [--out=curves.png] \
      [--labels=a,b,...]

Reads each workdir's `metrics.jsonl` (`rock_jax.reporting`) and draws one subplot per
metric, each run in its own colour: the training loss and each of its parts (solid:
training, means over each report; dots and dashes: validation, at each evaluation),
the validation mAP@0.5, mAP@0.75 and mAP@[0.5:0.95], and the auxiliary-task metrics
(scene accuracy, depth RMSE and relative error, normals angle). The x axis is the
training step. By default the figure goes to `DIR/learning_curves.png` for one run and
to `learning_curves.png` in the current directory for several.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rock_jax import cli, console

with console.native_stderr_filtered():  # reporting loads TensorFlow (through clu).
  from rock_jax import reporting

DEFAULT_NAME = 'learning_curves.png'
# Evaluation metrics drawn when a run has them, in this order (after the losses).
EVAL_METRICS = (
  'mAP@0.5',
  'mAP@0.75',
  'mAP@[0.5:0.95]',
  'scene_accuracy',
  'depth_rmse',
  'depth_rel',
  'disparity_rmse',
  'normals_mean_angle',
)
_COLUMNS = 4


def _series(records: Sequence[Mapping[str, Any]], kind: str, key: str) -> tuple[list, list]:
  """(steps, values) of `key` in the records of `kind`; a resumed run's repeats: last wins."""
  points = {}
  for record in records:
    if record.get('kind') == kind and record.get(key) is not None:
      points[int(record['step'])] = float(record[key])
  steps = sorted(points)
  return steps, [points[s] for s in steps]


def panels_of(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
  """The subplot metrics for these runs: losses first, then `EVAL_METRICS` present."""
  keys: list[str] = []
  for records in runs.values():
    for record in records:
      for key in record:
        if (key == 'loss' or key.startswith('loss/')) and key not in keys:
          keys.append(key)
  losses = sorted(keys, key=lambda k: (k != 'loss', {'loss/cls': 0, 'loss/loc': 1}.get(k, 2), k))
  present = {k for records in runs.values() for r in records for k in r}
  return losses + [k for k in EVAL_METRICS if k in present]


def plot_runs(
  workdirs: Sequence[str], out: str | None = None, labels: Sequence[str] | None = None
) -> str:
  """Draws the learning curves of `workdirs` into a PNG and returns its path.

  Args:
    workdirs: run directories with a `metrics.jsonl`.
    out: the PNG path (default: see the module docstring).
    labels: legend names, one per workdir (default: the workdirs' base names).

  Returns:
    The path written.

  Raises:
    ValueError: if a workdir has no metrics.jsonl, or labels do not match workdirs.
  """
  import matplotlib  # noqa: PLC0415  (only this tool needs it)

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # noqa: PLC0415
  from matplotlib import ticker  # noqa: PLC0415

  labels = list(labels) if labels else [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs.')
  runs = {}
  for label, workdir in zip(labels, workdirs, strict=True):
    records = reporting.read_metrics(workdir)
    if not records:
      raise ValueError(f'No {reporting.METRICS_FILE} in {workdir} (written by the trainer).')
    runs[label] = records
  keys = panels_of(runs)
  rows = -(-len(keys) // _COLUMNS)
  fig, axes = plt.subplots(rows, _COLUMNS, figsize=(4 * _COLUMNS, 3 * rows), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, key in zip(axes.flat, keys, strict=False):
    for index, (label, records) in enumerate(runs.items()):
      color = colors[index % len(colors)]
      steps, values = _series(records, 'train', key)
      if steps:
        ax.plot(steps, values, color=color, lw=1.2, label=f'{label} train')
      steps, values = _series(records, 'eval', key)
      if steps:
        ax.plot(steps, values, color=color, ls='--', marker='o', ms=3, label=f'{label} val')
    ax.set_title(key, fontsize=10)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if key == 'loss' or key.startswith('loss/'):
      ax.set_yscale('log')
      ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
      ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter('%g'))
  for ax in axes.flat[len(keys) :]:
    ax.axis('off')
  handles, names = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, names, loc='lower center', ncol=min(len(names), 4), fontsize=8)
  fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(names) // 4), 1, 1))
  if out is None:
    out = os.path.join(workdirs[0], DEFAULT_NAME) if len(workdirs) == 1 else DEFAULT_NAME
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv: Sequence[str]) -> None:
  """Plots `--workdir` (repeatable) and any directories after the flags."""
  from absl import flags  # noqa: PLC0415

  workdirs = list(flags.FLAGS.workdir or []) + list(argv[1:])
  if not workdirs:
    raise SystemExit('Give at least one --workdir.')
  path = plot_runs(workdirs, flags.FLAGS.out, flags.FLAGS.labels)
  print(f'Wrote {path}', flush=True)


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  from absl import flags  # noqa: PLC0415

  flags.DEFINE_multi_string('workdir', [], 'Run directory (repeatable; or list them after).')
  flags.DEFINE_string('out', None, 'The PNG (default: see the module docstring).')
  flags.DEFINE_list('labels', None, 'Legend names, one per workdir.')
  cli.run(main)


if __name__ == '__main__':
  _cli()
