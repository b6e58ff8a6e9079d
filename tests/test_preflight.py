"""Start-up checks: no silent from-scratch backbone, missing data in one line, documented commands.

The documented commands (README, docs/EXPERIMENTS.md) are parsed with the real flag
parser and run through the start-up checks; one NYUv2 command runs for real as a
subprocess and must stop with one line about the missing files.
"""

import os
import re
import shlex
import subprocess
import sys
import time
import warnings

import cached_env
import pytest
from absl import flags
from ml_collections import config_flags

from rock_jax import configs, preflight, train
from rock_jax.configs import cityscapes, mlt_pretrain, nyuv2, nyuv2_finetune, synthetic
from rock_jax.datasets import nyuv2 as nyuv2_builder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ('README.md', 'docs/EXPERIMENTS.md')
TF_NOTICE = re.compile(
  r'^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\])'
)


def parse(argv: list[str]):
  """`--config` and its overrides, parsed as `rock_jax.main` does (short names too)."""
  argv = configs.resolve_argv(['prog', *argv])
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string('workdir', None, '', flag_values=flag_values)
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
    flag_values(argv)
  return flag_values.config, flag_values.workdir


def one_line(error: Exception) -> str:
  text = str(error)
  assert '\n' not in text, text
  return text


@pytest.mark.parametrize('module', [nyuv2, nyuv2_finetune, mlt_pretrain, cityscapes])
def test_paper_configs_refuse_to_start_without_imagenet_weights(module, tmp_path):
  config = module.get_config()
  if module is nyuv2_finetune:
    config.init_from = None  # Its command always names the MLT run; without it, ImageNet.
  with pytest.raises(preflight.StartupError) as error:
    preflight.check_backbone_init(config, tmp_path)
  text = one_line(error.value)
  assert '--config.init_backbone=DIR' in text and '--config.init_backbone=scratch' in text


def test_refusal_comes_before_the_model_is_built(tmp_path, monkeypatch):
  built = []
  monkeypatch.setattr(train.detector, 'build_model', lambda *a, **k: built.append(1))
  monkeypatch.setattr(preflight, 'check_data', lambda config: None)  # As if NYUv2 were there.
  with pytest.raises(preflight.StartupError, match='init_backbone'):
    train.train_and_evaluate(nyuv2.get_config(), str(tmp_path / 'run'))
  assert not built and not (tmp_path / 'run').exists()


def test_scratch_opt_out_unfreezes_bn_and_weights_or_resume_pass(tmp_path):
  config = nyuv2.get_config()
  assert config.model.backbone.freeze_bn_stats
  config.init_backbone = 'scratch'
  resolved = preflight.check_backbone_init(config, tmp_path)
  assert resolved.init_backbone == 'scratch' and not resolved.model.backbone.freeze_bn_stats
  # Relative weights folders are taken from the current directory; a missing one fails.
  weights = tmp_path / 'weights'
  weights.mkdir()
  config.init_backbone = os.path.relpath(weights)
  assert preflight.check_backbone_init(config, tmp_path).init_backbone == str(weights)
  config.init_backbone = 'no/such/folder'
  with pytest.raises(preflight.StartupError, match='no/such/folder: no such directory'):
    preflight.check_backbone_init(config, tmp_path)
  # A run resuming its own workdir needs no weights; nor does the CPU demo (BN trained).
  config.init_backbone = None
  (tmp_path / 'checkpoints' / '5').mkdir(parents=True)
  preflight.check_backbone_init(config, tmp_path)
  preflight.check_backbone_init(synthetic.get_config(), tmp_path / 'fresh')


@pytest.mark.parametrize(
  ('module', 'files'),
  [
    (nyuv2, ('nyu_depth_v2_labeled.mat', 'splits.mat', 'http://horatio.cs.nyu.edu/')),
    (mlt_pretrain, ('data_goodlist_v2.txt', 'mlt_v2', 'https://github.com/yindaz/pbrs')),
    (cityscapes, ('leftImg8bit', 'gtFine', 'https://www.cityscapes-dataset.com/')),
  ],
)
def test_missing_manual_files_fail_in_one_line(module, files, tmp_path):
  config = module.get_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path / 'manual')
  with pytest.raises(preflight.StartupError) as error:
    preflight.check_data(config)
  text = one_line(error.value)
  assert str(tmp_path / 'manual') in text and str(tmp_path / 'tfds') in text
  for name in files:
    assert name in text


