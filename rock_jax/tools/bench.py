"""Complexity and speed of the detection baseline and ROCK, side by side (paper Table 4).

  python -m rock_jax.tools.bench --config=configs/nyuv2.py [--out=FILE] \
      [--image_size=480,640] [--batch=8] [--iters=10] [--dtypes=float32,bfloat16] \
      [--conv_1x1=conv,auto]

For each variant (`baseline`, then `rock`, built from the same config) and each
compute dtype, in one process on one machine:
- parameters and FLOPs per image (`rock_jax.tools.summary.summarize`: XLA cost
  analysis of the forward pass with auxiliary outputs, one image);
- inference: the network's forward pass (`train=False`, no auxiliary outputs,
  no NMS) in ms/image at batch 1 and images/s at `--batch`;
- training: images/s of the trainer's real `train_step` (forward, multi-task
  loss, backward, Adam update) at `--batch`, on synthetic targets;
and the ROCK / baseline ratios (paper: +17 % parameters, +7 % time). With several
`--conv_1x1` modes (`config.model.conv_1x1`: how 1x1 convs are computed, issue #18),
each variant is also measured with each mode, one after the other, and a ratio row
compares every mode with the first one (the old path, 'conv'). Timings are
the median of `--iters` calls after `--warmup` calls (the first one compiles).
The markdown table is printed and, with `--out`, written to a file. On a GPU the
default dtypes are float32 and bfloat16; elsewhere float32 only.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rock_jax import boxes as box_lib
from rock_jax import cli, huge_pages, train
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector, layers
from rock_jax.tools import summary

VARIANTS = ('baseline', 'rock')


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One variant at one compute dtype.

  Attributes:
    variant: 'baseline' or 'rock' (any `config.model.variant`).
    dtype: compute dtype.
    params: number of parameters.
    flops: FLOPs per image of the inference forward pass.
    infer_ms: inference milliseconds per image at batch 1.
    infer_ips: inference images/s at the large batch.
    train_ips: training images/s at the large batch (None when skipped).
    conv_1x1: how 1x1 convs were computed ('conv' or 'dot'; 'auto' resolved).
  """

  variant: str
  dtype: str
  params: int
  flops: float
  infer_ms: float
  infer_ips: float
  train_ips: float | None
  conv_1x1: str = 'conv'


def variant_config(
  config: ml_collections.ConfigDict,
  variant: str,
  *,
  image_size: Sequence[int] | None = None,
  dtype: str = 'float32',
  conv_1x1: str | None = None,
) -> ml_collections.ConfigDict:
  """Returns a copy of `config` for one variant, image size, compute dtype and 1x1 mode."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.variant = variant
  config.model.dtype = dtype
  if conv_1x1 is not None:
    config.model.conv_1x1 = conv_1x1
  if image_size is not None:
    config.data.image_size = tuple(int(s) for s in image_size)
  return config


def median_seconds(fn: Callable[[], Any], *, iters: int, warmup: int) -> float:
  """Median wall time of `fn()` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _init_variables(model: detector.Detector, image_size: Sequence[int]) -> dict[str, Any]:
  height, width = image_size
  images = jnp.zeros((1, height, width, 3), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images)


def inference_seconds(
  config: ml_collections.ConfigDict, batches: Sequence[int], *, iters: int, warmup: int
) -> dict[int, float]:
  """Median seconds of one jitted inference forward pass, per batch size.

  Args:
    config: the variant's config.
    batches: batch sizes to time (one compilation each, same jitted function).
    iters: timed calls per batch size.
    warmup: untimed calls first.

  Returns:
    Batch size -> median seconds per call.
  """
  model = detector.build_model(config)
  height, width = config.data.image_size
  variables = _init_variables(model, (height, width))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False, with_aux=False))
  out = {}
  for batch in dict.fromkeys(batches):
    images = jax.random.normal(jax.random.key(1), (batch, height, width, 3), jnp.float32)
    run = functools.partial(lambda x: jax.block_until_ready(forward(variables, x)), images)
    out[batch] = median_seconds(run, iters=iters, warmup=warmup)
  return out


