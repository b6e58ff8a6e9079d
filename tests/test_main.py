"""End-to-end runs of the real entry point on the synthetic rooms, with a kill and a resume.

`python -m rock_jax.main --config=configs/synthetic.py:smoke` runs as a subprocess:
train, periodic checkpoints, final evaluation, TensorBoard events, `results.json`.
A second run of the same command is killed (SIGKILL) once its first checkpoint is on
disk, then rerun on the same workdir: it must end with bitwise the same parameters
as the uninterrupted run. The subprocesses share a persistent XLA compilation
cache so that only the first one compiles, and compile with XLA's backend
optimisations off (faster to build, same flags in every run).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import cached_env
import jax
import ml_collections
import numpy as np
import pytest

from configs import synthetic
from rock_jax import checkpoints, main, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 30
METRIC_KEYS = (
  'mAP@[0.5:0.95]',
  'mAP@0.5',
  'mAP@0.75',
  'scene_accuracy',
  'depth_rmse',
  'depth_rel',
  'normals_mean_angle',
)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Subprocess environment: a shared compilation cache, quiet logs."""
  return cached_env.subprocess_env(tmp_path_factory.mktemp('xla_cache'), REPO)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def command(workdir, data_dir) -> list[str]:
  return [
    sys.executable,
    '-m',
    'rock_jax.main',
    '--config=configs/synthetic.py:smoke',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    f'--config.train.num_steps={NUM_STEPS}',
    '--config.train.checkpoint_every=2',
    '--config.train.eval_every=0',  # Only the final evaluation.
    '--config.train.log_every=10',
  ]


def run(args, env, timeout=300) -> subprocess.CompletedProcess:
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-5000:]
  return result


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, env, data_dir):
  """One complete smoke run; returns its workdir and stdout."""
  workdir = tmp_path_factory.mktemp('run_a')
  result = run(command(workdir, data_dir), env)
  return workdir, result.stdout


def final_variables(workdir):
  directory, step = checkpoints.resolve_checkpoint(workdir)
  assert step == NUM_STEPS
  return checkpoints.load_variables(directory / str(step))


def test_smoke_run_writes_everything(uninterrupted):
  workdir, stdout = uninterrupted
  results = json.loads((workdir / 'results.json').read_text())
  for key in METRIC_KEYS:
    assert key in results, key
  assert results['step'] == NUM_STEPS and results['split'] == 'test' and results['num_images'] == 4
  # Tested once, on the checkpoint chosen on validation (the only evaluation: the final one).
  assert (results['checkpoint_step'], results['checkpoint_kind']) == (NUM_STEPS, 'best')
  assert results['selected_by'] == 'mAP@0.5 on validation'
  assert results['validation']['num_images'] == 4 and 'mAP@0.5' in results['validation']
  assert 0.0 <= results['mAP@0.5'] <= 1.0
  assert 0.0 <= results['scene_accuracy'] <= 1.0
  assert results['depth_rmse'] > 0 and 0 < results['normals_mean_angle'] < 180
  assert any(k.startswith('AP@0.5/') for k in results)
  # Table-3 layout printed on stdout.
  assert 'mAP' in stdout and 'toilet' in stdout
  # ... then where everything went.
  for line in ('results:', 'TensorBoard logs:', 'checkpoints:', 'Figure-3 panels:'):
    assert line in stdout, line
  assert str(workdir / 'panels') in stdout
  assert 'mAP@0.75:' in stdout and 'mAP@[0.5:0.95]:' in stdout
  # The last K checkpoints (3) are kept, the final one carries its metrics.
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [NUM_STEPS - 4, NUM_STEPS - 2, NUM_STEPS]
  assert list(workdir.glob('events.out.tfevents.*'))
  assert list((workdir / 'panels').glob('*.png'))
  assert checkpoints.load_config(workdir).model.num_classes == synthetic.NUM_CLASSES


