"""Tests for rock_jax.reporting (console lines, workdir files) and rock_jax.console."""

import json
import logging
import os

import pytest

from rock_jax import coco, console, reporting


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_progress_excludes_paused_time_from_speed_and_eta():
  clock = FakeClock()
  progress = reporting.Progress(100, clock=clock)
  assert progress.rates(1) == (None, None, None)  # Only the compiling step so far.
  progress.start(1)
  for _ in range(10):  # 10 steps of 0.5 s, of which 0.1 s waiting for data.
    clock.now += 0.1
    progress.data(0.1)
    clock.now += 0.4
  with progress.paused():  # An evaluation of 60 s does not count.
    clock.now += 60.0
  steps_per_sec, data_ms, compute_ms = progress.rates(11)
  assert steps_per_sec == pytest.approx(2.0)
  assert data_ms == pytest.approx(100.0) and compute_ms == pytest.approx(400.0)
  line = progress.line(11, {'loss': 3.0, 'learning_rate': 1e-3})
  assert 'step  11/100' in line and '2.00 steps/s' in line
  assert 'ETA 44s' in line  # 89 steps at 2 steps/s.
  assert 'data 100 + compute 400 ms/step' in line
  assert progress.rates(11) == (None, None, None)  # A new window starts.


def test_format_progress_names_every_loss_part_detection_first():
  line = reporting.format_progress(
    50,
    1600,
    {'loss': 9.5, 'loss/depth': 1.25, 'loss/cls': 3.0, 'loss/loc': 1.5, 'learning_rate': 1e-3},
    steps_per_sec=2.5,
    data_ms=4.0,
    compute_ms=396.0,
  )
  assert line.startswith('step   50/1600  2.50 steps/s  ETA 10m20s  lr 1.0e-03')
  assert 'loss 9.500 (cls 3.000 loc 1.500 depth 1.250)' in line
  assert line.endswith('data 4 + compute 396 ms/step')


@pytest.mark.parametrize(
  ('seconds', 'text'), [(9, '9s'), (75, '1m15s'), (3599, '59m59s'), (4000, '1h06m')]
)
def test_format_duration(seconds, text):
  assert reporting.format_duration(seconds) == text


def test_format_eval_is_compact_and_has_every_number():
  results = {name: 0.01 * (k + 1) for k, name in enumerate(coco.COCO_SUMMARY_NAMES)}
  results.update(
    step=400,
    split='test',
    num_images=500,
    loss=2.5,
    **{'loss/cls': 1.0, 'loss/loc': 0.5, 'loss/depth': 1.0},
    depth_rmse=0.75,
    scene_accuracy=None,
    **{f'AP@0.5/class{k}': 0.5 for k in range(19)},
  )
  text = reporting.format_eval(results, seconds=12.3)
  lines = text.splitlines()
  assert len(lines) == 5 and max(len(line) for line in lines) <= 200
  assert lines[0] == 'eval  step 400  test split, 500 images, 12.3 s'
  assert 'AP   1.0' in lines[1] and 'APl   6.0' in lines[1]
  assert 'AR1   7.0' in lines[2] and 'ARl  12.0' in lines[2]
  assert 'loss    2.500  (cls 1.000  loc 0.500  depth 1.000)' in lines[3]
  assert 'depth_rmse 0.750' in lines[4] and 'scene_accuracy n/a' in lines[4]
  assert 'class0' not in text  # Per-class AP: TensorBoard, results.json, the final table.


def test_metrics_log_appends_json_lines(tmp_path):
  log = reporting.MetricsLog(tmp_path)
  log.write('train', 10, {'loss': 1.5, 'loss/cls': float('nan')})
  log.write('eval', 10, {'mAP@0.5': 0.25})
  reporting.MetricsLog(tmp_path, enabled=False).write('train', 20, {'loss': 1.0})
  records = reporting.read_metrics(tmp_path)
  assert [(r['kind'], r['step']) for r in records] == [('train', 10), ('eval', 10)]
  assert records[0]['loss'] == 1.5 and records[0]['loss/cls'] is None  # NaN -> null.
  assert records[1]['mAP@0.5'] == 0.25 and records[1]['time'] > 0
  assert reporting.read_metrics(tmp_path / 'none') == []


def test_write_config_and_eval_files(tmp_path):
  from configs import synthetic  # noqa: PLC0415

  config = synthetic.get_config('smoke')
  path = reporting.write_config(config, tmp_path)
  assert json.loads(path.read_text())['model']['num_classes'] == synthetic.NUM_CLASSES
  evaluator = coco.CocoEvaluator(['a'])
  evaluator.add(
    [3],
    [[100, 200]],
    [[[0.1, 0.1, 0.5, 0.5]]],
    [[1]],
    [[True]],
    {'boxes': [[[0.1, 0.1, 0.5, 0.5]]], 'scores': [[0.9]], 'classes': [[1]], 'num': [1]},
  )
  results = {'step': 7, 'split': 'test', **evaluator.result()}
  directory = reporting.write_eval_files(tmp_path, 7, evaluator, results)
  assert directory == tmp_path / 'eval' / '7'
  (det,) = json.loads((directory / 'detections.json').read_text())
  assert det['image_id'] == 3 and det['category_id'] == 1 and det['score'] == pytest.approx(0.9)
  summary = json.loads((directory / 'summary.json').read_text())
  assert list(summary)[:12] == list(coco.COCO_SUMMARY_NAMES)
  assert summary['mAP@0.5'] == pytest.approx(1.0)


def _record(path, level, message='m'):
  return logging.LogRecord('absl', level, path, 1, message, (), None)


def test_console_filter_keeps_ours_and_drops_library_chatter():
  ours = os.path.join(os.sep, 'repo', 'rock_jax', 'train.py')
  tfds_file = '/venv/site-packages/tensorflow_datasets/core/dataset_builder.py'
  assert console.console_filter(_record(ours, logging.INFO))
  assert console.console_filter(_record(ours, logging.WARNING, 'Batch does not divide'))
  assert not console.console_filter(_record(tfds_file, logging.INFO))
  assert console.console_filter(_record(tfds_file, logging.WARNING, 'Disk is full'))
  deprecated = '`FeatureConnector.dtype` is deprecated. Please change your code'
  assert not console.console_filter(_record(tfds_file, logging.WARNING, deprecated))
  assert console.console_filter(_record(tfds_file, logging.ERROR, deprecated))


@pytest.mark.parametrize(
  ('argv', 'given'),
  [
    (['main', '--config=x'], False),
    (['main', '--verbosity=1'], True),
    (['main', '--verbosity', '0'], True),
    (['main', '-v=1'], True),
    (['main', '--config.verbose=1'], False),
  ],
)
def test_verbosity_given(argv, given):
  assert console.verbosity_given(argv) is given


def test_native_stderr_filtered_drops_only_known_noise(capfd):
  with console.native_stderr_filtered(['main']):
    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on. You may see\n')
    os.write(2, b'E0000 something native went wrong\n')
  err = capfd.readouterr().err
  assert 'oneDNN' not in err and 'something native went wrong' in err
  with console.native_stderr_filtered(['main', '--verbosity=0']):
    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\n')
  assert 'oneDNN' in capfd.readouterr().err
