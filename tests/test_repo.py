"""Repository hygiene: CI runs the README's test command; code is formatted and linted."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
  text = (ROOT / 'README.md').read_text()
  return re.findall(r'```bash\n(.+?)\n```', text)


def test_readme_opens_with_demo_and_test_commands():
  commands = _readme_commands()
  assert len(commands) >= 2, 'README must open with the demo and the test command'
  demo, test = commands[0], commands[1]
  assert 'rock_jax.main' in demo and 'configs/synthetic.py' in demo
  assert 'pytest' in test


def test_ci_runs_the_readme_test_command():
  test_command = _readme_commands()[1]
  ci_lines = (ROOT / '.ci' / 'run').read_text().splitlines()
  assert test_command in ci_lines, f'.ci/run must run {test_command!r} verbatim'


def _ruff(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'ruff', *args], cwd=ROOT, capture_output=True, text=True
  )


def test_ruff_lint_clean():
  result = _ruff('check', '.')
  assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean():
  result = _ruff('format', '--check', '.')
  assert result.returncode == 0, result.stdout + result.stderr
