"""The Table-1 ablation on the synthetic rooms: variants x seeds, one CPU budget each.

  python -m rock_jax.tools.study [--steps=N] [--seeds=0,1,2] \
      [--variants=baseline,flat_mtl,rock_no_fusion,rock] [--out=FILE] \
      [--root=workdir/study] [--smoke] [--data_dir=DIR] [--set=model.dtype=float32 ...]

Every run is the real trainer in its own process,
`python -m rock_jax.main --config=synthetic --config.model.variant=V --config.seed=S
--config.train.num_steps=N --workdir=ROOT/stepsN/V/seedS` (the packaged config by its
short name, so the study runs from any directory and after a wheel install), with the
same step budget (and so the same number of training images) for every variant. The
learning-rate boundaries of the config scale with the budget (a boundary at 80 % of
the config's steps stays at 80 %). Only the final validation evaluation runs, then the
test split once on that final checkpoint (the trainer's `results.json`). The study then
reads each `DIR/results.json` and writes a markdown report (default `ROOT/RESULTS.md`;
the committed `RESULTS.md` only with `--out=RESULTS.md`, and never with `--smoke`): mean,
standard deviation and min-max over seeds per metric, per-class AP@0.5, the exact
commands, and the paper's Table 1 beside it. Every location (`--root`, `--out`,
`--data_dir`) is a flag; relative ones are relative to the current directory.
A figure of the learning curves of the first seed of every variant
(`rock_jax.tools.plot`, from the runs' `metrics.jsonl`) goes beside the report
(`RESULTS_curves.png` for `--out=RESULTS.md`).

A row may also name a loss weighting (`rock_jax.weighting`) after a `+`:
`--variants=rock,rock+uncertainty,rock+dwa,rock+pcgrad` adds ROCK trained with each
weighting (`--config.loss.weighting=W`, workdir `.../rock+W/seedS`) beside the
fixed-weight ROCK.

A run whose workdir already holds a `results.json` of the requested step is reused,
so an interrupted study resumes where it stopped (the trainer itself resumes an
interrupted run from its last checkpoint). `--smoke` uses
`synthetic:smoke` (tiny images, a few steps): CI runs it that way.

Importing this module defines no flags: `define_flags` does, when it runs as a script
(`rock_jax.tools.pretrained_study` shares `define_common_flags`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from rock_jax import cli, weighting
from rock_jax.configs import synthetic
from rock_jax.tools import plot

VARIANTS = ('baseline', 'flat_mtl', 'rock_no_fusion', 'rock')
VARIANT_NAMES = {
  'baseline': 'Detection baseline',
  'flat_mtl': 'Flat MTL baseline',
  'rock_no_fusion': 'ROCK w/o fusion',
  'rock': 'ROCK',
}
# Paper Table 1 (NYUv2 val, AP in %): mAP@0.5, mAP@0.75, mAP@[0.5:0.95].
PAPER_TABLE1 = {
  'baseline': (31.2, 15.8, 16.2),
  'flat_mtl': (34.3, 16.0, 17.4),
  'rock_no_fusion': (35.7, 16.2, 17.4),
  'rock': (37.6, 17.1, 18.5),
}
# (results.json key, column header, scale, digits, lower is better).
METRICS = (
  ('mAP@0.5', 'mAP@0.5 (%)', 100.0, 1, False),
  ('mAP@0.75', 'mAP@0.75 (%)', 100.0, 1, False),
  ('mAP@[0.5:0.95]', 'mAP@[0.5:0.95] (%)', 100.0, 1, False),
  ('scene_accuracy', 'scene acc. (%)', 100.0, 1, False),
  ('depth_rmse', 'depth RMSE (m)', 1.0, 3, True),
  ('depth_rel', 'depth rel.', 1.0, 3, True),
  ('normals_mean_angle', 'normals error (deg)', 1.0, 1, True),
)
RUN_INFO = 'study_run.json'  # Per-run sidecar: command and wall time.
COMMITTED_RESULTS = 'RESULTS.md'  # The name of a project's committed results table.
FLAGS = flags.FLAGS


def split_row(row: str, variants: Sequence[str] = VARIANTS) -> tuple[str, str | None]:
  """`'rock+dwa'` -> `('rock', 'dwa')`, `'rock'` -> `('rock', None)`; checks both names.

  Args:
    row: a variant, optionally followed by `+WEIGHTING`.
    variants: the variants the caller's study knows.
  """
  variant, _, method = row.partition('+')
  if variant not in variants:
    raise ValueError(f'Unknown variant {variant!r} in row {row!r}; choose from {variants}.')
  if method and method not in weighting.METHODS:
    raise ValueError(f'Unknown weighting {method!r} in row {row!r}; one of {weighting.METHODS}.')
  return variant, method or None


def row_name(row: str, names: Mapping[str, str] = VARIANT_NAMES) -> str:
  """The table name of a row, e.g. 'ROCK (dwa weighting)'; `names` maps the variants."""
  variant, method = split_row(row, tuple(names))
  name = names[variant]
  return f'{name} ({method} weighting)' if method else name


def define_common_flags(
  *, root: str, seeds: Sequence[int], variants: Sequence[str], variants_help: str, report: str
) -> None:
  """Defines the flags both study drivers take (this one and `pretrained_study`).

  Args:
    root: the default of `--root`.
    seeds: the default of `--seeds`.
    variants: the default of `--variants`.
    variants_help: the help of `--variants`.
    report: the default report's name in ROOT (the help of `--out`).
  """
  flags.DEFINE_string('root', root, 'Parent directory of the run workdirs.')
  flags.DEFINE_string(
    'out',
    None,
    f'The markdown report (default: ROOT/{report}). The committed RESULTS.md is written only '
    'when named here, and never with --smoke.',
  )
  flags.DEFINE_list('seeds', [str(s) for s in seeds], 'Seeds (config.seed) per variant.')
  flags.DEFINE_list('variants', list(variants), variants_help)
  flags.DEFINE_bool('smoke', False, 'Use the smoke configs (synthetic:smoke, ...; CI).')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: the TFDS one).')
  flags.DEFINE_integer('nice', 0, 'Run the trainings under `nice -n NICE` (0: no).')


def define_flags() -> None:
  """Defines this script's flags (only when it runs: importing the module defines none)."""
  define_common_flags(
    root='workdir/study',
    seeds=(0, 1, 2),
    variants=VARIANTS,
    variants_help='Rows in table order: VARIANT or VARIANT+WEIGHTING (rock+dwa).',
    report=COMMITTED_RESULTS,
  )
  flags.DEFINE_integer('steps', None, 'Train steps per run (default: the config).')
  flags.DEFINE_multi_string(
    'set', [], 'Extra config override FIELD=VALUE for every run (`--config.` is prepended).'
  )


