"""Transparent huge pages for XLA:CPU's per-call buffers (issue #18).

At every call, XLA:CPU mallocs the executable's temporary buffer (2.2 GiB for the ROCK
train step at 480x640, batch 2) and frees it at the end. glibc serves a block that large
with a fresh `mmap` and unmaps it on `free`, so each step touches 2.2 GiB of new 4 KiB
pages: about 600,000 page faults per step, measured at 2.4 us each on a 2-core VM.
glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc ask for
transparent huge pages on such blocks (`madvise(MADV_HUGEPAGE)`), 2 MiB each: the faults
fall to a few thousand, and the step ran 3-11 % faster on two such machines
(BENCHMARKS.md).

Tunables are read when a process starts, so `reexec()` restarts the command line with the
tunable set. The command-line entry points call it first, before JAX is imported; it
does nothing where the tunable cannot help (not Linux with glibc >= 2.35, transparent
huge pages off or already `always`), where it is already set, or with
`ROCK_JAX_HUGE_PAGES=0`. A library user sets it in the environment instead:

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT_ENV = 'ROCK_JAX_HUGE_PAGES'
THP_ENABLED = '/sys/kernel/mm/transparent_hugepage/enabled'
MIN_GLIBC = (2, 35)


def thp_mode(path: str = THP_ENABLED) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  for word in text.split():
    if word.startswith('[') and word.endswith(']'):
      return word[1:-1]
  return None


def glibc_version() -> tuple[int, ...] | None:
  """This process's glibc version, or None on another C library or OS."""
  name, version = platform.libc_ver()
  if name != 'glibc' or not version:
    return None
  try:
    return tuple(int(part) for part in version.split('.')[:2])
  except ValueError:
    return None


def needed(environ: Mapping[str, str], *, mode: str | None, glibc: tuple[int, ...] | None) -> bool:
  """Whether restarting with the tunable would give malloc's large blocks huge pages.

  Args:
    environ: the process environment.
    mode: `thp_mode()`.
    glibc: `glibc_version()`.

  Returns:
    True on glibc >= 2.35 with transparent huge pages in 'madvise' mode, unless the
    tunable is already set or `ROCK_JAX_HUGE_PAGES=0`.
  """
  if environ.get(OPT_OUT_ENV, '1') == '0':
    return False
  if glibc is None or glibc < MIN_GLIBC or mode != 'madvise':
    return False
  return TUNABLE not in environ.get('GLIBC_TUNABLES', '')


def environment(environ: Mapping[str, str]) -> dict[str, str]:
  """`environ` with `glibc.malloc.hugetlb=1` added to `GLIBC_TUNABLES`."""
  env = dict(environ)
  tunables = [t for t in env.get('GLIBC_TUNABLES', '').split(':') if t]
  env['GLIBC_TUNABLES'] = ':'.join([*tunables, f'{TUNABLE}=1'])
  return env


def reexec() -> None:
  """Restarts this command line with the tunable set, if `needed`; otherwise returns.

  Call it first in a `__main__` entry point: everything before it runs twice.
  """
  if sys.platform != 'linux':
    return
  if not needed(os.environ, mode=thp_mode(), glibc=glibc_version()):
    return
  argv = [sys.executable, *sys.orig_argv[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, environment(os.environ))
