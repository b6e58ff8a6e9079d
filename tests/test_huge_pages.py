"""rock_jax.huge_pages: when the entry points restart with glibc's huge-page tunable."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rock_jax import huge_pages

GLIBC = (2, 36)


def test_needed_only_where_the_tunable_helps():
  assert huge_pages.needed({}, mode='madvise', glibc=GLIBC)
  # THP 'always' already gives large mappings huge pages; 'never' gives none.
  assert not huge_pages.needed({}, mode='always', glibc=GLIBC)
  assert not huge_pages.needed({}, mode='never', glibc=GLIBC)
  assert not huge_pages.needed({}, mode=None, glibc=GLIBC)
  # The tunable appeared in glibc 2.35; musl, macOS and Windows have none.
  assert not huge_pages.needed({}, mode='madvise', glibc=(2, 34))
  assert not huge_pages.needed({}, mode='madvise', glibc=None)
  # Already set (the restarted process), or opted out.
  assert not huge_pages.needed(
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, mode='madvise', glibc=GLIBC
  )
  assert not huge_pages.needed({'ROCK_JAX_HUGE_PAGES': '0'}, mode='madvise', glibc=GLIBC)
  assert huge_pages.needed({'ROCK_JAX_HUGE_PAGES': '1'}, mode='madvise', glibc=GLIBC)


def test_environment_keeps_other_tunables():
  env = huge_pages.environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'A': 'b'})
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1', 'A': 'b'}
  assert huge_pages.environment({})['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert huge_pages.thp_mode(str(path)) == 'madvise'
  assert huge_pages.thp_mode(str(tmp_path / 'absent')) is None


# Restarts itself, then mallocs 256 MiB, touches every byte and reports the page faults.
_PROBE = textwrap.dedent(
  """
  import ctypes, json, os, resource, sys
  from rock_jax import huge_pages
  huge_pages.reexec()
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  size = 256 << 20
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(ctypes.c_size_t(size))
  ctypes.memset(block, 1, size)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  print(json.dumps([os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:], faults]))
  """
)


def _probe(tmp_path, **env):
  script = tmp_path / 'probe.py'
  script.write_text(_PROBE)
  environ = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES',)}
  environ.update(env)
  out = subprocess.run(
    [sys.executable, str(script), 'a b', '--flag=1'],
    env=environ,
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  ).stdout
  return json.loads(out)


@pytest.mark.skipif(
  sys.platform != 'linux'
  or not huge_pages.needed({}, mode=huge_pages.thp_mode(), glibc=huge_pages.glibc_version()),
  reason='needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode',
)
def test_reexec_restarts_with_huge_pages_and_the_same_arguments(tmp_path):
  tunables, args, faults = _probe(tmp_path)
  assert tunables == 'glibc.malloc.hugetlb=1'
  assert args == ['a b', '--flag=1']
  # 256 MiB in 4 KiB pages is 65,536 faults; in 2 MiB huge pages, 128 (plus a few).
  assert faults < 65536 // 8, faults
  tunables, _, faults = _probe(tmp_path, ROCK_JAX_HUGE_PAGES='0')
  assert tunables == ''
  assert faults >= 65536 * 0.9, faults
