"""The ablation study script: statistics, and a smoke study through the real trainer.

`python -m rock_jax.tools.study --smoke` runs 1 seed of 2 variants as subprocesses of
`rock_jax.main` (the smoke config, a few steps); RESULTS.md's table must be well
formed and every number in it must be the one of the runs' `results.json`. A rerun
reuses the finished runs, so editing one `results.json` must show in the new report.
"""

import json
import os
import subprocess
import sys

import cached_env
import pytest
from absl import app
from PIL import Image

from rock_jax.tools import study

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ('baseline', 'rock')
SMOKE_STEPS = 4


def test_seed_statistics():
  stats = study.seed_statistics([0.1, None, 0.3, 0.2])
  assert stats['n'] == 3
  assert stats['mean'] == pytest.approx(0.2)
  assert stats['std'] == pytest.approx(0.1)  # Sample standard deviation.
  assert (stats['min'], stats['max']) == (0.1, 0.3)
  assert study.seed_statistics([None, None]) is None
  assert study.seed_statistics([0.5])['std'] == 0.0


def test_format_cell():
  stats = study.seed_statistics([0.25, 0.35])
  assert study.format_cell(stats, 100.0, 1) == '30.0 ± 7.1 [25.0, 35.0]'
  assert study.format_cell(study.seed_statistics([1.23456]), 1.0, 3) == '1.235'
  assert study.format_cell(None, 100.0, 1) == 'n/a'


def test_scaled_boundaries():
  assert study.scaled_boundaries((2400,), 3000, 750) == (600,)
  assert study.scaled_boundaries((3,), 4, 4) == (3,)
  assert study.scaled_boundaries((1,), 1000, 10) == (1,)  # Never before step 1.


def test_run_command_isolates_variant_and_seed(tmp_path):
  args = study.run_command(
    smoke=True,
    variant='flat_mtl',
    seed=2,
    steps=10,
    boundaries=(8,),
    workdir=study.run_workdir(str(tmp_path), 10, 'flat_mtl', 2),
  )
  assert '--config=synthetic:smoke' in args
  assert '--config.model.variant=flat_mtl' in args
  assert '--config.seed=2' in args
  assert '--config.train.num_steps=10' in args
  assert '--config.train.lr_boundaries=(8,)' in args
  assert f'--workdir={tmp_path}/steps10/flat_mtl/seed2' in args


def test_weighting_rows_run_rock_with_each_weighting(tmp_path):
  for method in ('uncertainty', 'dwa', 'pcgrad'):
    row = f'rock+{method}'
    workdir = study.run_workdir(str(tmp_path), 10, row, 0)
    args = study.run_command(
      smoke=True, variant=row, seed=0, steps=10, boundaries=(8,), workdir=workdir
    )
    assert '--config.model.variant=rock' in args
    assert f'--config.loss.weighting={method}' in args
    assert f'--workdir={tmp_path}/steps10/rock+{method}/seed0' in args
    assert study.row_name(row) == f'ROCK ({method} weighting)'
  plain = study.run_command(
    smoke=True, variant='rock', seed=0, steps=10, boundaries=(8,), workdir=str(tmp_path)
  )
  assert not any(a.startswith('--config.loss.weighting') for a in plain)
  with pytest.raises(ValueError, match="Unknown weighting 'gradnorm'"):
    study.split_row('rock+gradnorm')
  with pytest.raises(ValueError, match="Unknown variant 'rocky'"):
    study.split_row('rocky+dwa')


def _table_rows(text: str, title: str) -> list[list[str]]:
  """The cells of the first markdown table after the line `title`."""
  lines = text.splitlines()
  start = lines.index(title)
  rows = []
  for line in lines[start + 1 :]:
    if line.startswith('|'):
      rows.append([c.strip() for c in line.strip().strip('|').split('|')])
    elif rows:
      break
  return rows


def _expected(results: dict, key: str, scale: float, digits: int) -> str:
  value = results.get(key)
  return 'n/a' if value is None else f'{scale * value:.{digits}f}'


@pytest.fixture(scope='module')
def smoke_study(tmp_path_factory):
  """Runs the smoke study once, outside the checkout; returns (command, env, root, out, cwd)."""
  tmp = tmp_path_factory.mktemp('study')
  env = cached_env.subprocess_env(tmp_path_factory.mktemp('xla_cache'), REPO)
  root, out = tmp / 'runs', tmp / 'RESULTS.md'
  command = [
    sys.executable,
    '-m',
    'rock_jax.tools.study',
    '--smoke',
    '--seeds=0',
    f'--variants={",".join(VARIANTS)}',
    f'--root={root}',
    f'--out={out}',
    f'--data_dir={tmp / "tfds"}',
  ]
  cwd = tmp / 'elsewhere'
  cwd.mkdir()
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return command, env, root, out, cwd


