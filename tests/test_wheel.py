"""A non-editable install works from anywhere: wheel -> fresh venv -> a paper config (smoke).

The wheel is built from a copy of the package (nothing is written into the checkout)
and installed with `--no-deps` into a new venv that borrows this interpreter's
installed dependencies through a `.pth` line (so no download). `rock_jax` itself
then comes from the wheel only: the run happens in a folder outside the checkout,
without PYTHONPATH, and the test checks where `rock_jax` was imported from.
"""

import glob
import os
import shutil
import site
import subprocess
import sys
import zipfile

import fake_datasets as fd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imports the tools that used to import the checkout's `configs` (importing a tool defines
# no flags), then says where rock_jax and `configs` come from.
_IMPORT_TOOLS = """
import importlib, importlib.util
import rock_jax
for name in ('study', 'pretrained_study', 'recall_ceiling', 'bench_input'):
  importlib.import_module('rock_jax.tools.' + name)
print(rock_jax.__file__)
print(importlib.util.find_spec('configs'))
"""


def _run(args, **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(args, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-5000:])
  return result


@pytest.mark.slow
def test_wheel_runs_a_paper_config_outside_the_checkout(tmp_path):
  # Build the wheel from a copy of what it ships (pyproject, README, the package).
  source = tmp_path / 'source'
  source.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), source / name)
  shutil.copytree(
    os.path.join(REPO, 'rock_jax'),
    source / 'rock_jax',
    ignore=shutil.ignore_patterns('__pycache__'),
  )
  dist = tmp_path / 'dist'
  _run(
    [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
     '-w', str(dist), str(source)],
    timeout=300,
  )  # fmt: skip
  [wheel] = glob.glob(str(dist / 'rock_jax-*.whl'))
  names = zipfile.ZipFile(wheel).namelist()
  assert 'rock_jax/configs/nyuv2.py' in names and 'rock_jax/configs/base.py' in names
  assert not [n for n in names if n.startswith('configs/')]  # No generic top-level module.

  # A fresh venv with the wheel; the dependencies come from this interpreter's site-packages.
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], timeout=120)
  python = str(venv / 'bin' / 'python')
  venv_site = _run(
    [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']
  ).stdout.strip()
  with open(os.path.join(venv_site, 'borrowed_dependencies.pth'), 'w') as f:
    f.write('\n'.join(site.getsitepackages()) + '\n')
  _run(
    [sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps',
     '--no-index', wheel],
    timeout=300,
  )  # fmt: skip

  # Fake NYUv2 files; run from a folder outside the checkout, relative paths throughout.
  outside = tmp_path / 'elsewhere'
  fd.write_nyu(str(outside / 'nyu_manual'))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'xla'),
    XLA_FLAGS=(env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip(),
  )
  where = _run(
    [
      python,
      '-c',
      _IMPORT_TOOLS,
    ],
    cwd=outside,
    env=env,
    timeout=300,
  ).stdout.split()
  assert where[0].startswith(venv_site), where
  assert where[1] == 'None'  # No `configs` module anywhere on the path.
  result = _run(
    [
      python,
      '-m',
      'rock_jax.main',
      '--config=nyuv2:smoke',  # The short name of the shipped paper config.
      '--workdir=run',
      '--config.data.data_dir=tfds',
      '--config.data.manual_dir=nyu_manual',
      # The 6 fake train images are too few for the paper's 122-image validation split.
      '--config.data.builder_config=official',
      '--config.data.eval_split=',
      '--config.train.num_steps=2',
    ],
    cwd=outside,
    env=env,
    timeout=900,
  )
  assert '(test split, step 2,' in result.stdout, result.stdout[-3000:]
  assert (outside / 'run' / 'results.json').exists()
  assert (outside / 'run' / 'checkpoints' / '2').is_dir()