def config_arg(smoke: bool) -> str:
  """The `--config` value of the runs."""
  # Short names of the packaged configs: the runs work from any directory and after a
  # wheel install (`rock_jax.configs.resolve`).
  return 'synthetic:smoke' if smoke else 'synthetic'


def is_committed_results(path: str) -> bool:
  """Whether `path` is a project's committed results table.

  That is a `RESULTS.md` in the current directory or beside a `pyproject.toml` (the root
  of a checkout), wherever the package itself is installed.
  """
  for candidate in {os.path.abspath(path), os.path.realpath(path)}:
    folder, name = os.path.split(candidate)
    if name != COMMITTED_RESULTS:
      continue
    if folder == os.path.realpath(os.getcwd()) or folder == os.path.abspath(os.getcwd()):
      return True
    if os.path.exists(os.path.join(folder, 'pyproject.toml')):
      return True
  return False


def report_path(out: str | None, root: str, smoke: bool) -> str:
  """Where the report goes: `out`, else `root/RESULTS.md`.

  Raises:
    app.UsageError: a smoke study aimed at the committed `RESULTS.md` (of a checkout or
      of the current directory, `is_committed_results`): smoke numbers must never
      replace the real table.
  """
  path = out or os.path.join(root, COMMITTED_RESULTS)
  if smoke and is_committed_results(path):
    raise app.UsageError(f'--smoke never writes {path} (the committed results): pass --out=FILE.')
  return path


def scaled_boundaries(boundaries: Sequence[int], config_steps: int, steps: int) -> tuple:
  """Moves the learning-rate boundaries to the same fractions of a new budget.

  Args:
    boundaries: `config.train.lr_boundaries`.
    config_steps: `config.train.num_steps` they were set for.
    steps: the study's budget.

  Returns:
    The boundaries at the same fractions of `steps`, each in [1, steps].
  """
  return tuple(min(steps, max(1, round(int(b) * steps / config_steps))) for b in boundaries)


