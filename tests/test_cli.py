"""Tests of the one-line errors at the entry points (`rock_jax.cli`) and of config checks.

Most cases run in process: `cli.parse_flags` on a private `FlagValues` with a real
`--config` flag, and `cli.guard` around a function raising the error a user would
hit. One real subprocess per entry point checks the whole path: one line
`error: ...` on stderr, exit status 2, and no workdir litter.
"""

import errno
import glob
import os
import subprocess
import sys

import cached_env
import pytest
from absl import flags
from ml_collections import config_flags

from configs import synthetic
from rock_jax import cli, train, validate
from rock_jax.datasets import files

# ml_collections loads config files with the deprecated `load_module` (its code, not ours).
pytestmark = pytest.mark.filterwarnings(
  'ignore:the load_module\\(\\) method is deprecated:DeprecationWarning'
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
  os.path.relpath(p, REPO)
  for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
  if not p.endswith(('__init__.py', 'base.py'))
)


def parse(argv, capsys):
  """Runs `cli.parse_flags` on fresh flags; returns (exit code or None, stderr lines)."""
  values = flags.FlagValues()
  # Overrides (`--config.a.b=v`) are found in `sys_argv` when the flag is defined.
  config_flags.DEFINE_config_file(
    'config', None, 'config', flag_values=values, sys_argv=['prog', *argv]
  )
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=values)
  flags.DEFINE_integer('verbosity', 0, 'as absl logging defines it', flag_values=values)
  code = None
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    cli.parse_flags(['prog', *argv], values)
  except SystemExit as e:
    code = e.code
  finally:
    os.chdir(cwd)
  return code, capsys.readouterr().err.strip().splitlines()


def guarded(error, capsys):
  """Runs `cli.guard` around a main that raises `error`; returns (code, stderr lines)."""

  def main(argv):
    del argv
    raise error

  with pytest.raises(SystemExit) as e:
    cli.guard(main)(['prog'])
  return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
  ('argv', 'expected'),
  [
    (
      ['--config=configs/synthetic.py:smoke', '--config.train.lr_typo=1'],
      "no config field 'lr_typo'",
    ),
    (['--config=configs/no_such_file.py'], 'error: config file configs/no_such_file.py: No such'),
    (['--config=configs/nyuv2.py:smok'], 'nyuv2.py takes only "smoke", got \'smok\''),
    (['--config=configs/nyuv2.py:DN,smoke'], 'nyuv2.py takes only "smoke", got \'DN,smoke\''),
    (
      ['--config=configs/synthetic.py', '--config.train.learning_rate=abc'],
      'learning_rate=abc',
    ),
  ],
)
def test_config_errors_are_one_line(argv, expected, capsys):
  code, lines = parse(argv, capsys)
  assert code == cli.EXIT_CODE and len(lines) == 1, lines
  assert lines[0].startswith('error: ') and expected in lines[0], lines


def test_config_syntax_error_names_the_file_and_line(tmp_path, capsys):
  path = tmp_path / 'broken.py'
  path.write_text('def get_config(:\n  pass\n')
  code, lines = parse([f'--config={path}'], capsys)
  assert code == 2 and lines == [f'error: {path}:1: syntax error: invalid syntax']


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_every_config_rejects_unknown_arguments(config_file, capsys):
  code, lines = parse([f'--config={config_file}:bogus'], capsys)
  assert code == 2 and len(lines) == 1 and "'bogus'" in lines[0], lines
  assert parse([f'--config={config_file}:smoke'], capsys)[0] is None  # smoke still works.


def test_traceback_on_request(monkeypatch, capsys):
  with pytest.raises((KeyError, AttributeError)):  # ml_collections' own error, re-raised.
    parse(['--config=configs/synthetic.py', '--config.nope=1', '--verbosity=1'], capsys)
  monkeypatch.setenv(cli.TRACEBACK_ENV, '1')
  with pytest.raises(files.DataError):
    cli.guard(lambda argv: (_ for _ in ()).throw(files.DataError('x: bad')))(['prog'])


@pytest.mark.parametrize(
  ('error', 'expected'),
  [
    (files.DataError('/m/splits.mat: missing key'), 'error: /m/splits.mat: missing key'),
    (
      OSError(errno.ENOSPC, 'No space left on device', '/w/checkpoints/3'),
      'error: /w/checkpoints/3: no space left on device',
    ),
    (
      OSError(errno.EROFS, 'Read-only file system', '/ro/run'),
      'error: /ro/run: read-only file system',
    ),
    (
      PermissionError(errno.EACCES, 'Permission denied', '/root/x'),
      'error: /root/x: Permission denied',
    ),
    (
      AssertionError('Manual directory /m does not exist or is empty.\nInstructions...'),
      'error: Manual directory /m does not exist or is empty.',
    ),
    (validate.ConfigError('config.data.eval_split: bad'), 'error: config.data.eval_split: bad'),
    (train.NonFiniteLossError('Non-finite loss at step 3'), 'error: Non-finite loss at step 3'),
  ],
)
def test_guard_reports_user_errors_in_one_line(error, expected, capsys):
  code, lines = guarded(error, capsys)
  assert code == 2 and lines == [expected]


def test_guard_reports_nyuv2_file_faults_and_lets_bugs_through(tmp_path, capsys):
  path = tmp_path / 'splits.mat'
  path.write_text('trainNdxs = [1 2 3]\n')

  def main(argv):
    del argv
    files.load_splits(path, 8)

  with pytest.raises(SystemExit):
    cli.guard(main)(['prog'])
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {path}: not a readable MATLAB v5')
  with pytest.raises(ZeroDivisionError):  # A bug keeps its traceback.
    cli.guard(lambda argv: 1 / 0)(['prog'])


