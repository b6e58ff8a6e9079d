"""Tests for rock_jax.tools.plot: learning curves of several runs from metrics.jsonl."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rock_jax import reporting
from rock_jax.tools import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_run(workdir, scale: float, with_aux: bool = True) -> None:
  workdir.mkdir(exist_ok=True)
  log = reporting.MetricsLog(workdir)
  for step in (10, 20, 30, 40):
    log.write('train', step, {'loss': scale * 5 / step, 'loss/cls': 2 / step, 'loss/loc': 1 / step})
    if step % 20 == 0:
      values = {'loss': scale * 6 / step, 'loss/cls': 3 / step, 'mAP@0.5': step / 100}
      if with_aux:
        values['depth_rmse'] = 1 / step
      log.write('eval', step, values)


def test_panels_of_lists_losses_then_present_eval_metrics(tmp_path):
  fake_run(tmp_path / 'a', 1.0)
  fake_run(tmp_path / 'b', 2.0, with_aux=False)
  runs = {k: reporting.read_metrics(tmp_path / k) for k in 'ab'}
  assert plot.panels_of(runs) == ['loss', 'loss/cls', 'loss/loc', 'mAP@0.5', 'depth_rmse']
  steps, values = plot._series(runs['a'], 'eval', 'mAP@0.5')
  assert steps == [20, 40] and values == pytest.approx([0.2, 0.4])


@pytest.mark.slow
def test_plot_cli_overlays_two_runs(tmp_path):
  for name, scale in (('rock', 1.0), ('baseline', 2.0)):
    fake_run(tmp_path / name, scale)
  out = tmp_path / 'curves.png'
  result = subprocess.run(
    [sys.executable, '-m', 'rock_jax.tools.plot', f'--workdir={tmp_path / "rock"}',
     str(tmp_path / 'baseline'), f'--out={out}'],
    cwd=REPO, env={**os.environ, 'PYTHONPATH': REPO}, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Wrote {out}' in result.stdout
  with Image.open(out) as image:
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.shape[1] == 1600 and pixels.shape[0] >= 300  # 4 columns of 4 inches at 100 dpi.
  assert (pixels < 250).any(axis=-1).mean() > 0.02  # Something is drawn.


def test_plot_needs_metrics(tmp_path):
  with pytest.raises(ValueError, match='metrics.jsonl'):
    plot.plot_runs([str(tmp_path)])
