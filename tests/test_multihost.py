"""The pod code path for real: `python -m rock_jax.main` as two processes on localhost.

`launch.local` starts the hosts (the command that `launch.tpu_pod` and `launch.gpu`
build too); they meet through `jax.distributed` on 127.0.0.1 and run collectives
over Gloo, one CPU device each. The reference is one process with two devices, the
same global batch, seed, steps and `data.train_shards=2`, so both see the same
global batches. Checked:
- per-host input shards are disjoint and cover every split (in-process, fast);
- 2 hosts end with the parameters of 1 process; 2 hosts evaluate a 1-process
  checkpoint to the same metrics; checkpoints, `results.json`, panels and events are
  written once, by host 0, and load in one process and in `detect`;
- a 1-process checkpoint resumed on 2 hosts, one host SIGKILLed mid-run: the other
  stops within the heartbeat timeout with a clear message; rerunning both resumes
  and ends with the uninterrupted run's parameters.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import cached_env
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import synthetic
from launch import common, gpu, local, tpu_pod
from rock_jax import checkpoints, detect, input_pipeline, main
from rock_jax.datasets import synthetic_rooms

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/synthetic.py:smoke'
NUM_STEPS = 8
HEARTBEAT_S = 10  # rock_jax.main --heartbeat_timeout in the kill test.
# Largest difference allowed between the final parameters of 1 and 2 processes.
ATOL = 1e-5
# An absl INFO line from Python (`I1204 03:17:30.497599 1401 main.py:96] ...`).
ABSL_INFO = re.compile(r'^I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]', re.MULTILINE)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """The tiny rooms, built once here so that the hosts never build them concurrently."""
  path = str(tmp_path_factory.mktemp('tfds'))
  synthetic_rooms.load_builder('tiny', data_dir=path)
  return path


# ------------------------------------------------------------------ input shards (fast)


def _config(data_dir, **data):
  config = synthetic.get_config('smoke')
  config.data.data_dir = data_dir
  config.train.batch_size = 4
  config.eval.batch_size = 2
  for key, value in data.items():
    setattr(config.data, key, value)
  return config


def _split_ids(data_dir, split):
  ds = tfds.builder('synthetic_rooms/tiny', data_dir=data_dir).as_dataset(split=split)
  return [int(ex['image_id']) for ex in ds.as_numpy_iterator()]


def test_each_host_reads_a_disjoint_shard_of_every_split(data_dir):
  config = _config(data_dir, augment=False)
  # Training examples carry no id: find each by its (un-augmented) image in the split.
  config.eval.batch_size = 8
  (reference,) = input_pipeline.create_eval_dataset(
    config, 'train', process_index=0, process_count=1
  ).as_numpy_iterator()
  id_of = {
    image.tobytes(): int(i)
    for image, i in zip(reference['image'], reference['image_id'], strict=True)
  }
  assert len(id_of) == 8
  seen = []
  for host in range(2):
    dataset = input_pipeline.create_train_dataset(
      config, seed=0, process_index=host, process_count=2
    )
    # One epoch: 8 examples over 2 hosts, host batches of 2.
    for batch in dataset.take(2).as_numpy_iterator():
      seen += [id_of[image.tobytes()] for image in batch['image']]
  assert sorted(seen) == sorted(_split_ids(data_dir, 'train'))  # All of it, once.
  for split in ('validation', 'test'):
    seen = []
    for host in range(2):
      dataset = input_pipeline.create_eval_dataset(
        config, split, process_index=host, process_count=2
      )
      seen += [int(i) for b in dataset.as_numpy_iterator() for i in b['image_id'][b['valid'] > 0]]
    assert sorted(seen) == sorted(_split_ids(data_dir, split)), split


@pytest.mark.parametrize('shards', [2, 4])
def test_global_batches_do_not_depend_on_the_host_count(data_dir, shards):
  config = _config(data_dir, train_shards=shards)

  def batches(index, count, start=0):
    dataset = input_pipeline.create_train_dataset(
      config, seed=3, process_index=index, process_count=count, start_step=start
    )
    return list(dataset.take(3).as_numpy_iterator())

  one = batches(0, 1)
  two = [batches(0, 2), batches(1, 2)]
  resumed = [batches(0, 2, start=1), batches(1, 2, start=1)]
  for step in range(3):
    for key, value in one[step].items():
      np.testing.assert_array_equal(value, np.concatenate([two[0][step][key], two[1][step][key]]))
      if step:
        joined = np.concatenate([resumed[0][step - 1][key], resumed[1][step - 1][key]])
        np.testing.assert_array_equal(value, joined)
  with pytest.raises(ValueError, match='train_shards'):
    input_pipeline.create_train_dataset(
      _config(data_dir, train_shards=3), seed=0, process_index=0, process_count=2
    )  # Not a multiple of 2 hosts.


# ------------------------------------------------------------------ launcher (no runs)


def test_local_plan_and_pod_commands_share_one_builder():
  args = local.build_parser().parse_args(
    [f'--config={CONFIG}', '--workdir=/tmp/w', '--hosts=2', '--port=1234']
    + ['--heartbeat_timeout=7', '--set', 'data.train_shards=2']
  )
  plan = local.build_plan(args, environ={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert len(plan) == 2 and plan[0][0] == plan[1][0]
  command, env = plan[1]
  assert command == common.main_command(
    args.python, CONFIG, '/tmp/w', {'data.train_shards': '2'}, heartbeat_timeout=7
  )
  assert command[-1] == '--heartbeat_timeout=7'
  assert env['JAX_COORDINATOR_ADDRESS'] == '127.0.0.1:1234'
  assert (env['JAX_NUM_PROCESSES'], env['JAX_PROCESS_ID']) == ('2', '1')
  assert env['JAX_NUM_CPU_DEVICES'] == '1' and 'device_count' not in env['XLA_FLAGS']
  one = local.build_plan(
    local.build_parser().parse_args([f'--config={CONFIG}', '--workdir=w', '--hosts=1'])
  )
  assert 'JAX_COORDINATOR_ADDRESS' not in one[0][1]
  # The pod and GPU launchers run the very command builder the local runs exercise.
  pod = tpu_pod.build_parser().parse_args(
    ['train', '--tpu=t', '--zone=z', '--accelerator_type=v4-32', '--bucket=gs://b']
    + [f'--config={CONFIG}', '--heartbeat_timeout=7', '--foreground']
  )
  remote, schedule, _ = tpu_pod.train_plan(pod)
  overrides = {'data.data_dir': 'gs://b/tensorflow_datasets', 'model.dtype': 'bfloat16'}
  pod_command = common.main_command(
    '.venv/bin/python',
    CONFIG,
    'gs://b/rock_jax/t/synthetic_smoke',
    {**overrides, **schedule.overrides()},
    heartbeat_timeout=7,
  )
  assert remote == f'cd ~/rock_jax && {common.shell_join(pod_command)}'
  gpu_args = gpu.build_parser().parse_args([f'--config={CONFIG}', '--workdir=w', '--gpus=0,1'])
  (gpu_command,), gpu_env = gpu.build_plan(gpu_args)
  assert gpu_command == common.main_command('.venv/bin/python', CONFIG, 'w', {})
  assert gpu_env == {'CUDA_VISIBLE_DEVICES': '0,1'}
  bad = local.build_parser().parse_args([f'--config={CONFIG}', '--workdir=w', '--hosts=3'])
  with pytest.raises(common.LaunchError, match='does not split over 3 devices'):
    local.build_plan(bad)


def test_distributed_args_from_the_environment():
  assert main.distributed_args({}) == {}
  environ = {'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1', 'JAX_COORDINATOR_ADDRESS': 'a:1'}
  assert main.distributed_args(environ) == {'num_processes': 2, 'process_id': 1}


def test_launcher_stops_the_other_hosts_after_a_failure(capsys):
  failing = subprocess.Popen([sys.executable, '-c', 'raise SystemExit(3)'])
  hanging = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
  started = time.monotonic()
  assert local.wait([failing, hanging], grace_s=1.0) == 3
  assert hanging.returncode == -signal.SIGKILL and time.monotonic() - started < 60
  err = capsys.readouterr().err
  assert 'host 0 failed with exit status 3' in err and 'host 1 still running' in err


# ------------------------------------------------------------------ real runs (slow)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return cached_env.subprocess_env(tmp_path_factory.mktemp('xla_cache'), REPO)


def launch(workdir, data_dir, env, *, hosts, extra=(), heartbeat=None):
  """Starts `launch.local`'s hosts; returns the processes (stdout+stderr piped)."""
  argv = [f'--config={CONFIG}', f'--workdir={workdir}', f'--hosts={hosts}']
  argv += [f'--devices_per_host={2 // hosts}']
  if heartbeat:
    argv.append(f'--heartbeat_timeout={heartbeat}')
  sets = [
    f'data.data_dir={data_dir}',
    'data.train_shards=2',
    f'train.num_steps={NUM_STEPS}',
    'train.checkpoint_every=2',
    'train.eval_every=0',
    'train.log_every=2',
    *extra,
  ]
  for item in sets:
    argv += ['--set', item]
  plan = local.build_plan(local.build_parser().parse_args(argv), environ=env)
  return local.start(
    plan, base_env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def finish(processes, timeout=600):
  """Waits for every host; returns their outputs; fails on any non-zero exit."""
  outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  for i, (p, out) in enumerate(zip(processes, outputs, strict=True)):
    assert p.returncode == 0, f'host {i}:\n{out[-5000:]}'
  return outputs


def final_variables(workdir, step=NUM_STEPS):
  directory, latest = checkpoints.resolve_checkpoint(workdir)
  assert latest == step
  return checkpoints.load_variables(directory / str(step))


def max_difference(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(flat_a) == len(flat_b)
  return max(float(np.max(np.abs(flat_b[path] - value), initial=0.0)) for path, value in flat_a)


@pytest.fixture(scope='module')
def one_process(tmp_path_factory, data_dir, env):
  workdir = tmp_path_factory.mktemp('one')
  # Keeps every checkpoint: the handoff test starts from step 2.
  finish(launch(workdir, data_dir, env, hosts=1, extra=['train.keep_checkpoints=4']))
  return workdir


@pytest.fixture(scope='module')
def two_hosts(tmp_path_factory, data_dir, env):
  workdir = tmp_path_factory.mktemp('two')
  return workdir, finish(launch(workdir, data_dir, env, hosts=2))


@pytest.mark.slow
def test_two_hosts_train_like_one_process(one_process, two_hosts, tmp_path):
  workdir, (out0, out1) = two_hosts
  difference = max_difference(final_variables(one_process), final_variables(workdir))
  print(f'max |params 2 hosts - params 1 process| = {difference:.3g}')
  assert difference <= ATOL
  # Written once, by host 0: checkpoints complete, one event file, results and panels.
  steps = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  assert steps == [str(s) for s in (NUM_STEPS - 4, NUM_STEPS - 2, NUM_STEPS)]  # No tmp dirs.
  for step in steps:
    assert (workdir / 'checkpoints' / step / 'state').is_dir()
    assert (workdir / 'checkpoints' / step / 'config').is_dir()
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  assert len(list((workdir / 'panels').glob('*.png'))) == 1
  results = json.loads((workdir / 'results.json').read_text())
  assert results['num_images'] == 4  # The test split, every image once.
  assert 'results:' in out0 and 'results:' not in out1
  assert 'JAX process 0 / 2, 1 local / 2 global devices' in out0
  assert ABSL_INFO.search(out0) and not ABSL_INFO.search(out1)  # Host 1: warnings only.
  # A 2-host checkpoint works in one process: `detect` on a few test images.
  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(images / f'{i}.png')
  summary = detect.run(workdir, images, tmp_path / 'out', score_threshold=0.0)
  assert summary['num_images'] == 2
  assert json.loads((tmp_path / 'out' / 'detections.json').read_text())


@pytest.mark.slow
def test_two_hosts_evaluate_a_one_process_checkpoint(one_process, data_dir, env, tmp_path):
  expected = json.loads((one_process / 'results.json').read_text())
  # The checkpoint and split of the 1-process run's final (test) evaluation.
  step, split = expected['checkpoint_step'], expected['split']
  checkpoint = one_process / 'checkpoints' / str(step)
  extra = ['mode=eval', f'init_from={checkpoint}', f'data.eval_split={split}']
  outputs = finish(launch(tmp_path, data_dir, env, hosts=2, extra=extra))
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['step'] == step and results['num_images'] == expected['num_images'] == 4
  numeric = [k for k, v in expected.items() if isinstance(v, float)]
  assert 'mAP@0.5' in numeric and 'depth_rmse' in numeric
  for key in numeric:
    if key.startswith('loss'):
      # The SSD loss normalises by the positives of each batch (hard negatives per batch):
      # it depends on how the images are grouped into batches, which the host count changes.
      continue
    if key.startswith(('mAP', 'AP@')):  # The same detections: the same COCO numbers.
      assert results[key] == pytest.approx(expected[key], abs=1e-9), key
    else:  # float32 sums over other groupings of the images (2 hosts: [0, 2], [1, 3]).
      assert results[key] == pytest.approx(expected[key], rel=1e-6), key
  assert len(list((tmp_path / 'panels').glob('*.png'))) == 1
  assert 'results:' in outputs[0] and 'results:' not in outputs[1]


@pytest.mark.slow
def test_one_process_checkpoint_resumed_on_two_hosts_survives_a_kill(
  one_process, data_dir, env, tmp_path
):
  # Reverse handoff: start from the 1-process run's step-2 checkpoint.
  workdir = tmp_path / 'handoff'
  (workdir / 'checkpoints').mkdir(parents=True)
  shutil.copytree(one_process / 'checkpoints' / '2', workdir / 'checkpoints' / '2')
  processes = launch(workdir, data_dir, env, hosts=2, heartbeat=HEARTBEAT_S)
  target = workdir / 'checkpoints' / '4'
  deadline = time.monotonic() + 600
  while not target.exists() and processes[1].poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  processes[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  out0 = processes[0].communicate(timeout=HEARTBEAT_S + 120)[0]
  stopped_after = time.monotonic() - killed
  processes[1].communicate()  # Reaps it and closes its pipe.
  assert processes[1].returncode == -signal.SIGKILL, 'host 1 ended before it could be killed'
  print(f'host 0 stopped {stopped_after:.1f} s after host 1 was killed')
  assert processes[0].returncode != 0 and stopped_after < HEARTBEAT_S + 60
  assert 'Host 0 of 2 stops' in out0, out0[-3000:]
  last = checkpoints.resolve_checkpoint(workdir)[1]
  assert 2 <= last < NUM_STEPS
  # Rerun both: resume from the last complete checkpoint, end as if never interrupted.
  finish(launch(workdir, data_dir, env, hosts=2))
  difference = max_difference(final_variables(one_process), final_variables(workdir))
  print(f'max |params killed+resumed on 2 hosts - uninterrupted 1 process| = {difference:.3g}')
  assert difference <= ATOL
