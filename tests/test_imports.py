"""Imports run one way: each part of `rock_jax` imports only the parts below it.

An AST scan of every module's `rock_jax` imports against `ALLOWED`, the dependency table
of docs/DESIGN.md ("Module map"). A group is a package (`configs`, `datasets`, `models`,
`tools`) or a top-level module; imports inside a group are free. The table itself must
be acyclic, nothing but a tool imports a tool, and a module the table does not know
fails the test (so a new module gets its line in the table and in DESIGN.md).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'rock_jax'
_PACKAGES = ('configs', 'datasets', 'models', 'tools')

# group -> the groups it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
  # Leaves: no rock_jax import.
  'tasks': set(),
  'boxes': set(),
  'console': set(),
  'huge_pages': set(),
  'augment': set(),
  'panels': set(),
  'coco': set(),
  'optim': set(),
  'preflight': set(),
  'checkpoints': set(),
  'configs': set(),
  'datasets': set(),
  # Model, losses and the data pipeline.
  'models': {'tasks', 'boxes'},
  'matching': {'boxes'},
  'postprocess': {'boxes'},
  'losses': {'tasks'},
  'weighting': {'tasks', 'losses'},
  'input_pipeline': {'augment', 'boxes', 'console', 'matching', 'tasks'},
  'cli': {'configs', 'datasets'},
  'validate': {'cli', 'losses', 'models', 'tasks'},
  # Evaluation and reporting.
  'metrics': {'losses', 'postprocess', 'tasks', 'models'},
  'reporting': {'coco', 'tasks'},
  'eval_loop': {'boxes', 'coco', 'input_pipeline', 'metrics', 'panels', 'reporting', 'tasks', 'models'},
  'serving': {'boxes', 'postprocess', 'input_pipeline'},
  'inference': {'boxes', 'checkpoints', 'cli', 'input_pipeline', 'tasks', 'models'},
  # Entry points.
  'train': {
    'checkpoints', 'eval_loop', 'inference', 'input_pipeline', 'losses', 'optim', 'preflight',
    'reporting', 'tasks', 'validate', 'weighting', 'models',
  },
  'detect': {'cli', 'coco', 'inference', 'input_pipeline', 'panels', 'postprocess', 'serving', 'tasks', 'models', 'boxes'},
  'export': {'cli', 'detect', 'inference', 'input_pipeline', 'postprocess', 'serving'},
  'main': {'cli', 'console', 'huge_pages', 'preflight', 'train'},
  # Tools are leaves of the other direction: scripts that nothing in the package imports.
  'tools': {
    'augment', 'boxes', 'checkpoints', 'cli', 'coco', 'configs', 'console', 'datasets',
    'detect', 'eval_loop', 'export', 'huge_pages', 'inference', 'input_pipeline', 'losses',
    'metrics', 'models', 'panels', 'postprocess', 'reporting', 'serving', 'tasks', 'train',
    'weighting',
  },
}  # fmt: skip


def _group(module: str) -> str:
  """'rock_jax.models.rock' -> 'models'; 'rock_jax.train' -> 'train'."""
  parts = module.split('.')[1:]
  return parts[0] if parts else ''


def imports_of(path: pathlib.Path) -> set[str]:
  """The `rock_jax` modules a file imports (anywhere in it, lazy imports included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('rock_jax')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('rock_jax'):
      if node.module == 'rock_jax':  # `from rock_jax import train`: a module each.
        found |= {f'rock_jax.{a.name}' for a in node.names}
      else:
        found.add(node.module)
  return found


def _modules() -> dict[str, set[str]]:
  out = {}
  for path in sorted(ROOT.rglob('*.py')):
    module = '.'.join(path.relative_to(ROOT.parent).with_suffix('').parts)
    out[module] = imports_of(path)
  return out


def test_every_module_has_a_place_in_the_table():
  unknown = sorted(m for m in _modules() if _group(m) not in ALLOWED and not m.endswith('__init__'))
  assert not unknown, f'add these to ALLOWED and to docs/DESIGN.md: {unknown}'


@pytest.mark.parametrize('module', sorted(_modules()))
def test_imports_run_downward(module):
  group = _group(module)
  for imported in _modules()[module]:
    target = _group(imported)
    if target in ('', group):
      continue
    assert target in ALLOWED.get(group, set()), f'{module} imports {imported}: upward'


def test_the_table_is_acyclic_and_nothing_imports_a_tool():
  assert not [g for g, deps in ALLOWED.items() if 'tools' in deps]
  order, placed = [], set()
  while len(placed) < len(ALLOWED):
    ready = [g for g, deps in ALLOWED.items() if g not in placed and deps <= placed]
    assert ready, f'cycle among {sorted(set(ALLOWED) - placed)}'
    placed |= set(ready)
    order += sorted(ready)
  assert set(order) == set(ALLOWED)


def test_the_scan_sees_an_upward_import(tmp_path):
  """The check can fail: a train-like file importing a tool is caught."""
  bad = tmp_path / 'bad.py'
  bad.write_text('def f():\n  from rock_jax.tools import import_weights\n')
  assert imports_of(bad) == {'rock_jax.tools'}
  assert 'tools' not in ALLOWED['train']
