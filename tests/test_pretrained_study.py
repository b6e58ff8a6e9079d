"""Issue #11's study driver: the fixed protocol in its run commands, and a smoke study.

The smoke study runs every part (§1 backbone, learning-rate choice on validation, §2
runs, §3 source pretraining and fine-tuning through `init_from` + `init_exclude`, the
diagnosis) through the real entry points on the tiny renders; a rerun must reuse every
finished run, and the report's numbers must be those of the runs' files.
"""

import json
import os
import subprocess
import sys
import warnings

import cached_env
import pytest
from absl import flags
from ml_collections import config_flags

from rock_jax import configs
from rock_jax.configs import nyuv2_finetune, synthetic_finetune
from rock_jax.tools import pretrained_study as ps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_protocol_schedule_and_budget():
  assert ps.boundaries(500) == (375,)  # The paper's 30k of 40k.
  assert ps.boundaries(4) == (3,)
  assert len(ps.LR_GRID) <= 3 and len(ps.SEEDS) >= 3
  assert ps.SOURCE_STEPS >= ps.STEPS


def test_select_lr_on_validation_ties_to_smaller():
  results = {1e-4: {'mAP@0.5': 0.30}, 3e-4: {'mAP@0.5': 0.42}, 1e-3: {'mAP@0.5': 0.42}}
  assert ps.select_lr(results) == 3e-4
  results[1e-3]['mAP@0.5'] = 0.43
  assert ps.select_lr(results) == 1e-3


def test_paired_counts_signs():
  a = [{'mAP@0.5': 0.5}, {'mAP@0.5': 0.4}, {'mAP@0.5': 0.3}]
  b = [{'mAP@0.5': 0.4}, {'mAP@0.5': 0.45}, {'mAP@0.5': 0.2}]
  pair = ps.paired(a, b)
  assert pair['diffs'] == pytest.approx([0.1, -0.05, 0.1])
  assert (pair['positive'], pair['negative']) == (2, 1)
  assert pair['stats']['mean'] == pytest.approx(0.05)
  assert '2 of 3 (a > b)' in ps._paired_line('x', pair)


def _overrides(run):
  return dict(o.split('=', 1) for o in run.overrides)


def test_runs_follow_the_protocol():
  lr = ps.lr_run('R', 'B', 3e-4, 500, False)
  o = _overrides(lr)
  assert o['data.eval_split'] == 'validation' and o['model.variant'] == 'baseline'
  assert o['data.test_split'] == ''  # Choosing the rate never reads the test split.
  assert o['init_backbone'] == 'B' and o['model.backbone.freeze_bn_stats'] == 'True'
  runs = [ps.table1_run('R', 'B', v, 1, 3e-4, 500, False) for v in ps.VARIANTS]
  for run in runs:
    o = _overrides(run)
    # The final step on validation, then the test split once (the trainer's rule).
    assert o['data.eval_split'] == 'validation' and o['data.test_split'] == 'test'
    assert o['seed'] == '1'
    assert o['train.learning_rate'] == '0.0003' and o['train.num_steps'] == '500'
    assert o['train.lr_boundaries'] == '(375,)' and o['train.optimizer'] == 'adam'
    assert o['model.backbone.freeze_bn_stats'] == 'True' and o['init_backbone'] == 'B'
  no_aux = _overrides(runs[ps.VARIANTS.index('rock_no_aux')])
  assert no_aux['model.variant'] == 'rock'
  assert [no_aux[f'loss.weights.{t}'] for t in ('scene', 'depth', 'normals')] == ['0.0'] * 3
  assert len({r.workdir for r in runs}) == len(runs)
  # §3: the source run starts from the §1 backbone; the fine-tuning from the source run,
  # with exactly the init_exclude of the NYUv2 fine-tuning config.
  source = ps.source_run('R', 'B', 3e-4, 1000, False)
  assert source.config == 'synthetic_source'  # The packaged config, by its short name.
  assert _overrides(source)['init_backbone'] == 'B'
  finetune = ps.finetune_run('R', source.workdir, 2, 3e-4, 500, False)
  o = _overrides(finetune)
  assert o['init_from'] == source.workdir and 'init_backbone' not in o
  assert finetune.config == 'synthetic_finetune'
  assert synthetic_finetune.get_config().init_exclude == nyuv2_finetune.get_config().init_exclude


def test_weighted_rows_follow_the_protocol_and_pair_with_fixed():
  fixed = _overrides(ps.table1_run('R', 'B', 'rock', 0, 3e-4, 500, False))
  run = ps.table1_run('R', 'B', 'rock+dwa', 0, 3e-4, 500, False)
  assert run.workdir == os.path.join('R', 'table1', 'rock+dwa', 'seed0')
  # The §2 protocol unchanged, plus the weighting.
  assert _overrides(run) == {**fixed, 'loss.weighting': 'dwa'}
  assert ps.row_name('rock+pcgrad') == 'ROCK (pcgrad weighting)'
  assert ps.row_pairs(['rock', 'rock+dwa'])[-1] == ('rock+dwa', 'rock')
  with pytest.raises(ValueError, match="Unknown weighting 'adam'"):
    ps.split_row('rock+adam')
  with pytest.raises(ValueError, match="Unknown variant 'resnet'"):
    ps.split_row('resnet+dwa')
  runs = {
    'rock': [{'mAP@0.5': 0.10}, {'mAP@0.5': 0.20}, {'mAP@0.5': 0.30}],
    'rock+dwa': [{'mAP@0.5': 0.15}, {'mAP@0.5': 0.25}, {'mAP@0.5': 0.20}],
  }
  lines = '\n'.join(ps._table1_lines(runs))
  assert '| ROCK (dwa weighting) | 3 |' in lines
  assert '| ROCK (dwa weighting) - ROCK | 0.0 ± 8.7 [-10.0, 5.0] | +5.0, +5.0, -10.0 |' in lines


