"""kill -9 trials of the real entry point: every killed and resumed run must end bitwise equal.

Not collected by pytest (slow: two to three smoke runs per trial). Run it as

  python tests/kill_trials.py --trials=10 [--steps=12] [--out=DIR]

from the repository root. It trains `configs/synthetic.py:smoke` once without
interruption, then, per trial, starts the same command on a fresh workdir, sends
SIGKILL at a moment chosen by the trial (while a checkpoint is being written, just
after a step folder appears, after a random delay, or twice in one run), reruns
the command until it completes, and compares the final parameters and BatchNorm
statistics with the uninterrupted run's, leaf by leaf and bitwise. It prints one
line per trial and a summary; the exit status is 0 only when every trial matched.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

import cached_env  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from rock_jax import checkpoints  # noqa: E402

MODES = ('during_save', 'after_step_folder', 'random_delay', 'twice')


def command(workdir: str, data_dir: str, steps: int) -> list[str]:
  return [
    sys.executable,
    '-m',
    'rock_jax.main',
    '--config=configs/synthetic.py:smoke',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    f'--config.train.num_steps={steps}',
    '--config.train.checkpoint_every=2',
    '--config.train.eval_every=0',
    '--config.train.log_every=10',
  ]


def saving(ckpt_dir: str) -> bool:
  """Whether a checkpoint is being written (Orbax's temporary folder exists)."""
  if not os.path.isdir(ckpt_dir):
    return False
  return any('tmp' in name for name in os.listdir(ckpt_dir))


def kill_once(args, env, mode: str, rng: random.Random, min_step: int = 2) -> dict:
  """Starts a run and SIGKILLs it per `mode`; returns what was going on at the kill."""
  workdir = args[4].split('=', 1)[1]
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  process = subprocess.Popen(
    args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 600
  delay = rng.uniform(15.0, 45.0)
  start = time.time()
  during_save = False
  while process.poll() is None and time.time() < deadline:
    if mode == 'during_save' and saving(ckpt_dir):
      during_save = True
      break
    if mode in ('after_step_folder', 'twice') and os.path.isdir(
      os.path.join(ckpt_dir, str(min_step))
    ):
      break
    if mode == 'random_delay' and time.time() - start > delay:
      break
    time.sleep(0.005)
  during_save = during_save or saving(ckpt_dir)
  process.send_signal(signal.SIGKILL)
  process.wait()
  return {'killed': process.returncode == -signal.SIGKILL, 'during_save': during_save}


def final_variables(workdir: str, steps: int):
  directory, step, variables = checkpoints.load_checkpoint(workdir)
  assert step == steps, f'final step {step} != {steps}'
  return variables


def same(a, b) -> bool:
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  return len(flat_a) == len(flat_b) and all(
    np.array_equal(flat_b[path], value) for path, value in flat_a
  )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--trials', type=int, default=10)
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=None, help='Keep the workdirs here (default: a temp dir).')
  flags = parser.parse_args()
  root = flags.out or tempfile.mkdtemp(prefix='rock_kill_trials_')
  env = cached_env.subprocess_env(os.path.join(root, 'xla_cache'), REPO)
  data_dir = os.path.join(root, 'tfds')
  rng = random.Random(flags.seed)

  reference = os.path.join(root, 'reference')
  subprocess.run(command(reference, data_dir, flags.steps), cwd=REPO, env=env, check=True,
                 capture_output=True)  # fmt: skip
  expected = final_variables(reference, flags.steps)

  results = []
  for trial in range(flags.trials):
    mode = MODES[trial % len(MODES)]
    workdir = os.path.join(root, f'trial_{trial}')
    args = command(workdir, data_dir, flags.steps)
    kills = [kill_once(args, env, mode, rng)]
    if mode == 'twice':
      kills.append(kill_once(args, env, 'during_save', rng))
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    ok = done.returncode == 0 and same(expected, final_variables(workdir, flags.steps))
    damaged = os.path.isdir(os.path.join(workdir, checkpoints.DAMAGED))
    results.append((ok, any(k['during_save'] for k in kills)))
    print(
      f'trial {trial}: {mode}, {len(kills)} kill(s), during a save: '
      f'{[k["during_save"] for k in kills]}, steps set aside: {damaged}, resumed run rc '
      f'{done.returncode}, bitwise equal: {ok}',
      flush=True,
    )
    if done.returncode:
      print(done.stderr[-2000:], flush=True)
  passed = sum(ok for ok, _ in results)
  during = sum(d for _, d in results)
  print(f'{passed} / {len(results)} trials bitwise equal; {during} with a kill during a save.')
  return 0 if passed == len(results) else 1


if __name__ == '__main__':
  sys.exit(main())
