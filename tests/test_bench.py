"""Tests of the complexity and speed benchmark on the smoke model."""

import jax
import numpy as np
import pytest

from configs import nyuv2
from rock_jax import losses, train
from rock_jax.models import detector
from rock_jax.tools import bench


def test_parse_image_size():
  assert bench.parse_image_size('240,320') == (240, 320)
  assert bench.parse_image_size('480x640') == (480, 640)
  for bad in ('240', '0,10', 'a,b', '1,2,3'):
    with pytest.raises(ValueError, match='--image_size'):
      bench.parse_image_size(bad)


def test_variant_config_copies():
  config = nyuv2.get_config('smoke')
  derived = bench.variant_config(config, 'baseline', image_size=(32, 48), dtype='bfloat16')
  assert derived.model.variant == 'baseline' and derived.model.dtype == 'bfloat16'
  assert tuple(derived.data.image_size) == (32, 48)
  assert config.model.variant == 'rock' and tuple(config.data.image_size) == (64, 96)


def test_markdown_table_ratios():
  measurements = [
    bench.Measurement('baseline', 'float32', 27_800_000, 2e11, 57.0, 20.0, 5.0),
    bench.Measurement('rock', 'float32', 32_600_000, 2.2e11, 61.0, 16.0, 4.0),
  ]
  table = bench.markdown_table(measurements, batch=8, header='Device: test')
  lines = table.splitlines()
  assert lines[0] == 'Device: test'
  assert '| baseline | float32 | conv | 27.800M | 200 | 57.0 | 20.00 | 5.00 |' in lines
  [ratio] = [line for line in lines if line.startswith('| **ROCK / baseline**')]
  cells = [c.strip() for c in ratio.strip('|').split('|')]
  assert cells[3] == 'x1.173 (+17.3 %)'  # Parameters.
  assert cells[5] == 'x1.070 (+7.0 %)'  # ms/image.
  assert cells[6] == 'x1.250 (+25.0 %)'  # Time per image from the throughputs.
  assert cells[7] == 'x1.250 (+25.0 %)'


def test_markdown_table_compares_1x1_modes():
  # Each later mode of a variant is compared with its first one (the old path), and
  # ROCK with the baseline of the same mode.
  m = bench.Measurement
  measurements = [
    m('baseline', 'float32', 10, 1e9, 50.0, 20.0, 1.0, 'conv'),
    m('baseline', 'float32', 10, 1e9, 40.0, 25.0, 2.0, 'dot'),
    m('rock', 'float32', 12, 1.2e9, 60.0, 16.0, 0.8, 'conv'),
    m('rock', 'float32', 12, 1.2e9, 45.0, 20.0, 1.6, 'dot'),
  ]
  lines = bench.markdown_table(measurements, batch=2).splitlines()
  rows = {line.split('|')[1].strip(): line for line in lines if line.startswith('| **')}
  assert set(rows) == {'**baseline: dot / conv**', '**rock: dot / conv**', '**ROCK / baseline**'}
  cells = [c.strip() for c in rows['**rock: dot / conv**'].strip('|').split('|')]
  assert cells[5] == 'x0.750 (-25.0 %)'  # 45 / 60 ms per image.
  assert cells[7] == 'x0.500 (-50.0 %)'  # Training: twice the images/s.
  ratios = [line for line in lines if line.startswith('| **ROCK / baseline**')]
  assert [line.split('|')[3].strip() for line in ratios] == ['conv', 'dot']
  # Training time per image, ROCK dot (1.6 images/s) vs baseline dot (2.0): x1.25.
  assert ratios[1].rstrip(' |').endswith('x1.250 (+25.0 %)')


@pytest.mark.slow
def test_synthetic_batch_feeds_the_real_loss():
  config = nyuv2.get_config('smoke')
  batch = bench.synthetic_train_batch(config, 2)
  assert tuple(batch) == train.train_batch_keys(config)
  assert 0 < (batch['cls_targets'] > 0).mean() < 0.1
  # Model outputs of the right shapes (no compute): the loss must accept the batch.
  model = detector.build_model(config)
  shapes = jax.eval_shape(
    lambda x: model.apply(model.init(jax.random.key(0), x, train=False), x, train=False),
    batch['image'],
  )
  rng = np.random.default_rng(0)
  outputs = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  total, parts = losses.multi_loss(outputs, batch, config=config)
  assert np.isfinite(float(total))
  assert set(parts) == {'cls', 'loc', 'scene', 'depth', 'normals'}
  assert all(float(v) > 0 for v in parts.values())


@pytest.mark.slow
def test_benchmark_smoke():
  config = nyuv2.get_config('smoke')
  seen = []
  base, rock = bench.benchmark(
    config,
    image_size=(32, 48),
    batch=1,
    iters=1,
    warmup=1,
    with_train=False,
    on_measurement=seen.append,
  )
  assert (base.variant, rock.variant) == ('baseline', 'rock')
  # Each measurement is reported as soon as it is taken, in order.
  assert seen == [base, rock]
  assert base.train_ips is None
  # The ROCK block only adds parameters and work.
  assert rock.params > base.params and rock.flops > base.flops > 0
  for m in (base, rock):
    assert m.infer_ms > 0 and m.infer_ips > 0
  assert 'n/a' in bench.markdown_table([base, rock], batch=1)


@pytest.mark.slow
def test_train_step_throughput():
  config = bench.variant_config(
    nyuv2.get_config('smoke'), 'rock', image_size=(32, 48), conv_1x1='dot'
  )
  assert config.model.conv_1x1 == 'dot' and bench.conv_1x1_name(config) == 'dot'
  seconds = bench.train_seconds(config, 2, iters=1, warmup=1)
  assert 0 < seconds < 60
