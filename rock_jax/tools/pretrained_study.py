"""Issue #11's pre-registered study: ROCK from a pretrained backbone, and the source handoff.

  python -m rock_jax.tools.pretrained_study --root=workdir/study11 \
      --out=workdir/study11/REPORT.md [--data_dir=DIR] [--parts=...] [--nice=N]

One command runs every part in order, each run only when its workdir lacks a finished
result (so the study resumes after an interruption and can run in parts, `--parts`):

1. `backbone`: `rock_jax.tools.pretrain_backbone` (§1): the demo's backbone pretrained
   on object crops of scenes no detection split contains -> `ROOT/backbone/backbone`.
2. `lr`: the detection baseline from that backbone for each rate of `LR_GRID`, seed 0,
   evaluated on the **validation** split; the best mAP@0.5 (ties: the smaller rate) is
   the rate of every later run (`ROOT/lr_selection.json`).
3. `table1` (§2, paper Tables 1 and 5): `VARIANTS` x seeds, evaluated once on the test
   split at the final step. A row may add a loss weighting (`rock+dwa`, workdir
   `ROOT/table1/rock+dwa/seedS`, `loss.weighting=dwa`; issue #16); the report pairs it
   with its fixed-weight variant.
4. `source` (§3): ROCK with depth and normals on `synthetic_rooms/source` from the §1
   backbone (the packaged config `synthetic_source`), seed 0.
5. `finetune` (§3): ROCK on the demo's set from the source checkpoint through
   `init_from` + `init_exclude` (`synthetic_finetune`), per seed; compared
   with `table1`'s ROCK runs, which are the same runs from the §1 backbone alone.
6. `diagnose`: `rock_jax.tools.diagnose` on seed 0 of every variant and of the
   fine-tuning (decoder output scale against conv5 and per-task gradient norms into the
   shared trunk, at initialisation and at the end; the training curves).
Then it writes the report (`--out`): every metric as mean ± std [min, max], the paired
per-seed differences with the number of seeds agreeing in sign, the paper's rows, the
diagnosis tables, commands, wall times and the results files.

Protocol (fixed before any test number, issue #11): every run is the demo's model and
data (`synthetic`: narrow ResNet-18 at output stride 16, ROCK block, SSD;
2500 training images seen at 144x192), batch 16, `STEPS` steps, Adam at a constant rate
then one 10x decay at `DECAY_FRACTIONS` of the steps (the paper's 30k of 40k, and 240k
of 320k for MLT), the §1 backbone with frozen BatchNorm statistics.

`--smoke` runs the same parts on the smoke configs (tiny renders, a few steps) for CI;
it refuses to write the repository's RESULTS.md.

Every run is `python -m rock_jax.main` (or a tool) in a subprocess, with its config given
by the short name of the packaged file (`rock_jax.configs.resolve`), so the study runs
from any directory and after a wheel install; every location is a flag (relative ones
are relative to the current directory).

Flags: `--root`, `--out`, `--seeds`, `--variants`, `--smoke`, `--data_dir` and `--nice`
mean what they mean for `rock_jax.tools.study` (`study.define_common_flags`), with this
driver's defaults; study's `--steps` and `--set` do not exist here (the budget is part of
the protocol). Own flags: `--backbone`, `--parts`, `--lrs`, `--processes`. Importing
this module defines no flags (`define_flags` does, when it runs as a script).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from rock_jax import cli
from rock_jax.tools import study

PARTS = ('backbone', 'lr', 'table1', 'source', 'finetune', 'diagnose')
VARIANTS = ('baseline', 'flat_mtl', 'rock_no_fusion', 'rock', 'rock_no_aux')
LOSS_PARTS = ('cls', 'loc', 'scene', 'depth', 'normals')  # Columns of the diagnosis tables.
VARIANT_NAMES = {**study.VARIANT_NAMES, 'rock_no_aux': 'ROCK w/o aux. sup.'}
# Table 5: the full ROCK architecture with every auxiliary loss weight 0.
VARIANT_OVERRIDES = {
  'rock_no_aux': (
    'model.variant=rock',
    'loss.weights.scene=0.0',
    'loss.weights.depth=0.0',
    'loss.weights.normals=0.0',
  ),
}
PAPER = {  # NYUv2 val (Tables 1 and 5), AP in %: mAP@0.5, mAP@0.75, mAP@[0.5:0.95].
  **study.PAPER_TABLE1,
  'rock_no_aux': (30.6, 15.6, 16.2),
}
PAPER_TABLE3 = {'rock': 39.8, 'finetune': 46.8}  # NYUv2 test mAP@0.5: ROCK (DNS), (DNS+MLT).

# ---------------------------------------------------------------- the protocol
# The packaged configs by short name (`rock_jax.configs.resolve`), `:smoke` appended.
TARGET_CONFIG = 'synthetic'
SOURCE_CONFIG = 'synthetic_source'
FINETUNE_CONFIG = 'synthetic_finetune'
STEPS = 500  # Per target run (demo: 1600 from scratch); sized for ~2.5 h on 2 cores.
SOURCE_STEPS = 1000  # Source pretraining (5000 source images, about 3 epochs).
DECAY_FRACTIONS = (0.75,)  # Paper: 5e-5 for 30k of 40k steps, then 5e-6.
LR_GRID = (1e-4, 3e-4, 1e-3)  # At most 3 values, chosen on validation for the baseline.
SEEDS = (0, 1, 2)
SMOKE_STEPS = 4
SELECTION = 'lr_selection.json'
PAIRS = (('rock', 'flat_mtl'), ('rock', 'baseline'), ('rock', 'rock_no_aux'))

FLAGS = flags.FLAGS
DEFAULT_ROOT = 'workdir/study11'
REPORT = 'REPORT.md'  # The default report, in ROOT.


def define_flags() -> None:
  """Defines this script's flags (only when it runs: importing the module defines none).

  --root, --out, --seeds, --variants, --smoke, --data_dir and --nice are
  `rock_jax.tools.study`'s, with this driver's defaults.
  """
  study.define_common_flags(
    root=DEFAULT_ROOT,
    seeds=SEEDS,
    variants=VARIANTS,
    variants_help=(
      f'Rows of the §2 table: variants of {VARIANTS}, each optionally with a loss '
      "weighting after a '+' (e.g. rock+dwa; issue #16)."
    ),
    report=REPORT,
  )
  flags.adopt_module_key_flags(study)  # Listed by --helpshort like this module's own.
  flags.DEFINE_string(
    'backbone', None, 'The §1 workdir (default ROOT/backbone); its `backbone/` is used.'
  )
  flags.DEFINE_list('parts', list(PARTS), f'Parts to run, of {PARTS}.')
  flags.DEFINE_list('lrs', None, 'Learning-rate grid (default LR_GRID).')
  flags.DEFINE_integer('processes', 2, 'Render processes of the §1 crops.')


@dataclasses.dataclass
class Run:
  """One training run: its config, overrides and workdir."""

  name: str
  config: str
  workdir: str
  steps: int
  overrides: tuple[str, ...]

  def args(self, data_dir: str | None) -> list[str]:
    """The trainer arguments after `python`."""
    args = ['-m', 'rock_jax.main', f'--config={self.config}', f'--workdir={self.workdir}']
    args += [f'--config.{o}' for o in self.overrides]
    if data_dir:
      args.append(f'--config.data.data_dir={data_dir}')
    return args


def boundaries(steps: int) -> tuple[int, ...]:
  """The 10x decay steps at `DECAY_FRACTIONS` of `steps` (each in [1, steps])."""
  return tuple(min(steps, max(1, round(f * steps))) for f in DECAY_FRACTIONS)


def common(steps: int, lr: float, seed: int) -> tuple[str, ...]:
  """Overrides every run shares: budget, schedule, rate, seed, frozen BN, final eval."""
  return (
    f'seed={seed}',
    f'train.num_steps={steps}',
    f'train.lr_boundaries={boundaries(steps)!r}',
    'train.lr_decay=0.1',
    'train.optimizer=adam',
    f'train.learning_rate={lr!r}',
    'train.eval_every=0',  # The final step only.
    'model.backbone.freeze_bn_stats=True',
  )


def suffix(smoke: bool) -> str:
  return ':smoke' if smoke else ''


def lr_run(root: str, backbone: str, lr: float, steps: int, smoke: bool) -> Run:
  """The baseline at rate `lr`, seed 0, evaluated on the validation split."""
  return Run(
    f'lr {lr:g}',
    TARGET_CONFIG + suffix(smoke),
    os.path.join(root, 'lr', f'lr{lr:g}'),
    steps,
    (
      *common(steps, lr, 0),
      'model.variant=baseline',
      'data.eval_split=validation',
      'data.test_split=',  # Choosing the rate never reads the test split.
      f'init_backbone={backbone}',
    ),
  )


def split_row(row: str) -> tuple[str, str | None]:
  """`study.split_row` over this study's variants (`rock_no_aux` too)."""
  return study.split_row(row, VARIANTS)


