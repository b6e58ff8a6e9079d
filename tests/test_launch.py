"""Tests of the launch scripts: argument handling and the exact commands (never run)."""

import shlex
import subprocess
import warnings

import pytest
from absl import flags
from ml_collections import config_flags

from launch import common, gpu, tpu_pod

CONFIG = 'configs/nyuv2.py'


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch):
  """Fails any test that would really start gcloud or the trainer."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'subprocess.run called: {args}')

  monkeypatch.setattr(subprocess, 'run', refuse)


def parse_config_flags(argv: list[str]):
  """Parses `--config=... --config.x=y` exactly as `rock_jax.main` would."""
  argv = ['prog', *argv]
  flag_values = flags.FlagValues()
  # The overrides are found in `sys_argv` (sys.argv by default).
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=flag_values)
  with warnings.catch_warnings():
    # ml_collections 1.1.0 loads config files with the deprecated `load_module()`.
    warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
    flag_values(argv)
  return flag_values.config, flag_values.workdir


@pytest.mark.parametrize(
  'accelerator_type, devices, hosts',
  [
    ('v3-8', 8, 1),
    ('v3-32', 32, 4),
    ('v4-8', 4, 1),
    ('v4-32', 16, 4),
    ('v5p-128', 64, 16),
    ('v5litepod-8', 8, 1),
    ('v5litepod-32', 32, 8),
    ('v6e-64', 64, 16),
  ],
)
def test_tpu_topology(accelerator_type, devices, hosts):
  topology = tpu_pod.tpu_topology(accelerator_type)
  assert (topology.num_devices, topology.num_hosts) == (devices, hosts)


@pytest.mark.parametrize('bad', ['v9-8', 'v4', 'v4-7', 'tpu-v4-32', ''])
def test_tpu_topology_rejects(bad):
  with pytest.raises(common.LaunchError):
    tpu_pod.tpu_topology(bad)


def test_scale_schedule_keeps_images_seen():
  base = common.Schedule(8, 5e-5, 320_000, (240_000,), 5_000, 5_000)
  sqrt = common.scale_schedule(base, 128, 'sqrt')
  assert sqrt.batch_size == 128
  assert sqrt.num_steps == 20_000 and sqrt.lr_boundaries == (15_000,)
  assert sqrt.eval_every == 313 and sqrt.checkpoint_every == 313  # Rounded up.
  assert sqrt.learning_rate == pytest.approx(2e-4)
  assert common.scale_schedule(base, 128, 'linear').learning_rate == pytest.approx(8e-4)
  assert common.scale_schedule(base, 128, 'none').learning_rate == pytest.approx(5e-5)
  with pytest.raises(common.LaunchError):
    common.scale_schedule(base, 0)
  with pytest.raises(common.LaunchError):
    common.scale_schedule(base, 64, 'cubic')


def test_override_formatting_and_parsing():
  assert common.format_override_value((5,)) == '(5,)'
  assert common.format_override_value((1, 2)) == '(1, 2)'
  assert common.format_override_value(2e-4) == '0.0002'
  assert common.parse_overrides(['train.num_steps=3', 'config.seed=1']) == {
    'train.num_steps': '3',
    'seed': '1',
  }
  for bad in ['train.num_steps', '=3']:
    with pytest.raises(common.LaunchError):
      common.parse_overrides([bad])


def test_gpu_dry_run_multi_gpu(capsys):
  rc = gpu.main(
    [
      f'--config={CONFIG}',
      '--workdir=/tmp/run',
      '--gpus=0,1,2,3',
      '--per_gpu_batch=4',
      '--bf16',
      '--mem_fraction=0.9',
      '--set',
      'train.log_every=10',
      '--dry_run',
    ]
  )
  assert rc == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  argv = shlex.split(lines[0])
  assert argv[:2] == ['CUDA_VISIBLE_DEVICES=0,1,2,3', 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.9']
  assert argv[2:5] == ['.venv/bin/python', '-m', 'rock_jax.main']
  config, workdir = parse_config_flags(argv[5:])
  assert workdir == '/tmp/run'
  assert config.train.batch_size == 16
  assert config.train.learning_rate == pytest.approx(5e-5 * 2**0.5)  # sqrt(16 / 8) x 5e-5.
  assert config.train.num_steps == 20_000 and tuple(config.train.lr_boundaries) == (15_000,)
  assert config.model.dtype == 'bfloat16'
  assert config.train.log_every == 10


def test_gpu_single_gpu_keeps_config(capsys):
  assert gpu.main([f'--config={CONFIG}', '--workdir=w', '--setup', '--dry_run']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == "CUDA_VISIBLE_DEVICES=0 .venv/bin/python -m pip install -q -e '.[cuda]'"
  assert lines[1] == (
    f'CUDA_VISIBLE_DEVICES=0 .venv/bin/python -m rock_jax.main --config={CONFIG} --workdir=w'
  )


@pytest.mark.parametrize(
  'extra, message',
  [
    (['--gpus=0,0'], 'distinct'),
    (['--gpus=a'], 'comma-separated'),
    (['--gpus=0,1,2'], 'does not split over 3 GPUs'),
    (['--per_gpu_batch=0'], 'must be positive'),
    (['--mem_fraction=1.5'], 'mem_fraction'),
    (['--set', 'oops'], 'key=value'),
  ],
)
def test_gpu_errors(capsys, extra, message):
  assert gpu.main([f'--config={CONFIG}', '--workdir=w', '--dry_run', *extra]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and message in err and '\n' not in err


def test_gpu_missing_config(capsys):
  assert gpu.main(['--config=configs/nope.py', '--workdir=w', '--dry_run']) == 2
  assert 'config file not found: configs/nope.py' in capsys.readouterr().err


def test_gpu_runs_commands_from_repo_root(monkeypatch):
  calls = []

  def record(command, cwd, env, check):
    calls.append((command, cwd, env['CUDA_VISIBLE_DEVICES']))
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(subprocess, 'run', record)
  assert gpu.main([f'--config={CONFIG}', '--workdir=w', '--gpus=1']) == 0
  [(command, cwd, visible)] = calls
  assert command[:3] == ['.venv/bin/python', '-m', 'rock_jax.main']
  assert cwd == common.REPO_ROOT and visible == '1'


def test_gpu_stops_on_failure(monkeypatch, capsys):
  calls = []

  def fail(command, **kwargs):
    calls.append(command)
    return subprocess.CompletedProcess(command, 3)

  monkeypatch.setattr(subprocess, 'run', fail)
  assert gpu.main([f'--config={CONFIG}', '--workdir=w', '--setup']) == 3
  assert len(calls) == 1  # The trainer does not start after a failed install.
  assert 'exit status 3' in capsys.readouterr().err


def gcloud_remote(line: str) -> tuple[list[str], str]:
  """Splits a printed gcloud ssh line into its argv and the remote command."""
  argv = shlex.split(line)
  [command] = [a for a in argv if a.startswith('--command=')]
  return argv, command.removeprefix('--command=')


def test_tpu_train_dry_run(capsys):
  rc = tpu_pod.main(
    [
      'train',
      '--tpu=rock',
      '--zone=us-central2-b',
      '--project=proj',
      '--accelerator_type=v4-32',
      '--bucket=gs://bkt/',
      f'--config={CONFIG}',
      '--dry_run',
    ]
  )
  assert rc == 0
  summary, line = capsys.readouterr().out.strip().splitlines()
  assert '4 workers, 16 devices; global batch 128' in summary
  argv, remote = gcloud_remote(line)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'rock']
  assert '--zone=us-central2-b' in argv and '--project=proj' in argv and '--worker=all' in argv
  # Detached on every worker, with a pid file for `stop`.
  assert remote.startswith('cd ~/rock_jax && nohup .venv/bin/python -m rock_jax.main ')
  assert remote.endswith('& echo $! > ~/rock_jax_train.pid')
  main_argv = shlex.split(remote.split(' && nohup ')[1].split(' > ')[0])
  config, workdir = parse_config_flags(main_argv[3:])
  assert workdir == 'gs://bkt/rock_jax/rock/nyuv2'
  assert config.data.data_dir == 'gs://bkt/tensorflow_datasets'
  assert config.train.batch_size == 128 and config.model.dtype == 'bfloat16'
  assert config.train.num_steps == 2_500 and tuple(config.train.lr_boundaries) == (1_875,)
  assert config.train.learning_rate == pytest.approx(2e-4)


def test_tpu_train_foreground_global_batch(capsys):
  rc = tpu_pod.main(
    'train --tpu=t --zone=z --accelerator_type=v5litepod-32 --bucket=gs://b '
    f'--config={CONFIG}:smoke --global_batch=64 --lr_scaling=none --dtype=float32 '
    '--foreground --set train.log_every=7 --dry_run'.split()
  )
  assert rc == 0
  _, line = capsys.readouterr().out.strip().splitlines()
  _, remote = gcloud_remote(line)
  assert 'nohup' not in remote
  main_argv = shlex.split(remote.removeprefix('cd ~/rock_jax && '))
  config, workdir = parse_config_flags(main_argv[3:])
  assert workdir == 'gs://b/rock_jax/t/nyuv2_smoke'
  assert config.data.image_size == (64, 96)  # The :smoke argument reached the config.
  assert config.train.batch_size == 64 and config.train.learning_rate == pytest.approx(5e-5)
  assert config.train.log_every == 7 and config.model.dtype == 'float32'


@pytest.mark.parametrize(
  'extra, message',
  [
    (['--bucket=/local/dir'], '--bucket must be a gs:// path'),
    (['--bucket=gs://b', '--workdir=/tmp/w'], '--workdir must be a gs:// path'),
    (['--bucket=gs://b', '--global_batch=100'], 'multiple of the 16 devices'),
    (['--bucket=gs://b', '--per_device_batch=0'], 'must be positive'),
  ],
)
def test_tpu_train_errors(capsys, extra, message):
  argv = ['train', '--tpu=t', '--zone=z', '--accelerator_type=v4-32', f'--config={CONFIG}']
  assert tpu_pod.main([*argv, *extra, '--dry_run']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and message in err and '\n' not in err


def test_tpu_other_actions(capsys):
  base = ['--tpu=rock', '--zone=z', '--dry_run']
  assert tpu_pod.main(['create', *base, '--accelerator_type=v5litepod-16', '--spot']) == 0
  assert tpu_pod.main(['setup', *base, '--repo=https://example.com/r.git', '--ref=v1']) == 0
  assert tpu_pod.main(['logs', *base, '--lines=5']) == 0
  assert tpu_pod.main(['stop', *base]) == 0
  assert tpu_pod.main(['delete', *base]) == 0
  create, setup, logs, stop, delete = capsys.readouterr().out.strip().splitlines()
  assert create == (
    'gcloud compute tpus tpu-vm create rock --zone=z --accelerator-type=v5litepod-16 '
    '--version=v2-alpha-tpuv5-lite --spot'
  )
  _, remote = gcloud_remote(setup)
  assert 'git clone -q https://example.com/r.git ~/rock_jax' in remote
  assert 'git fetch -q origin v1 && git checkout -q --detach FETCH_HEAD' in remote
  assert remote.endswith(".venv/bin/pip install -q -e '.[tpu]'")
  assert '--worker=0' in shlex.split(logs) and gcloud_remote(logs)[1] == (
    'tail -n 5 ~/rock_jax_train.log'
  )
  assert 'kill "$(cat ~/rock_jax_train.pid)"' in gcloud_remote(stop)[1]
  assert delete == 'gcloud compute tpus tpu-vm delete rock --zone=z --quiet'


def test_tpu_requires_action_and_flags(capsys):
  with pytest.raises(SystemExit):
    tpu_pod.main([])
  with pytest.raises(SystemExit):
    tpu_pod.main(['train', '--tpu=t', '--zone=z'])  # --accelerator_type and --bucket missing.
  capsys.readouterr()


def test_tpu_train_mlt_pretraining_default(capsys):
  """The default is the MLT pretraining config, rescaled to the pod's global batch."""
  argv = ['train', '--tpu=t', '--zone=z', '--accelerator_type=v4-64', '--bucket=gs://b']
  assert tpu_pod.main([*argv, '--dry_run']) == 0
  summary, line = capsys.readouterr().out.strip().splitlines()
  assert '8 workers, 32 devices; global batch 256' in summary
  main_argv = shlex.split(gcloud_remote(line)[1].split(' && nohup ')[1].split(' > ')[0])
  config, workdir = parse_config_flags(main_argv[3:])
  assert workdir == 'gs://b/rock_jax/t/mlt_pretrain'
  reference = common.load_config('configs/mlt_pretrain.py')
  assert config.data.name == 'mlt' and config.model.tasks == reference.model.tasks
  assert (reference.train.num_steps, reference.train.batch_size) == (320_000, 8)
  # 320k steps at batch 8 = 10k steps at batch 256; the decay after 3/4 of them.
  assert config.train.num_steps == 10_000 and tuple(config.train.lr_boundaries) == (7_500,)
  assert config.train.learning_rate == pytest.approx(5e-5 * 32**0.5)
