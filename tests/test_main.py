"""End-to-end runs of the real entry point on the synthetic rooms, with a kill and a resume.

`python -m rock_jax.main --config=configs/synthetic.py:smoke` runs as a subprocess:
train, periodic checkpoints, final evaluation, TensorBoard events, `results.json`.
A second run of the same command is killed (SIGKILL) once its first checkpoint is on
disk, then rerun on the same workdir: it must end with bitwise the same parameters
as the uninterrupted run. The subprocesses share a persistent XLA compilation
cache so that only the first one compiles, and compile with XLA's backend
optimisations off (faster to build, same flags in every run).
"""

import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import cached_env
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from configs import synthetic
from rock_jax import checkpoints, coco, main, train

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 30
# The console of the smoke run below (TFDS build, 3 progress lines, one evaluation, the
# final table and where the files went) fits in this many lines (it was 63 lines for
# 4 steps before the console was reworked; see README, "What a run prints").
CONSOLE_LINE_BUDGET = 40
MAX_LINE_CHARS = 200
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


def run(args, env, timeout=600) -> subprocess.CompletedProcess:
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-5000:]
  return result


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, env, data_dir):
  """One complete smoke run (building the dataset); returns its workdir, stdout and stderr."""
  workdir = tmp_path_factory.mktemp('run_a')
  result = run(command(workdir, data_dir), env)
  return workdir, result.stdout, result.stderr


def final_variables(workdir):
  directory, step = checkpoints.resolve_checkpoint(workdir)
  assert step == NUM_STEPS
  return checkpoints.load_variables(directory / str(step))


def test_smoke_run_writes_everything(uninterrupted):
  workdir, stdout, _ = uninterrupted
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
  assert (tmp_path / 'eval' / str(NUM_STEPS) / 'detections.json').exists()


def test_smoke_console_fits_the_line_budget(uninterrupted):
  workdir, stdout, stderr = uninterrupted
  lines = (stdout + stderr).splitlines()
  assert len(lines) <= CONSOLE_LINE_BUDGET, '\n'.join(lines)
  # A progress bar in a log file redraws with carriage returns: each redraw counts.
  drawn = [part for line in lines for part in line.split('\r')]
  assert max(len(part) for part in drawn) <= MAX_LINE_CHARS, max(drawn, key=len)
  for noise in ('oneDNN', 'Unable to initialize backend', 'is deprecated', 'Hyperparameters'):
    assert noise not in stdout + stderr, noise
  progress = [line for line in stdout.splitlines() if line.startswith('step ')]
  assert [line.split()[1] for line in progress] == ['10/30', '20/30', '30/30']
  for part in ('steps/s', 'ETA', 'lr ', 'loss ', '(cls ', ' loc ', 'depth ', 'ms/step'):
    assert part in progress[-1], part
  assert f'config:  {workdir / "config.json"}' in stdout
  assert re.search(r'^eval  step 30  test split, 4 images', stdout, re.M)
  assert re.search(r'^  COCO %  AP +[\d.]+  AP50', stdout, re.M)
  assert stderr.count('Building synthetic_rooms/tiny') >= 1  # One bar, not one per split.
  assert 'Shuffling' not in stderr and 'Generating' not in stderr


def test_smoke_workdir_files(uninterrupted):
  workdir = uninterrupted[0]
  config = json.loads((workdir / 'config.json').read_text())
  assert config['train']['num_steps'] == NUM_STEPS
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['kind'], r['step']) for r in records] == [
    ('train', 10),
    ('train', 20),
    ('train', 30),
    ('eval', 30),  # Validation, which chose the checkpoint.
    ('test', 30),  # The test split, once, at the end.
  ]
  assert {'loss', 'loss/cls', 'loss/loc', 'learning_rate', 'grad_norm'} <= set(records[0])
  assert {'loss', 'loss/cls', 'mAP@0.5', 'AR@100', 'depth_rmse'} <= set(records[-2])
  assert {'loss', 'loss/cls', 'mAP@0.5', 'AR@100', 'depth_rmse'} <= set(records[-1])
  eval_dir = workdir / 'eval' / str(NUM_STEPS)
  detections = json.loads((eval_dir / 'detections.json').read_text())
  assert detections and set(detections[0]) == {'image_id', 'category_id', 'bbox', 'score'}
  # results.json is the final test evaluation: its files are under eval/test_<step>/.
  summary = json.loads((workdir / 'eval' / f'test_{NUM_STEPS}' / 'summary.json').read_text())
  results = json.loads((workdir / 'results.json').read_text())
  for name in coco.COCO_SUMMARY_NAMES:
    assert name in summary and name in results, name
    assert summary[name] == results[name]


def event_tags(workdir) -> dict[str, str]:
  """TensorBoard tag -> plugin (scalars, images) of the run's event files."""
  tags = {}
  for path in glob.glob(str(workdir / 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        tags.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
  return tags


def test_smoke_tensorboard_has_pictures_and_every_scalar(uninterrupted):
  tags = event_tags(uninterrupted[0])
  images = [t for t, plugin in tags.items() if plugin == 'images']
  assert images and all(t.startswith('panels/') for t in images)
  scalars = {t for t, plugin in tags.items() if plugin == 'scalars'}
  expected = {'train/loss', 'train/loss/cls', 'train/learning_rate', 'train/grad_norm'}
  expected |= {'eval/loss', 'eval/loss/cls', 'eval/loss/depth', 'eval/depth_rmse'}
  # pycocotools has no number for a size range without objects (None, not written).
  results = json.loads((uninterrupted[0] / 'results.json').read_text())
  defined = [name for name in coco.COCO_SUMMARY_NAMES if results[name] is not None]
  assert {'mAP@[0.5:0.95]', 'mAP@0.5', 'AR@100'} <= set(defined)
  expected |= {f'eval/{name}' for name in defined}
  assert expected <= scalars, expected - scalars
  assert any(t.startswith('eval/AP@0.5/') for t in scalars)


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
    panels = []  # What the trainer reports besides the results: nothing here.
    coco = None
    class_names = ('chair',)

    def __init__(self, config, model, mesh):
      del config, model, mesh

    def run(self, state_or_variables, split, *, step=None, panels_dir=None):
      params = getattr(state_or_variables, 'params', None) or state_or_variables['params']
      calls.append((split, step, np.asarray(params['ssd']['box0']['kernel'])))
      value = {2: 0.9, 4: 0.1}[step] if split == 'validation' else 0.5
      return {'mAP@0.5': value, 'split': split, 'step': step, 'num_images': 4}

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