def run_workdir(root: str, steps: int, variant: str, seed: int) -> str:
  """The workdir of one run (the budget is part of it, so budgets never mix)."""
  return os.path.join(root, f'steps{steps}', variant, f'seed{seed}')


def run_command(
  *,
  smoke: bool,
  variant: str,
  seed: int,
  steps: int,
  boundaries: Sequence[int],
  workdir: str,
  data_dir: str | None = None,
  overrides: Sequence[str] = (),
) -> list[str]:
  """The trainer command line of one run (without the interpreter).

  Args:
    smoke: use the smoke config.
    variant: `config.model.variant`, or a row `VARIANT+WEIGHTING` (`split_row`).
    seed: `config.seed`.
    steps: `config.train.num_steps`.
    boundaries: `config.train.lr_boundaries` for this budget.
    workdir: the run's workdir.
    data_dir: `config.data.data_dir`, if set.
    overrides: extra `FIELD=VALUE` config overrides.

  Returns:
    The arguments after `python`.
  """
  variant, method = split_row(variant)
  args = [
    '-m',
    'rock_jax.main',
    f'--config={config_arg(smoke)}',
    f'--workdir={workdir}',
    f'--config.model.variant={variant}',
    f'--config.seed={seed}',
    f'--config.train.num_steps={steps}',
    f'--config.train.lr_boundaries={tuple(boundaries)!r}',
    '--config.train.eval_every=0',  # The final evaluation only.
  ]
  if method:
    args.append(f'--config.loss.weighting={method}')
  if data_dir:
    args.append(f'--config.data.data_dir={data_dir}')
  args += [f'--config.{o}' for o in overrides]
  return args


def read_results(workdir: str, steps: int) -> dict[str, Any] | None:
  """The run's `results.json` if it is complete (evaluated at `steps`), else None."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get('step') == steps else None


def seed_statistics(values: Sequence[float | None]) -> dict[str, float] | None:
  """Mean, sample standard deviation, min and max of the non-None values.

  Args:
    values: one value per seed (None where the metric does not apply).

  Returns:
    `{'n', 'mean', 'std', 'min', 'max'}` (std 0 for a single value), or None if
    no value is given.
  """
  present = [float(v) for v in values if v is not None]
  if not present:
    return None
  n = len(present)
  mean = sum(present) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else 0.0
  return {'n': n, 'mean': mean, 'std': std, 'min': min(present), 'max': max(present)}


def format_cell(stats: Mapping[str, float] | None, scale: float, digits: int) -> str:
  """`mean ± std [min, max]` in the metric's unit, `n/a` when absent."""
  if stats is None:
    return 'n/a'
  f = lambda v: f'{scale * v:.{digits}f}'
  if stats['n'] == 1:
    return f(stats['mean'])
  return f'{f(stats["mean"])} ± {f(stats["std"])} [{f(stats["min"])}, {f(stats["max"])}]'