@pytest.mark.parametrize('content', [b'', b'MATLAB 5.0 MAT-file', b'trainNdxs = [1 2 3]\n'])
def test_short_empty_and_text_splits_mat_raise_data_error(tmp_path, content):
  path = tmp_path / 'splits.mat'
  path.write_bytes(content)
  with pytest.raises(files.DataError, match=r'splits\.mat: not a readable MATLAB v5 file'):
    files.load_splits(path, 8)


@pytest.mark.parametrize(
  ('field', 'value', 'expected'),
  [
    ('data.eval_split', 'valdation', "config.data.eval_split: unknown split 'valdation'"),
    ('data.eval_split', 'test[:10]+valid', "unknown split 'valid'"),
    ('data.name', 'nyu', "config.data.name: unknown dataset 'nyu'"),
    ('model.variant', 'rok', "config.model.variant: unknown variant 'rok'"),
    ('model.tasks', 'scene,dept', "Task 'dept' has no entry"),
    ('mode', 'predict', 'config.mode must be one of'),
  ],
)
def test_config_names_are_checked_before_any_work(tmp_path, field, value, expected):
  config = synthetic.get_config('smoke')
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  workdir = tmp_path / 'run'
  with pytest.raises(validate.ConfigError) as e:
    train.train_and_evaluate(config, str(workdir))
  assert expected in str(e.value) and '\n' not in str(e.value)
  assert not workdir.exists()


def test_nyuv2_official_has_no_validation_split():
  config = synthetic.get_config('smoke')
  config.data.name, config.data.builder_config = 'nyuv2', 'official'
  config.data.eval_split = 'validation'
  with pytest.raises(validate.ConfigError, match="'validation' of nyuv2/official"):
    validate.check_config(config)
  config.data.eval_split = 'test'
  validate.check_config(config)


@pytest.mark.slow
def test_failed_start_leaves_no_litter(tmp_path, monkeypatch):
  """A failure before the first checkpoint removes the events file and empty folders."""
  from rock_jax import input_pipeline

  def no_data(*args, **kwargs):
    raise files.DataError('/manual/nyu_depth_v2_labeled.mat: missing file')

  monkeypatch.setattr(input_pipeline, 'create_train_dataset', no_data)
  config = synthetic.get_config('smoke')
  (tmp_path / 'existing').mkdir()
  (tmp_path / 'existing' / 'notes.txt').write_text('mine')
  for workdir in (tmp_path / 'new', tmp_path / 'existing'):
    with pytest.raises(files.DataError):
      train.train_and_evaluate(config, str(workdir))
  assert not (tmp_path / 'new').exists()
  assert os.listdir(tmp_path / 'existing') == ['notes.txt']


# ------------------------------------------------------------------ real subprocesses


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return cached_env.subprocess_env(tmp_path_factory.mktemp('xla_cache'), REPO)


@pytest.mark.slow
def test_every_entry_point_prints_one_line_and_exits_2(tmp_path, env):
  """Each CLI as a user runs it, all at once (each start imports JAX or TensorFlow)."""
  workdir = tmp_path / 'run'
  cases = {
    'main': (
      [
        '-m',
        'rock_jax.main',
        '--config=configs/synthetic.py:smoke',
        '--config.data.eval_split=valdation',
        f'--workdir={workdir}',
      ],
      "error: config.data.eval_split: unknown split 'valdation' of synthetic_rooms",
    ),
    'main_typo': (
      ['-m', 'rock_jax.main', '--config=configs/nyuv2.py:smok', f'--workdir={workdir}'],
      'error: flag --config=configs/nyuv2.py:smok: nyuv2.py takes only',
    ),
    'summary': (
      ['-m', 'rock_jax.tools.summary', '--config=configs/missing.py'],
      'error: config file configs/missing.py: No such file or directory',
    ),
    'bench': (
      ['-m', 'rock_jax.tools.bench', '--config=configs/synthetic.py', '--config.modl.x=1'],
      "no config field 'modl'",
    ),
    'bench_input': (['-m', 'rock_jax.tools.bench_input', '--batches=many'], 'error: '),
    'recall_ceiling': (['-m', 'rock_jax.tools.recall_ceiling', '--nope'], 'error: '),
    'study': (['-m', 'rock_jax.tools.study', '--seeds=x'], "error: --seeds: 'x' is not an integer"),
    'import_weights': (
      [
        '-m',
        'rock_jax.tools.import_weights',
        '--format=torchvision',
        f'--input={tmp_path / "none.safetensors"}',
        f'--output={tmp_path / "out"}',
      ],
      f'error: {tmp_path / "none.safetensors"}: no such file.',
    ),
  }
  procs = {
    name: subprocess.Popen(
      [sys.executable, *args],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, (args, _) in cases.items()
  }
  outcomes = {}
  try:
    for name, proc in procs.items():
      outcomes[name] = (proc.communicate(timeout=300)[1], proc.returncode)
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  for name, (stderr, returncode) in outcomes.items():
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert returncode == 2, (name, stderr[-3000:])
    assert len(errors) == 1 and cases[name][1] in errors[0], (name, stderr[-3000:])
    assert 'Traceback' not in stderr, (name, stderr[-3000:])
  assert not workdir.exists()
