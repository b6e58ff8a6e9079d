"""What a run reports, and where: console lines, TensorBoard and the workdir's files.

Console (process 0, stdout), one line per `train.log_every` steps:

  step 400/1600  2.41 steps/s  ETA 8m18s  lr 1.0e-03  loss 9.87 (cls 2.91 loc 1.20 ...)
      data 3 ms + compute 412 ms /step

steps/s, the ETA and the per-step times count training only: evaluation and
checkpoint saves are excluded (the ETA does not jump after an evaluation), and so is
the first step of a run (compilation). `data` is the time spent waiting for the
next host batch, `compute` the rest of a step (dispatch, device work, the host sync
of the metrics). Each evaluation prints a compact table (`format_eval`).

Workdir (documented in README.md, "What a run writes"):
- `config.json`: the full config of the run (the console names it instead of
  printing it);
- `metrics.jsonl`: one JSON object per line, `{"kind": "train" | "eval", "step": N,
  "time": unix seconds, ...}` with the same names as the TensorBoard scalars (without
  the `train/` and `eval/` prefixes); a resumed run appends;
- `eval/<step>/detections.json` (COCO results format: image_id, category_id,
  bbox `[x, y, w, h]` in original pixels, score), `eval/<step>/ground_truth.json`
  (COCO dataset format) and `eval/<step>/summary.json` (the 12 COCO summary numbers,
  the per-class AP@0.5 and the auxiliary metrics), so pycocotools can re-evaluate
  any evaluation step;
- TensorBoard events (`train/...`, `eval/...` scalars; `panels/<image_id>` images
  of the first `eval.num_panels` images of the eval split at every evaluation).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers
from etils import epath

from rock_jax import coco
from rock_jax import tasks as tasks_lib

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
EVAL_DIR = 'eval'
# Keys of `results` that are bookkeeping, not metrics.
_INFO_KEYS = ('step', 'split', 'num_images', 'checkpoint')


def create_writer(workdir: str | epath.Path, *, is_writer: bool) -> metric_writers.MetricWriter:
  """TensorBoard writer of process 0 (other processes write nothing).

  Unlike `metric_writers.create_default_writer`, nothing is logged to the console:
  the console gets `Progress` lines and `format_eval` tables instead.
  """
  if not is_writer:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(os.fspath(workdir))])


def write_config(config: ml_collections.ConfigDict, workdir: str | epath.Path) -> epath.Path:
  """Writes the full config to `workdir/config.json` and returns the path."""
  path = epath.Path(workdir) / CONFIG_FILE
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  return path


def to_json(tree: Any) -> Any:
  """numpy scalars -> Python numbers, NaN and inf -> None, keys -> str."""
  if isinstance(tree, Mapping):
    return {str(k): to_json(v) for k, v in tree.items()}
  if isinstance(tree, list | tuple):
    return [to_json(v) for v in tree]
  if isinstance(tree, np.generic):
    tree = tree.item()
  if isinstance(tree, float) and not np.isfinite(tree):
    return None
  return tree


class MetricsLog:
  """Appends one JSON object per report or evaluation to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str | epath.Path, *, enabled: bool = True):
    self.path = epath.Path(workdir) / METRICS_FILE
    self.enabled = enabled

  def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
    """Appends `{'kind': kind, 'step': step, 'time': now, **values}`."""
    if not self.enabled:
      return
    record = {'kind': kind, 'step': int(step), 'time': round(time.time(), 3)}
    record.update(to_json(dict(values)))
    with self.path.open('a') as f:
      f.write(json.dumps(record, sort_keys=False) + '\n')


