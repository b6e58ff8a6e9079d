"""Tests of the model summary tool (parameters per part, FLOPs, CLI)."""

import json
import os
import subprocess
import sys

import pytest

from configs import base
from rock_jax.tools import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(variant, *, tiny):
  config = base.get_base_config()
  if tiny:
    config = base.smoke(config)
  config.model.variant = variant
  return config


@pytest.mark.parametrize(
  'variant,block',
  [('baseline', None), ('flat_mtl', 2049 * 31), ('rock_no_fusion', 3_686_427), ('rock', 4_802_587)],
)
def test_full_size_parts(variant, block):
  result = summary.summarize(_config(variant, tiny=False), flops=False)
  parts = result['params_by_part']
  expected = {'backbone': 23_508_032, 'ssd_extras': 1_223_680, 'ssd_heads': 2_931_504}
  if block is not None:
    expected['rock' if variant.startswith('rock') else 'flat_mtl'] = block
  assert parts == expected
  assert result['params_total'] == sum(expected.values())
  assert result['num_anchors'] == 7236 and result['flops'] is None
  json.dumps(result)  # Serialisable as the --json output.


def test_flops_of_rock_block():
  """The extra FLOPs of ROCK are at least its convs' multiply-adds (2 FLOPs each)."""
  baseline = summary.summarize(_config('baseline', tiny=True), flops=True)
  config = _config('rock', tiny=True)
  rock = summary.summarize(config, flops=True)
  h, w = (-(-n // 16) for n in config.data.image_size)  # conv5 resolution (ceil).
  trunk, width = config.model.rock.trunk_width, 8 * 8  # ResNet-18, stem width 8: C5 = 64.
  ks = [27, 8, 12]  # smoke() task widths.
  macs = h * w * (width * trunk + 9 * trunk * trunk + sum(trunk * k + k * width for k in ks))
  extra = rock['flops'] - baseline['flops']
  assert 2 * macs <= extra <= 4 * macs, (extra, 2 * macs)
  assert baseline['flops'] > 0


@pytest.mark.slow
def test_cli_json_and_table():
  command = [sys.executable, '-m', 'rock_jax.tools.summary', '--config=configs/nyuv2.py:smoke']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = subprocess.run(
    [*command, '--json'], capture_output=True, text=True, cwd=REPO, env=env, check=True
  )
  result = json.loads(run.stdout)
  assert result['params_total'] == sum(result['params_by_part'].values())
  assert set(result['params_by_part']) == {'backbone', 'rock', 'ssd_extras', 'ssd_heads'}
  assert result['flops'] > 0
  run = subprocess.run(
    [*command, '--config.model.variant=baseline', '--noflops'],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    check=True,
  )
  assert 'variant baseline' in run.stdout and 'total' in run.stdout
  assert 'rock' not in run.stdout.split('\n', 1)[1] and 'GFLOPs' not in run.stdout
