"""Environment for tests that run the trainer in subprocesses: one shared XLA cache."""

import os


def subprocess_env(cache_dir: str, repo: str) -> dict[str, str]:
  """os.environ plus a persistent compilation cache in `cache_dir` and `repo` on the path.

  Every subprocess compiles with the same flags (backend optimisation off, for faster
  compiles), so runs stay bitwise comparable and only the first one compiles.
  """
  env = dict(os.environ)
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
    PYTHONPATH=repo,
    XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip(),
  )
  return env