def synthetic_train_batch(
  config: ml_collections.ConfigDict, batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A batch with the input pipeline's keys and shapes (DESIGN.md), random but valid.

  About 2 % of the anchors are positives, so the hard-negative mining and the box
  loss do the same work as on real data.
  """
  rng = np.random.default_rng(seed)
  height, width = config.data.image_size
  num_anchors = len(box_lib.default_boxes(config.model, (height, width)))
  h, w = box_lib.feature_map_sizes(
    (height, width), config.model.backbone.output_stride, len(config.model.ssd.extra_layers)
  )[0]
  cls = rng.integers(1, config.model.num_classes + 1, (batch, num_anchors))
  cls = np.where(rng.random((batch, num_anchors)) < 0.02, cls, 0).astype(np.int32)
  data = {
    'image': rng.normal(size=(batch, height, width, 3)).astype(np.float32),
    'box_targets': rng.normal(size=(batch, num_anchors, 4)).astype(np.float32),
    'cls_targets': cls,
  }
  for task in tasks_lib.active(config):
    ones = np.ones((batch,), np.float32)
    if task.kind == 'image_class':
      data[task.name] = rng.integers(0, task.width, (batch,)).astype(np.int32)
    elif task.kind == 'dense_scalar':
      data[task.name] = rng.uniform(0.5, 8.0, (batch, h, w)).astype(np.float32)
      data[f'{task.name}_mask'] = np.ones((batch, h, w), np.float32)
    else:
      v = rng.normal(size=(batch, h, w, task.components)).astype(np.float32)
      data[task.name] = v / np.linalg.norm(v, axis=-1, keepdims=True)
      data[f'{task.name}_mask'] = np.ones((batch, h, w), np.float32)
    data[f'has_{task.name}'] = ones
  keys = train.train_batch_keys(config)
  missing = [k for k in keys if k not in data]
  if missing:
    raise ValueError(f'No synthetic data for the train step inputs {missing}.')
  return {k: data[k] for k in keys}


def build_train_step(
  config: ml_collections.ConfigDict,
  batch: int,
  *,
  loss_fn: Callable[..., Any] | None = None,
) -> tuple[Callable[..., Any], Any, dict[str, jax.Array], jax.Array, jax.sharding.Mesh]:
  """The trainer's jitted `train_step` (`train.step_functions`), a fresh state and a batch.

  Args:
    config: the variant's config.
    batch: global batch size.
    loss_fn: replaces `losses.multi_loss` (e.g. wrapped in a named scope for a profile).

  Returns:
    `(step_fn, state, data, rng, mesh)`; call `step_fn(state, data, rng)` under
    `jax.set_mesh(mesh)`.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.batch_size = batch
  mesh = train.create_mesh(batch)
  model = detector.build_model(config)
  extra = {} if loss_fn is None else {'loss_fn': loss_fn}
  with jax.set_mesh(mesh):
    functions = train.step_functions(config, model, mesh, **extra)
    state = functions.init(jax.random.key(0))
    data = train.shard_batch(synthetic_train_batch(config, batch), functions.data)
    rng = jax.device_put(jax.random.key(1), functions.replicated)
  return functions.step, state, data, rng, mesh


def train_seconds(
  config: ml_collections.ConfigDict, batch: int, *, iters: int, warmup: int
) -> float:
  """Median seconds of one real `train.train_step` on a global batch of `batch`."""
  step_fn, state, data, rng, mesh = build_train_step(config, batch)

  def run():
    nonlocal state
    state, metrics = step_fn(state, data, rng)
    jax.block_until_ready(metrics['loss'])

  with jax.set_mesh(mesh):
    return median_seconds(run, iters=iters, warmup=warmup)


def measure(
  config: ml_collections.ConfigDict,
  *,
  batch: int,
  iters: int,
  warmup: int,
  with_train: bool = True,
  complexity: dict[str, Any] | None = None,
) -> Measurement:
  """Measures one variant config (see the module docstring).

  Args:
    config: the variant's config (`variant_config`).
    batch: the large batch of the throughput measurements.
    iters: timed calls per measurement.
    warmup: untimed calls first.
    with_train: also time the train step.
    complexity: `summary.summarize(config)` when already computed (parameters and
      FLOPs do not depend on the compute dtype).

  Returns:
    The measurement.
  """
  complexity = complexity or summary.summarize(config)
  infer = inference_seconds(config, (1, batch), iters=iters, warmup=warmup)
  train_n = train_seconds(config, batch, iters=iters, warmup=warmup) if with_train else None
  return Measurement(
    variant=config.model.variant,
    dtype=config.model.dtype,
    params=int(complexity['params_total']),
    flops=float(complexity['flops']),
    infer_ms=infer[1] * 1e3,
    infer_ips=batch / infer[batch],
    train_ips=None if train_n is None else batch / train_n,
    conv_1x1=conv_1x1_name(config),
  )


def conv_1x1_name(config: ml_collections.ConfigDict) -> str:
  """'conv' or 'dot': how the config's model computes 1x1 convs on this backend."""
  return 'dot' if layers.use_dot(config.model.get('conv_1x1', 'auto')) else 'conv'


def benchmark(
  config: ml_collections.ConfigDict,
  *,
  image_size: Sequence[int] | None = None,
  batch: int = 8,
  iters: int = 10,
  warmup: int = 2,
  dtypes: Sequence[str] = ('float32',),
  variants: Sequence[str] = VARIANTS,
  with_train: bool = True,
  conv_1x1_modes: Sequence[str | None] = (None,),
  on_measurement: Callable[[Measurement], Any] | None = None,
) -> list[Measurement]:
  """Measures every variant at every dtype and 1x1 mode (modes adjacent in a variant).

  Args:
    config: the experiment config; each variant is derived from it.
    image_size: (H, W) override of `config.data.image_size`.
    batch: the large batch of the throughput measurements.
    iters: timed calls per measurement.
    warmup: untimed calls first.
    dtypes: compute dtypes.
    variants: `config.model.variant` values, e.g. ('baseline', 'rock').
    with_train: also time the train step.
    conv_1x1_modes: `config.model.conv_1x1` values (None: the config's), measured one
      after the other for each variant so that their ratio compares like with like.
    on_measurement: called with each measurement as soon as it is taken (the CLI prints
      it, so a run stopped by a time limit still shows what it measured).

  Returns:
    One measurement per (dtype, variant, mode).
  """
  # Parameters and FLOPs per image (summary.py: eval_shape + XLA cost analysis of one
  # image), once per variant.
  complexity = {
    v: summary.summarize(variant_config(config, v, image_size=image_size)) for v in variants
  }
  measurements = []
  for dtype in dtypes:
    for variant in variants:
      for mode in conv_1x1_modes:
        measurements.append(
          measure(
            variant_config(config, variant, image_size=image_size, dtype=dtype, conv_1x1=mode),
            batch=batch,
            iters=iters,
            warmup=warmup,
            with_train=with_train,
            complexity=complexity[variant],
          )
        )
        if on_measurement is not None:
          on_measurement(measurements[-1])
  return measurements


def _ratio(a: float | None, b: float | None, *, inverse: bool = False) -> str:
  """'x1.17 (+17 %)' for a / b (or b / a with `inverse`, for throughputs)."""
  if a is None or b is None or not a or not b:
    return 'n/a'
  r = b / a if inverse else a / b
  return f'x{r:.3f} ({(r - 1) * 100:+.1f} %)'


def markdown_table(measurements: Sequence[Measurement], *, batch: int, header: str = '') -> str:
  """Formats the measurements, with ROCK / baseline ratio rows per dtype.

  Time ratios are ratios of time per image (for throughputs, baseline / ROCK), so
  every ratio reads like the paper's: > 1 means ROCK costs more. With several 1x1
  modes, a row `<mode> / <first mode>` follows each later mode of a variant (< 1 means
  the later mode is faster), and ROCK is compared with the baseline of the same mode.
  """
  lines = [header, ''] if header else []
  lines += [
    f'| Model | dtype | 1x1 convs | Params | GFLOPs/image | Inference ms/image (batch 1) '
    f'| Inference images/s (batch {batch}) | Training images/s (batch {batch}) |',
    '|---|---|---|---:|---:|---:|---:|---:|',
  ]
  by_key = {(m.variant, m.dtype, m.conv_1x1): m for m in measurements}
  first_mode = {}
  for m in measurements:
    first_mode.setdefault((m.variant, m.dtype), m)

  def ratio_row(name, m, ref):
    return (
      f'| **{name}** | {m.dtype} | {m.conv_1x1} | {_ratio(m.params, ref.params)} '
      f'| {_ratio(m.flops, ref.flops)} | {_ratio(m.infer_ms, ref.infer_ms)} '
      f'| {_ratio(m.infer_ips, ref.infer_ips, inverse=True)} '
      f'| {_ratio(m.train_ips, ref.train_ips, inverse=True)} |'
    )

  for m in measurements:
    train_ips = 'n/a' if m.train_ips is None else f'{m.train_ips:.2f}'
    lines.append(
      f'| {m.variant} | {m.dtype} | {m.conv_1x1} | {m.params / 1e6:.3f}M '
      f'| {m.flops / 1e9:.4g} | {m.infer_ms:.1f} | {m.infer_ips:.2f} | {train_ips} |'
    )
    first = first_mode[(m.variant, m.dtype)]
    if first is not m:
      lines.append(ratio_row(f'{m.variant}: {m.conv_1x1} / {first.conv_1x1}', m, first))
    base = by_key.get(('baseline', m.dtype, m.conv_1x1))
    if m.variant == 'rock' and base is not None:
      lines.append(ratio_row('ROCK / baseline', m, base))
  lines.append('')
  lines.append(
    'Paper (Table 4, ResNet-50, 480x640): 27.8M -> 32.6M parameters (+17 %), '
    '57 -> 61 ms/image (+7 %).'
  )
  return '\n'.join(lines) + '\n'


def default_dtypes() -> tuple[str, ...]:
  """float32, plus bfloat16 on a GPU (where it has tensor-core support)."""
  return ('float32', 'bfloat16') if jax.devices()[0].platform == 'gpu' else ('float32',)


def device_description() -> str:
  """'N x <device kind> (<platform>)' of the default backend."""
  devices = jax.devices()
  return f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform})'