def row_name(row: str) -> str:
  """`study.row_name` with this study's variant names."""
  return study.row_name(row, VARIANT_NAMES)


def row_pairs(rows: Sequence[str]) -> list[tuple[str, str]]:
  """The reported pairs: `PAIRS`, then each weighted row against its fixed-weight variant."""
  weighted = [(row, split_row(row)[0]) for row in rows if split_row(row)[1]]
  return [*PAIRS, *weighted]


def table1_run(
  root: str, backbone: str, row: str, seed: int, lr: float, steps: int, smoke: bool
) -> Run:
  """One §2 run: a variant (optionally `+weighting`) from the §1 backbone, test split once."""
  variant, method = split_row(row)
  variant_overrides = VARIANT_OVERRIDES.get(variant, (f'model.variant={variant}',))
  return Run(
    f'{row} seed {seed}',
    TARGET_CONFIG + suffix(smoke),
    os.path.join(root, 'table1', row, f'seed{seed}'),
    steps,
    (
      *common(steps, lr, seed),
      *variant_overrides,
      *((f'loss.weighting={method}',) if method else ()),
      # One evaluation, at the last step, on validation; then the test split once.
      'data.eval_split=validation',
      'data.test_split=test',
      f'init_backbone={backbone}',
    ),
  )


def source_run(root: str, backbone: str, lr: float, steps: int, smoke: bool) -> Run:
  """§3 source pretraining: ROCK (depth, normals) on the source set from the §1 backbone."""
  return Run(
    'source seed 0',
    SOURCE_CONFIG + suffix(smoke),
    os.path.join(root, 'source', 'seed0'),
    steps,
    (*common(steps, lr, 0), f'init_backbone={backbone}'),
  )


