"""The tools are libraries too: importing one defines no flags and needs no checkout.

Every module under `rock_jax/tools/` defines its absl flags only when it runs as a
script (a `_cli()` or `define_flags()` called under `if __name__ == '__main__':`), so
tools import each other, and tests import them, without flag clashes. The package's
other modules define none either, but for the trainer's entry point `rock_jax.main`.
"""

import ast
import glob
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'rock_jax')
# Imports each module named on the command line in turn; prints the flags each one added.
# The libraries they import define flags of their own (absl.logging, TensorFlow, TFDS,
# Orbax): absl records the defining module of every flag, and those are left out.
_IMPORT_EACH = """
import importlib, json, sys
from absl import flags

def third_party():
  by_module = flags.FLAGS.flags_by_module_dict()
  names = {f.name for m, fs in by_module.items() if m.split('.')[0] != 'rock_jax' for f in fs}
  return names | {flags.FLAGS[n].short_name for n in names}

added = {}
for name in sys.argv[1:]:
  before = set(flags.FLAGS)
  importlib.import_module(name)
  new = sorted(set(flags.FLAGS) - before - third_party())
  if new:
    added[name] = new
print(json.dumps(added))
"""


def _module_name(path: str) -> str:
  return os.path.relpath(path, REPO).removesuffix('.py').replace(os.sep, '.')


def tool_modules() -> list[str]:
  return sorted(_module_name(p) for p in glob.glob(os.path.join(PACKAGE, 'tools', '*.py')))


def test_every_tool_module_is_listed():
  names = tool_modules()
  assert 'rock_jax.tools.study' in names and 'rock_jax.tools.pretrained_study' in names
  assert 'rock_jax.tools.import_weights' in names and 'rock_jax.tools.__init__' in names


def test_importing_a_tool_defines_no_flags():
  tools = [n.removesuffix('.__init__') for n in tool_modules()]
  # The package's own modules too, all but the trainer's entry point (its flags are its API).
  others = sorted(
    _module_name(p)
    for p in glob.glob(os.path.join(PACKAGE, '*.py'))
    if os.path.basename(p) not in ('__init__.py', 'main.py')
  )
  env = {**os.environ, 'PYTHONPATH': REPO}
  done = subprocess.run(
    [sys.executable, '-c', _IMPORT_EACH, *tools, *others],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  added = json.loads(done.stdout.strip().splitlines()[-1])
  assert added == {}, f'Modules that define flags at import: {added}'


def test_the_package_outside_tools_never_imports_a_tool():
  offenders = []
  for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
    if os.path.relpath(path, PACKAGE).split(os.sep)[0] == 'tools':
      continue
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module, *(f'{node.module}.{alias.name}' for alias in node.names)]
      else:
        continue
      if any(n == 'rock_jax.tools' or n.startswith('rock_jax.tools.') for n in names):
        offenders.append(f'{os.path.relpath(path, REPO)}:{node.lineno}')
  assert not offenders, offenders