def _load(root, variant: str) -> dict:
  path = os.path.join(study.run_workdir(str(root), SMOKE_STEPS, variant, 0), 'results.json')
  with open(path) as f:
    return json.load(f)


def test_smoke_study_table_comes_from_results(smoke_study):
  _, _, root, out, _ = smoke_study
  text = out.read_text()
  rows = _table_rows(text, '## Results (synthetic rooms, AP in %)')
  header, rule, *body = rows
  assert header == ['Model', 'seeds', *(m[1] for m in study.METRICS)]
  assert len(rule) == len(header) and all(set(c) <= set(':-') and c for c in rule)
  assert [r[0] for r in body] == [study.VARIANT_NAMES[v] for v in VARIANTS]
  for variant, row in zip(VARIANTS, body, strict=True):
    assert len(row) == len(header)
    assert row[1] == '1'
    results = _load(root, variant)
    assert results['step'] == SMOKE_STEPS
    for cell, (key, _, scale, digits, _) in zip(row[2:], study.METRICS, strict=True):
      assert cell == _expected(results, key, scale, digits), (variant, key)
  baseline_row = body[0]
  assert baseline_row[5:] == ['n/a'] * 4  # No auxiliary outputs.
  assert all(c != 'n/a' for c in body[1][2:])  # ROCK has every metric.
  paper = _table_rows(text, '## Paper Table 1 (NYUv2 val, AP in %), for comparison')
  assert paper[2] == ['Detection baseline', '31.2', '15.8', '16.2']
  assert paper[3] == ['ROCK', '37.6', '17.1', '18.5']
  assert 'python -m rock_jax.tools.study --steps=4 --seeds=0 --variants=baseline,rock' in text
  assert '--smoke' in text
  assert '![Learning curves](RESULTS_curves.png)' in text
  with Image.open(out.parent / 'RESULTS_curves.png') as figure:
    assert figure.width == 1600 and figure.height >= 300


def test_smoke_study_rerun_reuses_results(smoke_study):
  command, env, root, out, cwd = smoke_study
  workdir = study.run_workdir(str(root), SMOKE_STEPS, 'rock', 0)
  path = os.path.join(workdir, 'results.json')
  results = _load(root, 'rock')
  results['mAP@0.5'] = 0.4321  # A value no smoke run reaches: must show up as is.
  with open(path, 'w') as f:
    json.dump(results, f)
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-5000:]
  assert 'reusing' in result.stdout
  rows = _table_rows(out.read_text(), '## Results (synthetic rooms, AP in %)')
  assert rows[3][0] == 'ROCK' and rows[3][2] == '43.2'


def test_ordering_ranks_by_mean_map():
  runs = {
    'baseline': [{'mAP@0.5': 0.3}, {'mAP@0.5': 0.1}],
    'rock': [{'mAP@0.5': 0.25}],
    'flat_mtl': [{'mAP@0.5': None}],
  }
  assert study.ordering(['baseline', 'rock', 'flat_mtl'], runs) == 'ROCK > Detection baseline'


def test_default_report_never_overwrites_the_committed_results(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert study.report_path(None, 'workdir/study', smoke=False) == 'workdir/study/RESULTS.md'
  assert study.report_path(None, 'workdir/study', smoke=True) == 'workdir/study/RESULTS.md'
  # The committed table is written only when named, and never by a smoke study: a
  # RESULTS.md in the current directory or beside a pyproject.toml (a checkout's root).
  committed = os.path.join(REPO, 'RESULTS.md')
  assert study.report_path(committed, 'r', smoke=False) == committed
  other_checkout = tmp_path / 'checkout'
  other_checkout.mkdir()
  (other_checkout / 'pyproject.toml').write_text('')
  for out in (committed, 'RESULTS.md', str(other_checkout / 'RESULTS.md')):
    assert study.is_committed_results(out)
    with pytest.raises(app.UsageError, match='never writes'):
      study.report_path(out, 'r', smoke=True)
  assert not study.is_committed_results(str(other_checkout / 'REPORT.md'))
  assert not study.is_committed_results('workdir/study/RESULTS.md')