def finetune_run(root: str, source: str, seed: int, lr: float, steps: int, smoke: bool) -> Run:
  """§3 fine-tuning on the target from the source checkpoint (init_from + init_exclude)."""
  return Run(
    f'finetune seed {seed}',
    FINETUNE_CONFIG + suffix(smoke),
    os.path.join(root, 'finetune', f'seed{seed}'),
    steps,
    (
      *common(steps, lr, seed),
      'data.eval_split=validation',
      'data.test_split=test',
      f'init_from={source}',
    ),
  )


def _subprocess(args: list[str], nice: int) -> float:
  prefix = ['nice', '-n', str(nice)] if nice else []
  start = time.time()
  done = subprocess.run([*prefix, sys.executable, *args], check=False)
  if done.returncode != 0:
    raise SystemExit(f'Failed ({done.returncode}): {shlex.join(["python", *args])}')
  return time.time() - start


def ensure(run: Run, data_dir: str | None, nice: int) -> tuple[dict[str, Any], float | None]:
  """The run's results, training it first unless its `results.json` is final."""
  results = study.read_results(run.workdir, run.steps)
  info_path = os.path.join(run.workdir, study.RUN_INFO)
  if results is not None:
    print(f'{run.name}: reusing {run.workdir}', flush=True)
    seconds = None
    if os.path.exists(info_path):
      with open(info_path) as f:
        seconds = json.load(f).get('wall_seconds')
    return results, seconds
  print(f'{run.name}: training {run.steps} steps in {run.workdir}', flush=True)
  args = run.args(data_dir)
  seconds = _subprocess(args, nice)
  results = study.read_results(run.workdir, run.steps)
  if results is None:
    raise SystemExit(f'No results.json of step {run.steps} in {run.workdir}.')
  with open(info_path, 'w') as f:
    json.dump({'command': shlex.join(['python', *args]), 'wall_seconds': seconds}, f)
  return results, seconds


