"""What the console shows: quiet third-party logs and one progress bar for dataset builds.

By default (no `--verbosity` flag) a run prints what a person follows: this
project's log records (INFO and up), everyone's errors, the trainer's progress
lines and evaluation tables (`rock_jax.reporting`). Hidden unless `--verbosity` is
given on the command line:
- INFO records of TensorFlow, TFDS, JAX, Orbax, CLU and other libraries (absl
  routes Python logging through one handler; a filter drops them);
- TensorFlow's native (C++) start-up lines (oneDNN, CPU features), which TensorFlow
  writes to file descriptor 2 while it loads, before any log level applies:
  `native_stderr_filtered` captures what the imports write there and passes on all
  but `NATIVE_NOISE`;
- a short list of known third-party warnings (`KNOWN_WARNINGS`) that say nothing
  about this run, e.g. TFDS's own use of a deprecated field.
Warnings and errors from this project always show.

`build_progress(builder)` prepares a TFDS builder with one tqdm bar over all the
examples of all splits instead of TFDS's per-split and per-shuffle bars and prints.
"""

from __future__ import annotations

import contextlib
import io
import logging as std_logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import tqdm

# Substrings of third-party warning messages that are hidden by default: each is
# raised by a library about its own internals (nothing this project can change).
KNOWN_WARNINGS = (
  '`FeatureConnector.dtype` is deprecated',  # TFDS, inside its own decoders.
  'has no dataset_info.json',  # TFDS, on the first build of a dataset.
  'Requested `tracked_metric`; did not provide metrics',  # Orbax, on saves without metrics.
  'Unable to initialize backend',  # JAX probing for TPU / GPU plugins on a CPU machine.
)
# Native start-up lines of TensorFlow (C++ INFO, printed while it loads).
NATIVE_NOISE = (
  'All log messages before absl::InitializeLog() is called',
  'oneDNN custom operations are on',
  'cpu_feature_guard.cc',
  'To enable the following instructions:',
)
# Path fragment of this project's sources: their records always show.
_OWN = f'{os.sep}rock_jax{os.sep}'


def verbosity_given(argv: Sequence[str]) -> bool:
  """Whether the command line sets absl's `--verbosity` (or `-v`)."""
  return any(
    a == '-v' or a.startswith(('--verbosity', '-v=', '--v=')) or a == '--v' for a in argv[1:]
  )


@contextlib.contextmanager
def native_stderr_filtered(argv: Sequence[str] = sys.argv) -> Iterator[None]:
  """Drops `NATIVE_NOISE` lines that native code writes to stderr inside the block.

  Wrap the imports of TensorFlow (and what imports it). Everything else written to
  file descriptor 2 meanwhile is passed on when the block ends (also on an error).
  No-op with `--verbosity`.
  """
  if verbosity_given(argv):
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines(keepends=True)
      kept = [line for line in lines if not any(noise in line for noise in NATIVE_NOISE)]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


def console_filter(record: std_logging.LogRecord) -> bool:
  """Log filter of the default console: False (drop) for third-party chatter.

  Keeps every record of this project, and third-party records at ERROR, or at
  WARNING unless they are one of `KNOWN_WARNINGS`.
  """
  if _OWN in record.pathname:
    return True
  if record.levelno >= std_logging.ERROR:
    return True
  if record.levelno < std_logging.WARNING:
    return False
  message = record.getMessage()
  return not any(known in message for known in KNOWN_WARNINGS)


def configure(argv: Sequence[str] = sys.argv) -> None:
  """Sets up the default console (see the module docstring); no-op with `--verbosity`.

  Args:
    argv: the command line, to detect `--verbosity`.
  """
  if verbosity_given(argv):
    return
  from absl import logging  # noqa: PLC0415  (absl is loaded by now; keep this module light)

  logging.get_absl_handler().addFilter(console_filter)
  for known in KNOWN_WARNINGS:
    warnings.filterwarnings('ignore', message=f'.*{re.escape(known)}')
  # TFDS's own bars are replaced by build_progress's single bar.
  import tensorflow_datasets as tfds  # noqa: PLC0415

  tfds.display_progress_bar(False)


def _expected_examples(builder: Any) -> int | None:
  """The number of examples a builder will generate, when its config says so."""
  config = getattr(builder, 'builder_config', None)
  counts = [getattr(config, f'num_{s}', None) for s in ('train', 'validation', 'test')]
  if config is None or any(not isinstance(c, int) for c in counts):
    return None
  return sum(counts)


def _counted(examples: Iterable[Any], bar: tqdm.tqdm) -> Iterator[Any]:
  for example in examples:
    yield example
    bar.update(1)


@contextlib.contextmanager
def _single_bar(builder: Any, bar: tqdm.tqdm) -> Iterator[None]:
  """Counts every generated example of `builder` on `bar`; TFDS's bars and prints off."""
  from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415

  original = builder._split_generators  # noqa: SLF001  (TFDS's generation hook)

  def split_generators(*args, **kwargs):
    generators = original(*args, **kwargs)
    return {split: _counted(gen, bar) for split, gen in generators.items()}

  was_active = tqdm_utils._active  # noqa: SLF001
  builder._split_generators = split_generators  # noqa: SLF001
  tqdm_utils.display_progress_bar(False)
  try:
    # TFDS prints 'Downloading and preparing ...' and '... prepared to ...' to stdout.
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    builder._split_generators = original  # noqa: SLF001
    tqdm_utils.display_progress_bar(was_active)


def build_progress(builder: Any, **download_and_prepare_kwargs: Any) -> None:
  """Builds (`download_and_prepare`) a TFDS builder behind one progress bar.

  On a terminal the bar updates in place; in a log file it adds a few lines (at most
  one every 30 seconds). With `--verbosity` TFDS's own bars show instead.

  Args:
    builder: a TFDS `GeneratorBasedBuilder`, not prepared yet.
    **download_and_prepare_kwargs: passed on (e.g. `download_config`).
  """
  if verbosity_given(sys.argv) or not hasattr(builder, '_split_generators'):
    builder.download_and_prepare(**download_and_prepare_kwargs)
    return
  tty = sys.stderr.isatty()
  bar = tqdm.tqdm(
    desc=f'Building {builder.name}/{builder.builder_config.name if builder.builder_config else ""}',
    total=_expected_examples(builder),
    unit=' examples',
    file=sys.stderr,
    mininterval=0.5 if tty else 30.0,
    dynamic_ncols=tty,
    ncols=None if tty else 100,
  )
  with bar, _single_bar(builder, bar):
    builder.download_and_prepare(**download_and_prepare_kwargs)
  print(f'Dataset ready in {builder.data_dir}', file=sys.stderr, flush=True)