def parse_image_size(text: str) -> tuple[int, int]:
  """Parses 'H,W' (or 'HxW').

  Raises:
    ValueError: not two positive integers.
  """
  parts = text.replace('x', ',').split(',')
  try:
    size = tuple(int(p) for p in parts)
  except ValueError:
    size = ()
  if len(size) != 2 or min(size) <= 0:
    raise ValueError(f'--image_size expects H,W (e.g. 480,640), got {text!r}')
  return size


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  huge_pages.reexec()  # Measure as `rock_jax.main` runs (rock_jax.huge_pages).
  from absl import flags, logging
  from etils import epath
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].')
  flags.DEFINE_string('out', None, 'Also write the markdown table to this file.')
  flags.DEFINE_string('image_size', None, 'H,W (default: config.data.image_size).')
  flags.DEFINE_integer('batch', 8, 'Batch of the throughput measurements.')
  flags.DEFINE_integer('iters', 10, 'Timed calls per measurement (median).')
  flags.DEFINE_integer('warmup', 2, 'Untimed calls first (the first one compiles).')
  flags.DEFINE_list('dtypes', None, 'Compute dtypes (default: float32, + bfloat16 on GPU).')
  flags.DEFINE_list('variants', list(VARIANTS), 'Model variants to compare.')
  flags.DEFINE_bool('train', True, 'Also measure the training step.')
  flags.DEFINE_list(
    'conv_1x1',
    None,
    "config.model.conv_1x1 modes to compare, the old path first (e.g. 'conv,auto'); "
    'default: the config value only.',
  )
  flags.mark_flags_as_required(['config'])
  values = flags.FLAGS

  def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    config = values.config
    image_size = parse_image_size(values.image_size) if values.image_size else None
    measurements = benchmark(
      config,
      image_size=image_size,
      batch=values.batch,
      iters=values.iters,
      warmup=values.warmup,
      dtypes=tuple(values.dtypes or default_dtypes()),
      variants=tuple(values.variants),
      with_train=values.train,
      conv_1x1_modes=tuple(values.conv_1x1 or (None,)),
      on_measurement=lambda m: print(f'measured: {m}', flush=True),
    )
    height, width = image_size or config.data.image_size
    backbone = config.model.backbone
    header = (
      f'Device: {device_description()}; input {height}x{width}; ResNet-{backbone.depth} '
      f'(width {backbone.width}), output stride {backbone.output_stride}; '
      f'{config.model.num_classes} classes; median of {values.iters} calls.'
    )
    table = markdown_table(measurements, batch=values.batch, header=header)
    print(table)
    if values.out:
      epath.Path(values.out).write_text(table)

  cli.run(main)


if __name__ == '__main__':
  _cli()