def ensure_diagnosis(run: Run, data_dir: str | None, nice: int) -> dict[str, Any]:
  """`rock_jax.tools.diagnose` of a finished run (reused when its JSON exists)."""
  path = os.path.join(run.workdir, 'diagnosis.json')
  if not os.path.exists(path):
    print(f'{run.name}: diagnosis', flush=True)
    args = run.args(data_dir)
    args[1] = 'rock_jax.tools.diagnose'
    _subprocess([*args, f'--out={path}'], nice)
  with open(path) as f:
    return json.load(f)


def select_lr(results: Mapping[float, Mapping[str, Any]]) -> float:
  """The rate with the best validation mAP@0.5; ties go to the smaller rate."""
  return max(sorted(results), key=lambda lr: (results[lr]['mAP@0.5'], -lr))


def paired(
  a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], key: str = 'mAP@0.5'
) -> dict[str, Any] | None:
  """Per-seed differences a - b (same seed order), their summary and sign agreement."""
  diffs = [x[key] - y[key] for x, y in zip(a, b, strict=True) if key in x and key in y]
  if not diffs:
    return None
  stats = study.seed_statistics(diffs)
  positive = sum(d > 0 for d in diffs)
  negative = sum(d < 0 for d in diffs)
  return {'diffs': diffs, 'stats': stats, 'positive': positive, 'negative': negative}


def _paired_line(label: str, pair: Mapping[str, Any] | None) -> str:
  if pair is None:
    return f'| {label} | n/a | n/a | n/a |'
  per_seed = ', '.join(f'{100 * d:+.1f}' for d in pair['diffs'])
  n, positive, negative = len(pair['diffs']), pair['positive'], pair['negative']
  if positive > negative:
    agree = f'{positive} of {n} (a > b)'
  elif negative > positive:
    agree = f'{negative} of {n} (a < b)'
  else:
    agree = f'{positive} > and {negative} < of {n} (no majority)'

  return f'| {label} | {study.format_cell(pair["stats"], 100.0, 1)} | {per_seed} | {agree} |'


def _metrics_table(rows: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[str]:
  headers = ['Model', 'seeds', *(m[1] for m in study.METRICS)]
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join([':---'] + ['---:'] * 8) + '|']
  for label, results in rows:
    cells = [
      study.format_cell(study.seed_statistics([r.get(key) for r in results]), scale, digits)
      for key, _, scale, digits, _ in study.METRICS
    ]
    lines.append(f'| {label} | {len(results)} | ' + ' | '.join(cells) + ' |')
  return lines


def _eval_ratio(scale: Mapping[str, Any]) -> str:
  ratio = scale.get('eval_mode', {}).get('ratio_sum_to_conv5')
  return '-' if ratio is None else f'{ratio:.3g}'