@pytest.mark.slow
def test_smoke_refuses_the_repository_results(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'rock_jax.tools.pretrained_study',
      '--smoke',
      f'--root={tmp_path}',
      f'--out={os.path.join(REPO, "RESULTS.md")}',
    ],
    cwd=REPO,
    env=cached_env.subprocess_env(tmp_path / 'cache', REPO),
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode != 0
  assert 'must not write the repository RESULTS.md' in done.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_smoke_study_runs_resumes_and_reports(tmp_path):
  # From a folder outside the checkout, every location relative to it.
  root, out = tmp_path / 'study', tmp_path / 'REPORT.md'
  command = [
    sys.executable,
    '-m',
    'rock_jax.tools.pretrained_study',
    '--smoke',
    '--root=study',
    '--out=REPORT.md',
    '--data_dir=tfds',
    '--seeds=0',
    '--variants=rock',
    '--lrs=0.001',
    '--processes=1',
  ]
  env = cached_env.subprocess_env(tmp_path / 'xla_cache', REPO)
  first = subprocess.run(
    command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'training' in first.stdout and 'reusing' not in first.stdout
  text = out.read_text()
  assert '## §2' in text and '## §3' in text and '## Diagnosis' in text
  with open(root / 'lr_selection.json') as f:
    assert json.load(f)['chosen'] == 0.001
  lr_results = json.loads((root / 'lr' / 'lr0.001' / 'results.json').read_text())
  assert lr_results['split'] == 'validation'
  rock = json.loads((root / 'table1' / 'rock' / 'seed0' / 'results.json').read_text())
  assert rock['split'] == 'test'
  # The fine-tuning really loaded the source run and kept fresh class heads.
  diag = json.loads((root / 'finetune' / 'seed0' / 'diagnosis.json').read_text())
  assert diag['init']['scale']['ratio_sum_to_conv5'] > 0
  assert set(diag['init']['grad']) == {'cls', 'loc', 'scene', 'depth', 'normals'}
  assert 'train/loss/cls' in diag['curves']

  # A rerun trains nothing, and the report follows the files.
  rock['mAP@0.5'] = 0.4321
  (root / 'table1' / 'rock' / 'seed0' / 'results.json').write_text(json.dumps(rock))
  second = subprocess.run(
    command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'training' not in second.stdout and 'reusing' in second.stdout
  assert '| ROCK | 1 | 43.2 |' in out.read_text()


def _parse(run):
  """The config of a run, parsed from its command line as `rock_jax.main` parses it."""
  argv = ['prog', *run.args(None)[2:]]
  argv = configs.resolve_argv([a for a in argv if not a.startswith('--workdir=')])
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
    flag_values(argv)
  return flag_values.config


def test_real_run_commands_parse_to_the_protocol():
  runs = [ps.lr_run('R', 'B', 1e-4, ps.STEPS, False)]
  runs += [ps.table1_run('R', 'B', v, 0, 1e-4, ps.STEPS, False) for v in ps.VARIANTS]
  source = ps.source_run('R', 'B', 1e-4, ps.SOURCE_STEPS, False)
  runs += [source, ps.finetune_run('R', source.workdir, 0, 1e-4, ps.STEPS, False)]
  for run in runs:
    config = _parse(run)
    assert config.train.learning_rate == 1e-4 and config.train.optimizer == 'adam'
    assert config.train.num_steps == run.steps
    assert tuple(config.train.lr_boundaries) == ps.boundaries(run.steps)
    assert config.model.backbone.freeze_bn_stats is True
    assert config.model.backbone.depth == 18 and config.model.backbone.width == 32
    assert tuple(config.data.image_size) == (144, 192) and config.train.batch_size == 16
  no_aux = _parse(runs[1 + ps.VARIANTS.index('rock_no_aux')])
  assert no_aux.model.variant == 'rock'
  assert (no_aux.loss.weights.scene, no_aux.loss.weights.depth) == (0.0, 0.0)
  assert no_aux.loss.weights.normals == 0.0 and no_aux.loss.weights.cls == 1.0
  src = _parse(source)
  assert src.data.builder_config == 'source' and src.model.tasks == 'depth,normals'
  assert src.init_backbone == 'B'
  ft = _parse(runs[-1])
  assert ft.data.builder_config == 'cpu' and ft.init_from == source.workdir
  assert (ft.data.eval_split, ft.data.test_split) == ('validation', 'test')
  assert ft.init_backbone is None