def class_names(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """The classes of the `AP@0.5/<class>` entries, in the order of the first results."""
  names: list[str] = []
  for r in results:
    for key in r:
      if key.startswith('AP@0.5/') and key[7:] not in names:
        names.append(key[7:])
  return names


def metrics_table(variants: Sequence[str], runs: Mapping[str, Sequence[Mapping]]) -> str:
  """The main markdown table: one row per variant, mean ± std [min, max] per metric."""
  headers = ['Model', 'seeds', *(m[1] for m in METRICS)]
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join([':---'] + ['---:'] * 8) + '|']
  for variant in variants:
    results = runs[variant]
    cells = [
      format_cell(seed_statistics([r.get(key) for r in results]), scale, digits)
      for key, _, scale, digits, _ in METRICS
    ]
    lines.append(f'| {row_name(variant)} | {len(results)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def per_class_table(variants: Sequence[str], runs: Mapping[str, Sequence[Mapping]]) -> str:
  """AP@0.5 per class (mean over seeds, in %), the paper's Table-3 layout."""
  names = class_names([r for v in variants for r in runs[v]])
  lines = [
    '| Model | mAP | ' + ' | '.join(names) + ' |',
    '|' + '|'.join([':---'] + ['---:'] * (len(names) + 1)) + '|',
  ]
  for variant in variants:
    cells = []
    for key in ['mAP@0.5', *(f'AP@0.5/{c}' for c in names)]:
      stats = seed_statistics([r.get(key) for r in runs[variant]])
      cells.append('-' if stats is None else f'{100 * stats["mean"]:.1f}')
    lines.append(f'| {row_name(variant)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def ordering(variants: Sequence[str], runs: Mapping[str, Sequence[Mapping]]) -> str:
  """The variants by decreasing mean mAP@0.5, e.g. 'ROCK > Flat MTL baseline'."""
  means = {}
  for variant in variants:
    stats = seed_statistics([r.get('mAP@0.5') for r in runs.get(variant, ())])
    if stats is not None:
      means[variant] = stats['mean']
  ranked = sorted(means, key=lambda v: -means[v])
  return ' > '.join(row_name(v) for v in ranked)


def paper_table(variants: Sequence[str]) -> str:
  """The paper's Table 1 rows for `variants` (NYUv2 val, AP in %)."""
  lines = [
    '| Model | mAP@0.5 | mAP@0.75 | mAP@[0.5:0.95] |',
    '|:---|---:|---:|---:|',
  ]
  for variant in variants:
    if variant in PAPER_TABLE1:
      a, b, c = PAPER_TABLE1[variant]
      lines.append(f'| {VARIANT_NAMES[variant]} | {a:.1f} | {b:.1f} | {c:.1f} |')
  return '\n'.join(lines)


def write_report(
  path: str,
  *,
  variants: Sequence[str],
  runs: Mapping[str, Sequence[Mapping[str, Any]]],
  workdirs: Mapping[str, Sequence[str]],
  wall: Mapping[str, Sequence[float | None]],
  steps: int,
  config_steps: int,
  batch_size: int,
  image_size: Sequence[int],
  study_command: str,
  full_command: str,
  example_command: str,
  seeds: Sequence[int],
  figure: str | None = None,
) -> str:
  """Writes the markdown report and returns its text.

  Args:
    path: the output file.
    variants: table order.
    runs: per variant, the results of each seed (from `results.json`).
    workdirs: per variant, the workdir of each seed.
    wall: per variant, the wall seconds of each seed's run (None if reused).
    steps: the study's budget per run.
    config_steps: the config's `train.num_steps` (the demo budget).
    batch_size: `train.batch_size`.
    image_size: `data.image_size`.
    study_command: the command that reproduces this report.
    full_command: the command of the full-budget study.
    example_command: the trainer command of one run.
    seeds: the seeds.
    figure: the learning-curves PNG, relative to the report (None: no figure).

  Returns:
    The markdown text.
  """
  lines = [
    *protocol_lines(
      variants,
      runs,
      wall,
      steps=steps,
      config_steps=config_steps,
      batch_size=batch_size,
      image_size=image_size,
      seeds=seeds,
    ),
    '',
    *results_lines(variants, runs),
    *figure_lines(figure),
    *reproduce_lines(study_command, full_command, example_command, config_steps),
    *results_files_lines(variants, seeds, workdirs),
  ]
  text = '\n'.join(lines) + '\n'
  with open(path, 'w') as f:
    f.write(text)
  return text


def protocol_lines(
  variants: Sequence[str],
  runs: Mapping[str, Sequence[Mapping[str, Any]]],
  wall: Mapping[str, Sequence[float | None]],
  *,
  steps: int,
  config_steps: int,
  batch_size: int,
  image_size: Sequence[int],
  seeds: Sequence[int],
) -> list[str]:
  """The report's title and protocol: evaluation split, budget, seeds, spread, wall time."""
  split = next((r.get('split') for v in variants for r in runs[v]), '?')
  images = next((r.get('num_images') for v in variants for r in runs[v]), '?')
  times = [t for v in variants for t in wall[v] if t is not None]
  budget = (
    f'{steps} steps x batch {batch_size} = {steps * batch_size} training images per run at '
    f'{image_size[0]}x{image_size[1]}'
  )
  if steps != config_steps:
    budget += (
      f" (**a reduced budget**: {steps / config_steps:.0%} of the demo config's "
      f'{config_steps} steps; learning-rate boundaries scaled to the same fractions)'
    )
  lines = [
    '# ROCK ablation on the synthetic rooms (paper Table 1 setting)',
    '',
    'Written by `rock_jax/tools/study.py`. Every number comes from the `results.json` of '
    'a real training run (`python -m rock_jax.main`), one per variant and seed, evaluated '
    f'on the `{split}` split ({images} images) after training.',
    '',
    f'- Budget: {budget}; the same for every variant.',
    f'- Seeds: {", ".join(str(s) for s in seeds)} (`config.seed`: initialisation, data '
    'order and augmentation).',
    f'- Spread: mean ± sample standard deviation [min, max] over the {len(seeds)} seed(s).',
  ]
  if times:
    lines.append(
      f'- Wall time per run (this machine, {os.cpu_count()} CPU cores, including compile '
      f'and evaluation): {min(times) / 60:.1f} to {max(times) / 60:.1f} min, '
      f'{sum(times) / 60:.0f} min in all.'
    )
    if steps != config_steps:
      per_run = sum(times) / len(times) * config_steps / steps
      lines.append(
        f'- The full-budget study ({config_steps} steps per run) would take about '
        f'{per_run * len(variants) * len(seeds) / 3600:.1f} h here '
        f'({per_run / 60:.0f} min per run, scaled from these runs).'
      )
  return lines


def results_lines(
  variants: Sequence[str], runs: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[str]:
  """The results table and ordering, the paper's Table 1 beside it, AP@0.5 per class."""
  paper_variants = [v for v in variants if v in PAPER_TABLE1]
  paper_runs = {v: [{'mAP@0.5': PAPER_TABLE1[v][0]}] for v in paper_variants}
  return [
    '## Results (synthetic rooms, AP in %)',
    '',
    metrics_table(variants, runs),
    '',
    f'Ordering by mean mAP@0.5 here: {ordering(variants, runs)}. Paper Table 1: '
    f'{ordering(paper_variants, paper_runs)}.',
    '',
    'Depth RMSE, relative error and normals angle: lower is better; scene accuracy and AP: '
    'higher is better. The detection baseline has no auxiliary outputs (n/a).',
    '',
    '## Paper Table 1 (NYUv2 val, AP in %), for comparison',
    '',
    paper_table(variants),
    '',
    'The paper trains a ResNet-50 from ImageNet on NYUv2 at 480x640 for 40k steps; here a '
    'narrow ResNet-18 learns from scratch on procedural scenes on a CPU, so only the '
    'ordering of the rows, not their values, is comparable.',
    '',
    '## AP@0.5 per class (mean over seeds, in %)',
    '',
    per_class_table(variants, runs),
    '',
  ]


def figure_lines(figure: str | None) -> list[str]:
  """The learning-curves section (none without a figure)."""
  if not figure:
    return []
  return [
    '## Learning curves (first seed of each variant)',
    '',
    'Training loss and its parts (solid), validation loss and metrics at each evaluation '
    "(dashed), from each run's `metrics.jsonl`; drawn by `python -m rock_jax.tools.plot`.",
    '',
    f'![Learning curves]({figure})',
    '',
  ]


def reproduce_lines(
  study_command: str, full_command: str, example_command: str, config_steps: int
) -> list[str]:
  """The commands of this report, of the full-budget study and of one run."""
  return [
    '## Reproduce',
    '',
    'This report:',
    '',
    '```bash',
    study_command,
    '```',
    '',
    f"The full-budget study (the demo config's {config_steps} steps per run):",
    '',
    '```bash',
    full_command,
    '```',
    '',
    'One run alone (the study runs exactly this per variant and seed):',
    '',
    '```bash',
    example_command,
    '```',
    '',
  ]


def results_files_lines(
  variants: Sequence[str], seeds: Sequence[int], workdirs: Mapping[str, Sequence[str]]
) -> list[str]:
  """The `results.json` of every run the report reads."""
  lines = ['## Results files', '']
  for variant in variants:
    for seed, workdir in zip(seeds, workdirs[variant], strict=True):
      lines.append(f'- {variant}, seed {seed}: `{os.path.join(workdir, "results.json")}`')
  return lines


def main(argv: Sequence[str]) -> None:
  """Runs the missing trainings, then writes the report."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  smoke = FLAGS.smoke
  out = report_path(FLAGS.out, FLAGS.root, smoke)
  config = synthetic.get_config('smoke' if smoke else None)
  config_steps = int(config.train.num_steps)
  steps = int(FLAGS.steps or config_steps)
  boundaries = scaled_boundaries(config.train.lr_boundaries, config_steps, steps)
  bad = [s for s in FLAGS.seeds if not s.strip().lstrip('-').isdigit()]
  if bad:
    raise cli.UserError(f'--seeds: {bad[0]!r} is not an integer')
  seeds = [int(s) for s in FLAGS.seeds]
  variants = list(FLAGS.variants)
  for row in variants:
    try:
      split_row(row)
    except ValueError as e:
      raise cli.UserError(f'--variants: {e}') from None
  nice = ['nice', '-n', str(FLAGS.nice)] if FLAGS.nice else []

  runs: dict[str, list[dict]] = {v: [] for v in variants}
  example_command = ''
  workdirs: dict[str, list[str]] = {v: [] for v in variants}
  wall: dict[str, list[float | None]] = {v: [] for v in variants}
  total = len(variants) * len(seeds)
  for index, (seed, variant) in enumerate((s, v) for s in seeds for v in variants):
    workdir = run_workdir(FLAGS.root, steps, variant, seed)
    args = run_command(
      smoke=smoke,
      variant=variant,
      seed=seed,
      steps=steps,
      boundaries=boundaries,
      workdir=workdir,
      data_dir=FLAGS.data_dir,
      overrides=FLAGS.set,
    )
    example_command = shlex.join(['python', *args])
    results = read_results(workdir, steps)
    seconds = None
    if results is None:
      print(f'[{index + 1}/{total}] {variant} seed {seed}: training {steps} steps', flush=True)
      start = time.time()
      done = subprocess.run([*nice, sys.executable, *args], check=False)
      seconds = time.time() - start
      if done.returncode != 0:
        raise SystemExit(f'Run failed ({done.returncode}): {shlex.join(args)}')
      results = read_results(workdir, steps)
      if results is None:
        raise SystemExit(f'No results.json of step {steps} in {workdir}.')
      with open(os.path.join(workdir, RUN_INFO), 'w') as f:
        json.dump({'command': shlex.join(['python', *args]), 'wall_seconds': seconds}, f)
    else:
      info_path = os.path.join(workdir, RUN_INFO)
      if os.path.exists(info_path):
        with open(info_path) as f:
          seconds = json.load(f).get('wall_seconds')
      print(f'[{index + 1}/{total}] {variant} seed {seed}: reusing {workdir}', flush=True)
    print(
      f'  mAP@0.5 {100 * results["mAP@0.5"]:.1f}'
      + (f' ({seconds / 60:.1f} min)' if seconds else ''),
      flush=True,
    )
    runs[variant].append(results)
    workdirs[variant].append(workdir)
    wall[variant].append(seconds)

  flags_used = [f'--steps={steps}', f'--seeds={",".join(map(str, seeds))}']
  flags_used.append(f'--variants={",".join(variants)}')
  flags_used += [f'--root={FLAGS.root}', f'--out={out}']
  if smoke:
    flags_used.append('--smoke')
  if FLAGS.data_dir:
    flags_used.append(f'--data_dir={FLAGS.data_dir}')
  flags_used += [f'--set={s}' for s in FLAGS.set]
  study_command = shlex.join(['python', '-m', 'rock_jax.tools.study', *flags_used])
  full_command = shlex.join(
    ['python', '-m', 'rock_jax.tools.study', f'--steps={config_steps}', '--seeds=0,1,2']
    + (['--smoke'] if smoke else [])
  )
  figure = write_figure(out, variants, workdirs)
  write_report(
    out,
    variants=variants,
    runs=runs,
    workdirs=workdirs,
    wall=wall,
    steps=steps,
    config_steps=config_steps,
    batch_size=int(config.train.batch_size),
    image_size=tuple(config.data.image_size),
    study_command=study_command,
    full_command=full_command,
    example_command=example_command,
    seeds=seeds,
    figure=figure,
  )
  print(f'Wrote {out}', flush=True)


def write_figure(
  out: str, variants: Sequence[str], workdirs: Mapping[str, Sequence[str]]
) -> str | None:
  """Draws the first seed's curves of every variant beside `out`; returns its name.

  None (and a note on the console) when a run has no `metrics.jsonl` (a run from
  before the trainer wrote one).
  """
  runs = [workdirs[v][0] for v in variants if workdirs[v]]
  path = os.path.splitext(out)[0] + '_curves.png'
  try:
    plot.plot_runs(runs, path, labels=[v for v in variants if workdirs[v]])
  except ValueError as error:
    print(f'No learning-curves figure: {error}', flush=True)
    return None
  return os.path.basename(path)


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  _cli()