def _diagnosis_tables(diagnoses: Mapping[str, Mapping[str, Any]]) -> list[str]:
  lines = [
    '### Decoder output scale against conv5 (RMS on the first training batch; training mode, '
    'and eval mode with the BatchNorm running statistics)',
    '',
    '| Run | conv5 init | decoders init | ratio init | conv5 end | decoders end | ratio end '
    '| ratio init (eval) | ratio end (eval) |',
    '|:---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for name, d in diagnoses.items():
    i, e = d['init']['scale'], d['end']['scale']
    if 'ratio_sum_to_conv5' not in i:
      continue
    lines.append(
      f'| {name} | {i["conv5_rms"]:.3g} | {i["decoders_sum_rms"]:.3g} | '
      f'{i["ratio_sum_to_conv5"]:.3g} | {e["conv5_rms"]:.3g} | {e["decoders_sum_rms"]:.3g} | '
      f'{e["ratio_sum_to_conv5"]:.3g} | {_eval_ratio(i)} | {_eval_ratio(e)} |'
    )
  lines += [
    '',
    '### Gradient norm each loss term sends into the shared backbone (weighted, init -> end)',
    '',
    '| Run | ' + ' | '.join(LOSS_PARTS) + ' |',
    '|:---|' + '---:|' * 5,
  ]
  for name, d in diagnoses.items():
    cells = []
    for part in LOSS_PARTS:
      gi, ge = d['init']['grad'].get(part), d['end']['grad'].get(part)
      if gi is None or (part not in ('cls', 'loc') and d['variant'] == 'baseline'):
        cells.append('-')
        continue
      cos = ge.get('cosine_to_detection')
      cos_text = f' (cos {cos:+.2f})' if cos is not None else ''
      cells.append(f'{gi["backbone_norm"]:.3g} -> {ge["backbone_norm"]:.3g}{cos_text}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += [
    '',
    "(cos: cosine between the task term's backbone gradient and the detection (cls + loc) "
    'one at the end.)',
    '',
    '### Training loss per task (mean of the logged windows: first, middle, last)',
    '',
    '| Run | ' + ' | '.join(LOSS_PARTS) + ' |',
    '|:---|' + '---:|' * 5,
  ]
  for name, d in diagnoses.items():
    cells = []
    for part in LOSS_PARTS:
      curve = d.get('curves', {}).get(f'train/loss/{part}')
      if not curve or (part not in ('cls', 'loc') and d['variant'] == 'baseline'):
        cells.append('-')
        continue
      pick = [curve[0][1], curve[len(curve) // 2][1], curve[-1][1]]
      cells.append(' / '.join(f'{v:.3g}' for v in pick))
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return lines


def write_report(path: str, report: Mapping[str, Any]) -> str:
  """Writes the study's markdown report and returns its text."""
  lines = [
    '# Issue #11 study: ROCK from a pretrained backbone, and the source -> target handoff',
    '',
    'Written by `rock_jax/tools/pretrained_study.py`; every number comes from a '
    '`results.json` or `diagnosis.json` listed at the end.',
    '',
    *_protocol_lines(report),
  ]
  if 'table1' in report:
    lines += _table1_lines(report['table1'])
  if 'finetune' in report and 'rock' in report.get('table1', {}):
    lines += _handoff_lines(report)
  if report.get('diagnoses'):
    lines += ['', '## Diagnosis measurements (seed 0)', '', *_diagnosis_tables(report['diagnoses'])]
  lines += ['', '## Reproduce', '', '```bash', report['command'], '```', '', '## Results files', '']
  lines += [f'- {name}: `{p}`' for name, p in report['files']]
  text = '\n'.join(lines) + '\n'
  with open(path, 'w') as f:
    f.write(text)
  return text


def _protocol_lines(report: Mapping[str, Any]) -> list[str]:
  """The protocol section: configs, budget, schedule, seeds, backbone, rate, wall times."""
  lines = [
    '## Protocol',
    '',
    f'- Target runs: `{report["target_config"]}`, {report["steps"]} steps x batch '
    f'{report["batch_size"]}, Adam at a constant rate then 10x at steps '
    f'{report["boundaries"]}, seeds {report["seeds"]}, the §1 backbone with BatchNorm '
    'statistics frozen, final checkpoint evaluated once on the test split.',
    f'- §1 backbone: {report["backbone_line"]}',
    f'- Learning rate: chosen on the validation split for the baseline (seed 0) among '
    f'{report["lr_grid"]}: validation mAP@0.5 '
    + ', '.join(f'{lr:g}: {100 * v:.1f}' for lr, v in report['lr_scores'].items())
    + f' -> **{report["lr"]:g}**, then unchanged for every run.',
    f'- §3: source pretraining `{report["source_config"]}` for {report["source_steps"]} steps '
    f'(seed 0), fine-tuning `{report["finetune_config"]}` with `init_from` + `init_exclude` '
    f'{report["init_exclude"]} for {report["steps"]} steps per seed.',
  ]
  if report.get('wall'):
    lines.append(
      f'- Wall time (this machine, {os.cpu_count()} cores): '
      + ', '.join(f'{k} {v / 60:.1f} min' for k, v in report['wall'].items())
      + '.'
    )
  return lines


def _table1_lines(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
  """§2: the metrics table, the paired per-seed differences and the paper's rows."""
  lines = [
    '',
    '## §2: Table 1 and Table 5 analog (synthetic test split, AP in %)',
    '',
    *_metrics_table([(row_name(v), runs[v]) for v in runs]),
    '',
    'Paired per-seed differences of mAP@0.5 (a - b, points):',
    '',
    '| a - b | mean ± std [min, max] | per seed | seeds agreeing in sign |',
    '|:---|---:|---|---|',
  ]
  for a, b in row_pairs(list(runs)):
    if a in runs and b in runs:
      label = f'{row_name(a)} - {row_name(b)}'
      lines.append(_paired_line(label, paired(runs[a], runs[b])))
  paper = '; '.join(
    f'{VARIANT_NAMES[v]} {PAPER[v][0]:.1f} / {PAPER[v][1]:.1f} / {PAPER[v][2]:.1f}'
    for v in runs
    if v in PAPER
  )
  lines += [
    '',
    f'Paper (NYUv2 val, Tables 1 and 5): {paper} (mAP@0.5 / @0.75 / @[0.5:0.95]).',
  ]
  return lines


def _handoff_lines(report: Mapping[str, Any]) -> list[str]:
  """§3: fine-tuning from the source run against ROCK from the §1 backbone alone."""
  ft, base = report['finetune'], report['table1']['rock']
  lines = [
    '',
    '## §3: Table 3 analog (source pretraining -> fine-tuning, synthetic test split)',
    '',
    *_metrics_table([('ROCK from the §1 backbone alone', base), ('ROCK source -> target', ft)]),
    '',
    '| a - b | mean ± std [min, max] | per seed | seeds agreeing in sign |',
    '|:---|---:|---|---|',
    _paired_line('source -> target - no source', paired(ft, base)),
    '',
    f'Paper (NYUv2 test, Table 3): ROCK (DNS) {PAPER_TABLE3["rock"]:.1f}, ROCK (DNS+MLT) '
    f'{PAPER_TABLE3["finetune"]:.1f} mAP@0.5 (+7.0).',
  ]
  if report.get('source_results'):
    s = report['source_results']
    lines.append(
      f'Source run on its own validation split: mAP@0.5 {100 * s.get("mAP@0.5", 0):.1f}, '
      f'depth RMSE {s.get("depth_rmse", float("nan")):.3f} m.'
    )
  return lines


def main(argv: Sequence[str]) -> None:
  """Runs the missing parts of the study, then writes the report."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  smoke = FLAGS.smoke
  root = FLAGS.root
  out = FLAGS.out or os.path.join(root, REPORT)
  if smoke and study.is_committed_results(out):
    raise app.UsageError('A smoke study must not write the repository RESULTS.md.')
  parts = list(FLAGS.parts)
  unknown = [p for p in parts if p not in PARTS]
  if unknown:
    raise app.UsageError(f'Unknown parts {unknown}; choose from {PARTS}.')
  variants = list(FLAGS.variants)
  try:
    for row in variants:
      split_row(row)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  seeds = [int(s) for s in FLAGS.seeds]
  lrs = [float(x) for x in (FLAGS.lrs or LR_GRID)]
  steps = SMOKE_STEPS if smoke else STEPS
  source_steps = SMOKE_STEPS if smoke else SOURCE_STEPS
  data_dir, nice = FLAGS.data_dir, FLAGS.nice
  os.makedirs(root, exist_ok=True)
  wall: dict[str, float] = {}
  files: list[tuple[str, str]] = []

  def timed(key: str, seconds: float | None) -> None:
    if seconds:
      wall[key] = wall.get(key, 0.0) + seconds

  # §1: the backbone.
  backbone_workdir = FLAGS.backbone or os.path.join(root, 'backbone')
  backbone = os.path.join(backbone_workdir, 'backbone')
  metrics_path = os.path.join(backbone_workdir, 'metrics.json')
  if 'backbone' in parts and not os.path.exists(metrics_path):
    args = [
      '-m',
      'rock_jax.tools.pretrain_backbone',
      f'--config={TARGET_CONFIG}{suffix(smoke)}',
      f'--workdir={backbone_workdir}',
      f'--processes={FLAGS.processes}',
    ] + (['--smoke'] if smoke else [])
    print(f'backbone: pretraining in {backbone_workdir}', flush=True)
    timed('backbone', _subprocess(args, nice))
  if not os.path.exists(metrics_path):
    raise SystemExit(f'No pretrained backbone in {backbone_workdir} (run --parts=backbone).')
  with open(metrics_path) as f:
    backbone_metrics = json.load(f)
  files.append(('§1 backbone metrics', metrics_path))
  report: dict[str, Any] = {
    'target_config': TARGET_CONFIG + suffix(smoke),
    'source_config': SOURCE_CONFIG + suffix(smoke),
    'finetune_config': FINETUNE_CONFIG + suffix(smoke),
    'steps': steps,
    'source_steps': source_steps,
    'boundaries': boundaries(steps),
    'seeds': seeds,
    'lr_grid': lrs,
    'backbone_line': (
      f'held-out top-1 {100 * backbone_metrics["held_out_top1"]:.1f} % on '
      f'{backbone_metrics["num_held_out_crops"]} crops (majority class '
      f'{100 * backbone_metrics["held_out_majority_class_rate"]:.1f} %), '
      f'{backbone_metrics["steps"]} steps, `{backbone_workdir}`'
    ),
    'files': files,
    'wall': wall,
  }
  from rock_jax.configs import synthetic  # noqa: PLC0415

  report['batch_size'] = int(synthetic.get_config('smoke' if smoke else None).train.batch_size)
  timed('backbone', backbone_metrics.get('wall_seconds') if 'backbone' not in wall else None)

  # The learning rate, on the validation split.
  selection_path = os.path.join(root, SELECTION)
  scores: dict[float, dict] = {}
  for lr in lrs:
    run = lr_run(root, backbone, lr, steps, smoke)
    if 'lr' in parts:
      results, seconds = ensure(run, data_dir, nice)
      timed('lr', seconds)
    else:
      results = study.read_results(run.workdir, steps)
    if results is not None:
      if results.get('split') not in (None, 'validation'):
        raise SystemExit(f'{run.workdir}: the rate must be chosen on validation.')
      scores[lr] = results
      files.append((run.name + ' (validation)', os.path.join(run.workdir, 'results.json')))
  if len(scores) < len(lrs):
    print('Learning-rate selection incomplete: stopping (run --parts=lr).')
    return
  lr = select_lr(scores)
  with open(selection_path, 'w') as f:
    json.dump(
      {
        'grid': lrs,
        'validation_mAP@0.5': {str(k): v['mAP@0.5'] for k, v in scores.items()},
        'chosen': lr,
      },
      f,
    )
  report['lr'] = lr
  report['lr_scores'] = {k: v['mAP@0.5'] for k, v in scores.items()}

  # §2.
  table1: dict[str, list[dict]] = {}
  table1_runs: dict[str, list[Run]] = {}
  for seed in seeds:
    for variant in variants:
      run = table1_run(root, backbone, variant, seed, lr, steps, smoke)
      if 'table1' in parts:
        results, seconds = ensure(run, data_dir, nice)
        timed('table1', seconds)
      else:
        results = study.read_results(run.workdir, steps)
      if results is not None:
        table1.setdefault(variant, []).append(results)
        table1_runs.setdefault(variant, []).append(run)
        files.append((run.name, os.path.join(run.workdir, 'results.json')))
  complete = {v: r for v, r in table1.items() if len(r) == len(seeds)}
  if complete:
    report['table1'] = {v: complete[v] for v in variants if v in complete}

  # §3.
  from rock_jax.configs import synthetic_finetune  # noqa: PLC0415

  # The protocol's line, whether or not §3 has run yet.
  report['init_exclude'] = tuple(synthetic_finetune.get_config().init_exclude)
  source = source_run(root, backbone, lr, source_steps, smoke)
  source_results = study.read_results(source.workdir, source_steps)
  if 'source' in parts:
    source_results, seconds = ensure(source, data_dir, nice)
    timed('source', seconds)
  if source_results is not None:
    report['source_results'] = source_results
    files.append(
      (source.name + ' (source validation)', os.path.join(source.workdir, 'results.json'))
    )
    finetune, finetune_runs = [], []
    for seed in seeds:
      run = finetune_run(root, source.workdir, seed, lr, steps, smoke)
      if 'finetune' in parts:
        results, seconds = ensure(run, data_dir, nice)
        timed('finetune', seconds)
      else:
        results = study.read_results(run.workdir, steps)
      if results is not None:
        finetune.append(results)
        finetune_runs.append(run)
        files.append((run.name, os.path.join(run.workdir, 'results.json')))
    if len(finetune) == len(seeds):
      report['finetune'] = finetune
  else:
    finetune_runs = []

  # Diagnosis of seed 0 (the first seed) of every run family.
  diagnose_runs = [(row_name(v), table1_runs[v][0]) for v in variants if v in table1_runs]
  if finetune_runs:
    diagnose_runs.append(('ROCK source -> target', finetune_runs[0]))
  diagnoses = {}
  for name, run in diagnose_runs:
    path = os.path.join(run.workdir, 'diagnosis.json')
    if 'diagnose' in parts:
      start = time.time()
      diagnoses[name] = ensure_diagnosis(run, data_dir, nice)
      timed('diagnose', time.time() - start)
    elif os.path.exists(path):
      with open(path) as f:
        diagnoses[name] = json.load(f)
    if name in diagnoses:
      files.append((f'{name} diagnosis', path))
  report['diagnoses'] = diagnoses

  flags_used = [f'--root={root}', f'--out={out}']
  if FLAGS.backbone:
    flags_used.append(f'--backbone={FLAGS.backbone}')
  if data_dir:
    flags_used.append(f'--data_dir={data_dir}')
  if smoke:
    flags_used.append('--smoke')
  if FLAGS['seeds'].present:
    flags_used.append(f'--seeds={",".join(map(str, seeds))}')
  if FLAGS['variants'].present:
    flags_used.append(f'--variants={",".join(variants)}')
  if FLAGS.lrs:
    flags_used.append(f'--lrs={",".join(f"{x:g}" for x in lrs)}')
  report['command'] = shlex.join(['python', '-m', 'rock_jax.tools.pretrained_study', *flags_used])
  write_report(out, report)
  print(f'Wrote {out}', flush=True)


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  _cli()