def read_metrics(workdir: str | epath.Path) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl` (empty if there is none)."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
  """`75` -> `1m15s`, `4000` -> `1h06m`, `9` -> `9s`."""
  seconds = max(0, round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{(seconds % 3600) // 60:02d}m'


def loss_parts(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
  """`(part, value)` of the `loss/<part>` entries: detection (cls, loc) first."""
  parts = [(k.removeprefix('loss/'), v) for k, v in metrics.items() if k.startswith('loss/')]
  first = {'cls': 0, 'loc': 1}
  return sorted(parts, key=lambda kv: first.get(kv[0], 2))


def _number(value: float | None, digits: int = 3) -> str:
  if value is None or not np.isfinite(value):
    return 'n/a'
  return f'{value:.{digits}g}' if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 else f'{value:.3f}'


def format_progress(
  step: int,
  num_steps: int,
  metrics: Mapping[str, float],
  *,
  steps_per_sec: float | None,
  data_ms: float | None,
  compute_ms: float | None,
  peak_memory_gib: float | None = None,
) -> str:
  """One console line of training progress (see the module docstring).

  Args:
    step: the current step.
    num_steps: the last step of the run.
    metrics: mean train metrics since the last line (`loss`, `loss/<part>`,
      `learning_rate`, ...).
    steps_per_sec: training speed without evaluation and checkpoint time (None: not
      measured yet, e.g. only the compiling step so far).
    data_ms: mean milliseconds per step spent waiting for input.
    compute_ms: mean milliseconds per step spent on the rest of the step.
    peak_memory_gib: peak accelerator memory, when the backend reports it.

  Returns:
    The line, without a newline.
  """
  width = len(str(num_steps))
  parts = [f'step {step:>{width}d}/{num_steps}']
  if steps_per_sec:
    eta = (num_steps - step) / steps_per_sec
    parts.append(f'{steps_per_sec:.2f} steps/s  ETA {format_duration(eta)}')
  if 'learning_rate' in metrics:
    parts.append(f'lr {metrics["learning_rate"]:.1e}')
  detail = ' '.join(f'{k} {_number(v)}' for k, v in loss_parts(metrics))
  if 'loss' in metrics:
    parts.append(f'loss {_number(metrics["loss"])}' + (f' ({detail})' if detail else ''))
  if data_ms is not None and compute_ms is not None:
    parts.append(f'data {data_ms:.0f} + compute {compute_ms:.0f} ms/step')
  if peak_memory_gib is not None:
    parts.append(f'mem {peak_memory_gib:.1f} GiB')
  return '  '.join(parts)


def peak_memory_gib() -> float | None:
  """Peak memory of the first local device in GiB, if the backend reports it (GPU, TPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001  (backends without memory statistics)
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / 2**30


class Progress:
  """Measures training speed without evaluation, checkpoints and compilation.

  Use: `start()` once the first step of the run has compiled and run; `data(s)`
  after each wait for a batch; `with paused():` around evaluation and saving;
  `line(step, metrics)` at each report (it resets the window).
  """

  def __init__(self, num_steps: int, *, clock: Callable[[], float] = time.perf_counter):
    self.num_steps = num_steps
    self._clock = clock
    self._start: float | None = None
    self._start_step = 0
    self._excluded = 0.0
    self._data = 0.0

  def start(self, step: int) -> None:
    """Starts a measuring window after `step` (a step already done)."""
    self._start = self._clock()
    self._start_step = step
    self._excluded = 0.0
    self._data = 0.0

  def data(self, seconds: float) -> None:
    """Adds time spent waiting for input."""
    if self._start is not None:
      self._data += seconds

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Excludes the time of the block (evaluation, saving) from the speed."""
    begin = self._clock()
    try:
      yield
    finally:
      self._excluded += self._clock() - begin

  def rates(self, step: int) -> tuple[float | None, float | None, float | None]:
    """(steps/s, data ms/step, compute ms/step) of the window up to `step`."""
    if self._start is None or step <= self._start_step:
      return None, None, None
    steps = step - self._start_step
    seconds = max(self._clock() - self._start - self._excluded, 1e-9)
    data_ms = 1000 * self._data / steps
    return steps / seconds, data_ms, max(1000 * seconds / steps - data_ms, 0.0)

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    """The progress line at `step`; starts the next window."""
    steps_per_sec, data_ms, compute_ms = self.rates(step)
    text = format_progress(
      step,
      self.num_steps,
      metrics,
      steps_per_sec=steps_per_sec,
      data_ms=data_ms,
      compute_ms=compute_ms,
      peak_memory_gib=peak_memory_gib(),
    )
    self.start(step)
    return text


def metric_values(results: Mapping[str, Any]) -> dict[str, float]:
  """The numeric metrics of `results` (None and bookkeeping entries left out)."""
  return {
    k: float(v)
    for k, v in results.items()
    if isinstance(v, int | float | np.generic) and not isinstance(v, bool) and k not in _INFO_KEYS
  }


def _pct(value: Any) -> str:
  return '-' if value is None else f'{100 * value:.1f}'


def format_eval(results: Mapping[str, Any], seconds: float | None = None) -> str:
  """The compact evaluation table printed at every evaluation.

  Args:
    results: from `eval_loop.Evaluator.run` (12 COCO numbers, `loss...`, task metrics).
    seconds: how long the evaluation took.

  Returns:
    Four to five lines: a header, the 12 COCO summary numbers (in %), the validation
    loss and its parts, and the auxiliary metrics.
  """
  head = (
    f'eval  step {results.get("step")}  {results.get("split")} split, '
    f'{results.get("num_images")} images'
  )
  if seconds is not None:
    head += f', {seconds:.1f} s'
  short = {
    'mAP@[0.5:0.95]': 'AP',
    'mAP@0.5': 'AP50',
    'mAP@0.75': 'AP75',
    'AP_small': 'APs',
    'AP_medium': 'APm',
    'AP_large': 'APl',
    'AR@1': 'AR1',
    'AR@10': 'AR10',
    'AR@100': 'AR100',
    'AR_small': 'ARs',
    'AR_medium': 'ARm',
    'AR_large': 'ARl',
  }
  names = coco.COCO_SUMMARY_NAMES
  cells = [f'{short[k]} {_pct(results.get(k)):>5}' for k in names if k in results]
  lines = [head]
  if cells:
    lines.append('  COCO %  ' + '  '.join(cells[:6]))
    if len(cells) > 6:
      lines.append('          ' + '  '.join(cells[6:]))
  if 'loss' in results:
    detail = '  '.join(f'{k} {_number(v)}' for k, v in loss_parts(results))
    lines.append(f'  loss    {_number(results["loss"])}  ({detail})')
  aux = [
    (k, v)
    for k, v in results.items()
    if k not in _INFO_KEYS
    and k not in names
    and not k.startswith(('AP@', 'loss'))
    and isinstance(v, int | float | type(None))
  ]
  if aux:
    lines.append('  tasks   ' + '  '.join(f'{k} {_number(v)}' for k, v in aux))
  return '\n'.join(lines)


def write_eval_files(
  workdir: str | epath.Path,
  name: int | str,
  evaluator: coco.CocoEvaluator,
  results: Mapping[str, Any],
) -> epath.Path:
  """Writes `eval/<name>/{detections,ground_truth,summary}.json`; returns the folder.

  `name` is the step of a validation evaluation, `test_<step>` for the test split.
  """
  directory = epath.Path(workdir) / EVAL_DIR / str(name)
  evaluator.write_json(directory)
  summary = {k: results.get(k) for k in coco.COCO_SUMMARY_NAMES}
  summary.update({k: v for k, v in results.items() if k not in summary})
  (directory / 'summary.json').write_text(
    json.dumps(to_json(summary), indent=2, sort_keys=False) + '\n'
  )
  return directory


def panel_images(panels: list[tuple[int, Any]]) -> dict[str, np.ndarray]:
  """`{'panels/<image_id>': uint8 [1, H, W, 3]}` for `writer.write_images`."""
  return {f'panels/{image_id}': np.asarray(image)[None] for image_id, image in panels}


def scalar_results(results: Mapping[str, Any], prefix: str = 'eval/') -> dict[str, float]:
  """The numeric entries of `results`, for the metric writers (`eval/...`)."""
  return {f'{prefix}{k}': v for k, v in metric_values(results).items()}


def format_results(results: Mapping[str, Any], class_names: Sequence[str], name: str = '') -> str:
  """The paper's Table-3 layout (AP@0.5 per class, in %) and the three mAPs.

  The other metrics are in the evaluation table printed before (`reporting.format_eval`)
  and in results.json.

  Args:
    results: from `Evaluator.run`.
    class_names: the table's class columns.
    name: the model name in the first column.

  Returns:
    A title line, the table and one line with mAP@0.5, mAP@0.75 and mAP@[0.5:0.95].
  """
  lines = [
    f'Final results, AP@0.5 per class in % ({results.get("split")} split, step '
    f'{results.get("step")}, {results.get("num_images")} images):'
  ]
  lines.append(coco.table(results, class_names, fmt='text', name=name))
  # The table shows mAP@0.5 and the per-class AP@0.5; the stricter averages follow.
  lines.append(
    '  '.join(
      f'{key}: ' + ('n/a' if results.get(key) is None else f'{results[key]:.4f}')
      for key in ('mAP@0.5', 'mAP@0.75', 'mAP@[0.5:0.95]')
      if key in results
    )
  )
  return '\n'.join(lines)


def write_final(
  results: Mapping[str, Any],
  workdir: str | epath.Path,
  class_names: Sequence[str],
  config: ml_collections.ConfigDict,
) -> None:
  """Process 0 writes `workdir/results.json`, prints the per-class table and the files."""
  if jax.process_index() != 0 or not results:
    return
  workdir = epath.Path(workdir)
  path = workdir / 'results.json'
  path.write_text(json.dumps(to_json(results), indent=2, sort_keys=True) + '\n')
  tasks = ','.join(tasks_lib.names(config))
  name = f'{config.model.variant} ({tasks or "no aux"})'
  print(format_results(results, class_names, name), flush=True)
  written = [
    ('results', path),
    ('config', workdir / CONFIG_FILE),
    ('metrics log', workdir / METRICS_FILE),
    ('COCO json', workdir / EVAL_DIR),
    ('TensorBoard logs', f'{workdir}  (tensorboard --logdir={workdir})'),
    ('checkpoints', workdir / 'checkpoints'),
    ('Figure-3 panels', workdir / 'panels'),
  ]
  for what, where in written:
    if not isinstance(where, str) and not where.exists():
      continue
    print(f'{what + ":":<18}{where}', flush=True)


def write_panels(panels: list[tuple[int, Any]], directory: str | epath.Path) -> None:
  """Writes each `(image id, PIL image)` panel to `directory/panel_<image id>.png`."""
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for image_id, panel in panels:
    with (directory / f'panel_{image_id}.png').open('wb') as f:
      panel.save(f, format='PNG')
