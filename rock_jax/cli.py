"""One-line errors at the command-line entry points.

Every CLI (`rock_jax.main`, `rock_jax.detect`, `rock_jax.tools.*`) starts through
`run(main)` instead of `absl.app.run(main)`. Flags are parsed and every
`--config` file is loaded first, then `main` runs; a user error at any point (a
config typo or a bad config argument, a missing config file, a dataset file
fault, a damaged checkpoint, a full or read-only disk, ...) prints one line

  error: <file or field>: <problem>

on stderr and exits with status 2, with no traceback. `--verbosity=1` (or any
`-v`), or the environment variable `ROCK_JAX_TRACEBACK=1`, re-raises instead,
so the full traceback is there for debugging.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

EXIT_CODE = 2
TRACEBACK_ENV = 'ROCK_JAX_TRACEBACK'
# OS errors that are the user's to fix (paths, permissions, space), not bugs.
_USER_ERRNOS = {
  errno.ENOENT,
  errno.EACCES,
  errno.EPERM,
  errno.EROFS,
  errno.ENOSPC,
  errno.EDQUOT,
  errno.EEXIST,
  errno.ENOTDIR,
  errno.EISDIR,
}


class UserError(Exception):
  """A failure the user fixes (bad input, bad config); `str(error)` is one line."""


def user_error_types() -> tuple[type[BaseException], ...]:
  """The exception types reported in one line (the project's own and known user errors).

  Imported lazily so that this module stays cheap to import.
  """
  from rock_jax.datasets import files  # noqa: PLC0415

  types: list[type[BaseException]] = [UserError, files.DataError, FloatingPointError]
  for module, name in (
    ('rock_jax.checkpoints', 'CheckpointError'),
    ('rock_jax.detect', 'DetectError'),
    ('rock_jax.inference', 'LoadError'),
    ('rock_jax.tools.import_weights', 'WeightImportError'),
  ):
    loaded = sys.modules.get(module)
    if loaded is not None and hasattr(loaded, name):
      types.append(getattr(loaded, name))
  return tuple(types)


def want_traceback(argv: Sequence[str] = ()) -> bool:
  """Whether to show tracebacks: `ROCK_JAX_TRACEBACK=1`, or a verbosity of 1 or more."""
  if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
    return True
  try:
    if flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].value >= 1:
      return True
  except (KeyError, AttributeError):
    pass
  for arg in argv:  # Before the flags are parsed.
    match = re.fullmatch(r'--?(?:verbosity|v)=(-?\d+)', arg)
    if match and int(match.group(1)) >= 1:
      return True
  return False


def one_line(error: BaseException, max_lines: int = 1) -> str:
  """A one-line description of `error` for the user (file and problem where known).

  `max_lines` > 1 joins that many lines of a multi-line message, and says how many more
  there were.
  """
  text = str(error)
  if isinstance(error, KeyError) and error.args:
    text = str(error.args[0])
  if isinstance(error, OSError) and 'Failed loading config file' in text:
    return _config_load_message(text)
  if isinstance(error, OSError) and error.filename and error.strerror:
    what = {errno.EROFS: 'read-only file system', errno.ENOSPC: 'no space left on device'}
    problem = what.get(error.errno, error.strerror)
    return f'{error.filename}: {problem}'
  if isinstance(error, SyntaxError) and error.filename:
    return f'{error.filename}:{error.lineno}: syntax error: {error.msg}'
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  more = f' (and {len(lines) - max_lines} more)' if len(lines) > max_lines > 1 else ''
  return ' '.join(lines[:max_lines]) + more


def _config_load_message(text: str) -> str:
  """Reduces ml_collections' multi-line 'Failed loading config file' to its cause."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  path = next((line for line in lines if line.endswith('.py') or '.py:' in line), None)
  match = re.search(r'\[Errno \d+\] ([^:]+)', text)
  cause = match.group(1) if match else lines[-1]
  return f'config file {path}: {cause}' if path else f'config file: {cause}'


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is reported in one line rather than with a traceback."""
  if isinstance(error, user_error_types()):
    return True
  if isinstance(error, OSError):
    return error.errno in _USER_ERRNOS or 'Failed loading config file' in str(error)
  if isinstance(error, AssertionError):  # TFDS reports a missing manual_dir this way.
    return str(error).lstrip().startswith('Manual directory')
  return False


def fail(message: str) -> None:
  """Prints `error: message` on stderr and exits with status 2."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_CODE)


_fail = fail  # `parse_flags` wraps it.


def _config_parse_message(text: str) -> str:
  """Reduces absl's flag error (with ml_collections' traceback inside) to one line."""
  unknown = re.search(r"Unknown command line flag '((\w+)\.[\w.]+)'", text)
  if unknown and '.' in unknown.group(1):  # A config override naming no field.
    return f'--{unknown.group(1)}: no config field {unknown.group(1).rsplit(".", 1)[-1]!r}'
  if 'Error whilst parsing config file' not in text:
    return one_line(flags.Error(text))
  flag = text.split(': Error whilst parsing', 1)[0].strip()
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  cause = re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', lines[-1])
  return f'{flag}: {cause}'


def _config_override(argv: Sequence[str], key: str) -> str | None:
  """The `--config.a.b=v` argument that names `key`, if any."""
  for arg in argv:
    name = arg.split('=', 1)[0]
    if name.startswith('--') and '.' in name and key in name.lstrip('-').split('.')[1:]:
      return arg
  return None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses the flags and loads every config file, failing in one line.

  Used as `app.run`'s `flags_parser`: a config typo, a bad config argument, a
  missing config file or a syntax error fails here, before any work. A `--config`
  given as the short name of a shipped config (`nyuv2`, `synthetic:smoke`) is mapped
  to its file first (`rock_jax.configs.resolve_argv`).

  Args:
    argv: the command line, program name first.
    flag_values: the flags to parse into.

  Returns:
    The arguments left after the flags.
  """
  from rock_jax import configs  # noqa: PLC0415

  typed = list(argv)
  argv = configs.resolve_argv(argv)

  def fail(message: str) -> None:  # Names the config as the user typed it.
    for given, resolved in zip(typed, argv, strict=True):
      if given != resolved:
        message = message.replace(resolved, given)
    _fail(message)

  try:
    remaining = flag_values(argv)
    for name in list(flag_values):
      flag = flag_values[name]
      if type(flag).__name__ == '_ConfigFlag' and flag.value is not None:
        # A config that failed to load raises on first use: use it now.
        flag.value.keys  # noqa: B018
    return remaining
  except flags.Error as e:
    if want_traceback(argv):
      raise
    fail(_config_parse_message(str(e)))
  except (KeyError, AttributeError) as e:
    if want_traceback(argv):
      raise
    key = str(e.args[0]).strip('\'"').split("'")[0] if e.args else ''
    arg = _config_override(argv, key)
    fail(f'{arg}: no config field {key!r}' if arg else f'config: no field {key!r}')
  except (ValueError, TypeError, OSError, SyntaxError) as e:
    if want_traceback(argv):
      raise
    arg = next((a for a in argv if a.startswith('--config=')), '--config')
    message = one_line(e)
    if isinstance(e, OSError | SyntaxError):  # The message names the file.
      fail(message)
    fail(f'{arg}: {message}')
  return []


def guard(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps `main` so that user errors print one line and exit 2."""

  def guarded(argv: list[str]) -> None:
    try:
      main(argv)
    except Exception as e:
      if want_traceback() or not is_user_error(e):
        raise
      fail(one_line(e))

  return guarded


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with one-line errors (see the module docstring)."""
  app.run(guard(main), flags_parser=parse_flags)