def _documented_commands() -> list[tuple[str, list[str]]]:
  commands = []
  for doc in DOCS:
    with open(os.path.join(REPO, doc)) as f:
      text = f.read().replace('\\\n', ' ')
    for match in re.finditer(r'python -m rock_jax\.main [^`\n|]*', text):
      if '<' in match.group(0):
        continue  # A template such as `--config=configs/<experiment>.py`.
      args = shlex.split(match.group(0))[3:]
      commands.append((doc, [a for a in args if a.startswith('--')]))
  return commands


def test_documented_commands_name_the_backbone_and_reach_the_data_check(tmp_path):
  commands = _documented_commands()
  assert len(commands) > 25
  real_data = 0
  for doc, args in commands:
    config, _ = parse(args)
    if config.data.name == 'synthetic_rooms':
      continue
    if config.mode == 'train':
      assert any(a.startswith(('--config.init_backbone=', '--config.init_from=')) for a in args), (
        doc,
        args,
      )
    config.data.data_dir = str(tmp_path / 'empty_tfds')  # Nothing is prepared here.
    with pytest.raises(preflight.StartupError, match='original files are missing'):
      preflight.run(config, str(tmp_path / 'run'))
    real_data += 1
  assert real_data > 20


@pytest.mark.slow
def test_readme_nyuv2_command_fails_first_in_one_line(tmp_path):
  """The README's NYUv2 command, as written, on a machine without the NYUv2 files."""
  [command] = [args for doc, args in _documented_commands() if doc == 'README.md' and
               args[0] == '--config=configs/nyuv2.py']  # fmt: skip
  env = cached_env.subprocess_env(tmp_path / 'xla', REPO)
  env['TFDS_DATA_DIR'] = str(tmp_path / 'tfds')
  workdir = os.path.join(REPO, command[-1].removeprefix('--workdir='))
  existed = os.path.exists(workdir)
  start = time.time()
  result = subprocess.run(
    [sys.executable, '-m', 'rock_jax.main', *command],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  seconds = time.time() - start
  assert result.returncode == 2  # cli.EXIT_CODE: a user error
  # TensorFlow's native import notices (absl C++ log lines, e.g. the oneDNN one) print
  # on every import whatever TF_CPP_MIN_LOG_LEVEL says; everything else must be one line.
  lines = [
    line for line in result.stderr.splitlines() if line.strip() and not TF_NOTICE.match(line)
  ]
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith('error: dataset nyuv2/paper is not prepared')
  assert nyuv2_builder.MAT_FILE in lines[0] and '/data/nyuv2' in lines[0]
  assert existed or not os.path.exists(workdir)  # Nothing built, nothing written.
  assert seconds < 120, seconds


def test_config_short_names_resolve(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Outside the checkout: no `configs/` here.
  assert configs.resolve('nyuv2') == os.path.join(configs.CONFIG_DIR, 'nyuv2.py')
  assert configs.resolve('nyuv2_tasks.py:DN,smoke').endswith(
    'rock_jax/configs/nyuv2_tasks.py:DN,smoke'
  )
  assert configs.resolve('unknown') == 'unknown'
  config, _ = parse(['--config=nyuv2_tasks:DN', '--config.train.num_steps=7'])
  assert config.model.tasks == 'depth,normals' and config.train.num_steps == 7
  assert {'nyuv2', 'synthetic', 'mlt_pretrain', 'cityscapes'} <= set(configs.names())


def test_no_config_selects_on_the_test_split():
  """Model selection never reads test (the repository hook greps the same)."""
  for path in sorted(os.listdir(configs.CONFIG_DIR)):
    if path.endswith('.py'):
      with open(os.path.join(configs.CONFIG_DIR, path)) as f:
        assert not re.search(r"eval_split *= *'test'", f.read()), path
  for name in configs.names():
    if name in ('nyuv2_tasks', 'nyuv2_flat_mtl', 'nyuv2_depth_fusion', 'nyuv2_fraction'):
      continue  # Need an argument; they derive from base like the others.
    config, _ = parse([f'--config={name}'])
    assert config.data.eval_split != 'test' and config.data.eval_split != config.data.test_split