def test_kill_and_resume_is_bitwise_identical(tmp_path, uninterrupted, env, data_dir):
  workdir = tmp_path / 'run_b'
  args = command(workdir, data_dir)
  process = subprocess.Popen(
    args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  first = workdir / 'checkpoints' / '2'
  deadline = time.time() + 300
  while not first.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  killed_at = checkpoints.resolve_checkpoint(workdir)[1]
  assert killed_at < NUM_STEPS
  run(args, env)  # The same command resumes from the last checkpoint.
  expected = final_variables(uninterrupted[0])
  resumed = final_variables(workdir)
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  flat_resumed = dict(jax.tree_util.tree_leaves_with_path(resumed))
  assert len(flat_expected) == len(flat_resumed)
  for path, value in flat_expected:
    np.testing.assert_array_equal(flat_resumed[path], value, err_msg=jax.tree_util.keystr(path))


def test_eval_mode_evaluates_a_checkpoint(tmp_path, uninterrupted, data_dir, capsys, monkeypatch):
  config = synthetic.get_config('smoke')
  config.data.data_dir = data_dir
  config.mode = 'eval'
  monkeypatch.chdir(tmp_path)  # Relative init_from (Orbax wants absolute paths).
  config.init_from = os.path.relpath(uninterrupted[0])
  config.data.eval_split = 'validation'
  results = train.train_and_evaluate(config, str(tmp_path))
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['split'] == 'validation' and written['step'] == NUM_STEPS
  assert written['mAP@0.5'] == pytest.approx(results['mAP@0.5'])
  for key in METRIC_KEYS:
    assert key in written
  assert 'bathtub' in capsys.readouterr().out


def test_eval_mode_needs_init_from(tmp_path):
  config = synthetic.get_config('smoke')
  config.mode = 'eval'
  with pytest.raises(ValueError, match='init_from'):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize(
  ('environ', 'expected'),
  [
    ({}, False),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, True),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '8'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
  ],
)
def test_is_multihost(environ, expected):
  assert main.is_multihost(environ) is expected


def test_unknown_mode_is_an_error(tmp_path):
  config = ml_collections.ConfigDict({'mode': 'predict'})
  with pytest.raises(ValueError, match='mode'):
    train.train_and_evaluate(config, str(tmp_path))


def test_absolute_workdir_and_quiet_orbax():
  assert main.absolute_workdir('runs/x') == os.path.join(os.getcwd(), 'runs/x')
  assert main.absolute_workdir('gs://bucket/runs/x') == 'gs://bucket/runs/x'
  record = lambda path, level: logging.LogRecord('absl', level, path, 1, 'm', (), None)
  orbax_file = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not main.quiet_orbax(record(orbax_file, logging.INFO))
  assert main.quiet_orbax(record(orbax_file, logging.WARNING))
  assert main.quiet_orbax(record('/venv/site-packages/clu/periodic_actions.py', logging.INFO))


@pytest.mark.slow
def test_test_split_is_read_once_on_the_checkpoint_chosen_on_validation(
  tmp_path, data_dir, monkeypatch
):
  """Validation picks step 2 of 4; the test split is evaluated after that, once, on step 2."""
  calls = []

  class FakeEvaluator:
    def __init__(self, config, model, mesh):
      del config, model, mesh

    def run(self, state_or_variables, split, *, step=None, panels_dir=None):
      params = getattr(state_or_variables, 'params', None) or state_or_variables['params']
      calls.append((split, step, np.asarray(params['ssd']['box0']['kernel'])))
      value = {2: 0.9, 4: 0.1}[step] if split == 'validation' else 0.5
      return {'mAP@0.5': value, 'split': split, 'step': step, 'num_images': 4}

    def report(self, results, workdir):
      (workdir / 'results.json').write_text(json.dumps(results))

  monkeypatch.setattr(train.eval_loop, 'Evaluator', FakeEvaluator)
  config = synthetic.get_config('smoke')
  config.data.data_dir = data_dir
  config.train.update(num_steps=4, eval_every=2, checkpoint_every=2, learning_rate=1e-2)
  config.train.async_checkpoints = False
  results = train.train_and_evaluate(config, str(tmp_path))
  assert [(split, step) for split, step, _ in calls] == [
    ('validation', 2),
    ('validation', 4),
    ('test', 2),
  ]
  chosen = checkpoints.load_variables(tmp_path / 'checkpoints' / '2')
  np.testing.assert_array_equal(calls[2][2], chosen['params']['ssd']['box0']['kernel'])
  assert not np.array_equal(calls[1][2], calls[2][2])  # Step 4 differs: the choice matters.
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written == results
  assert (written['split'], written['checkpoint_step'], written['checkpoint_kind']) == (
    'test',
    2,
    'best',
  )
  assert written['validation']['mAP@0.5'] == 0.9
