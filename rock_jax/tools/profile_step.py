"""Where the time of one train step goes, by op kind (issue #18).

  python -m rock_jax.tools.profile_step --config=configs/nyuv2.py \
      [--image_size=240,320] [--batch=2] [--steps=3] [--conv_1x1=conv]

Runs the trainer's real `train_step` (as `rock_jax.tools.bench` does, synthetic targets)
under `jax.profiler.trace`, reads the per-op events of the trace (XLA:CPU records one per
executed HLO instruction, named after it) and classifies each instruction of the
compiled step by its HLO:
- what: convolutions by kernel size (a fusion that holds a convolution counts as one),
  dots (matrix multiplies, which is what 1x1 convs become with `conv_1x1='dot'`), and
  the rest (elementwise fusions: BatchNorm, ReLU, adds; copies and transposes; sorts);
- when, from the op's name stack: forward (`jvp(...)`), backward (`transpose(...)`),
  the loss, forward and backward (the loss function runs in a `loss` named scope), or the rest of the step
  (optimizer update, gradient norm, metrics). XLA:CPU computes a kernel gradient as a
  convolution whose window is the whole map (see `_convolution_kind`); the other
  backward convolutions are input gradients.
Host-to-device transfer of the batch (`shard_batch`) is timed on its own.

Per-op times are summed over the traced steps and divided by their number. XLA:CPU can
run independent ops at the same time, so the sum may exceed the wall time of a step;
the table gives both.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rock_jax import cli, huge_pages, losses, train
from rock_jax.tools import bench

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) ')


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """Instructions of an HLO module text, by name.

  Args:
    text: `compiled.as_text()`.

  Returns:
    name -> {'opcode', 'computation', 'op_name', 'calls', 'attrs', 'type'}.
  """
  out, computation = {}, ''
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and line.rstrip().endswith('{'):
      computation = head.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, type_, opcode, rest = match.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r'calls=%([\w.\-]+)', rest)
    out[name] = {
      'opcode': opcode,
      'computation': computation,
      'op_name': op_name.group(1) if op_name else '',
      'calls': calls.group(1) if calls else None,
      'attrs': rest,
      'type': type_,
    }
  return out


def _convolution_kind(inst: Mapping[str, Any]) -> str:
  """'conv KxK', or 'conv KxK (kernel grad)' for a kernel gradient.

  XLA:CPU rewrites the kernel gradient of a convolution as a convolution whose window is
  the whole output map (larger than any kernel) and whose result `[Cin, K, K, Cout]` is
  the kernel, transposed; it also drops its name stack.
  """
  window = re.search(r'window=\{size=(\d+)x(\d+)', inst['attrs'])
  size = (int(window.group(1)), int(window.group(2))) if window else (1, 1)
  if max(size) <= 7:
    return f'conv {size[0]}x{size[1]}'
  shape = re.search(r'\[(\d+),(\d+),(\d+),(\d+)\]', inst['type'])
  kernel = f'{shape.group(2)}x{shape.group(3)}' if shape else '?'
  return f'conv {kernel} (kernel grad)'


def classify(name: str, hlo: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
  """(what, when) of one HLO instruction (see the module docstring)."""
  inst = hlo[name]
  what = inst['opcode']
  members = [inst]
  if inst['opcode'] == 'fusion' and inst['calls']:
    members = [i for i in hlo.values() if i['computation'] == inst['calls']]
  convs = [m for m in members if m['opcode'] == 'convolution']
  if convs:
    what = _convolution_kind(convs[0])
  elif any(m['opcode'] == 'dot' for m in members):
    what = 'dot (matmul)'
  elif inst['opcode'] == 'fusion':
    what = 'elementwise fusion'
  elif inst['opcode'] in ('copy', 'transpose', 'bitcast', 'reshape', 'copy-start', 'copy-done'):
    what = 'copy / transpose'
  op_name = inst['op_name'] or next((m['op_name'] for m in members if m['op_name']), '')
  # The named scope shows as `jvp(loss)` (and `transpose(jvp(loss))` for its gradient).
  if 'jvp(loss)' in op_name or '/loss/' in op_name:
    when = 'loss'
  elif 'transpose(' in op_name or what.endswith('(kernel grad)'):
    when = 'backward'
  elif 'jvp(' in op_name:
    when = 'forward'
  else:
    when = 'optimizer and metrics'
  if when == 'backward' and what.startswith('conv') and not what.endswith('(kernel grad)'):
    what += ' (input grad)'
  return what, when


def _scoped_loss(outputs, batch, *, config):
  with jax.named_scope('loss'):
    return losses.multi_loss(outputs, batch, config=config)


def _trace_events(directory: str) -> list[dict[str, Any]]:
  [path] = sorted(glob.glob(f'{directory}/**/*perfetto_trace.json.gz', recursive=True))[-1:]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [e for e in events if e.get('ph') == 'X']


def profile(
  config: ml_collections.ConfigDict, *, batch: int = 2, steps: int = 3, warmup: int = 1
) -> dict[str, Any]:
  """Profiles the train step of `config`.

  Args:
    config: the variant's config (`bench.variant_config`).
    batch: global batch.
    steps: traced steps.
    warmup: untimed steps first (the first one compiles).

  Returns:
    {'step_s': median wall seconds of a traced step, 'transfer_s': seconds to put the
    host batch on the device, 'ops': {(what, when): seconds per step}, 'f64_values' and
    'host_callbacks': float64 values and host callbacks in the compiled step's HLO}.
  """
  step_fn, state, data, rng, mesh = bench.build_train_step(config, batch, loss_fn=_scoped_loss)
  with jax.set_mesh(mesh):
    text = step_fn.lower(state, data, rng).compile().as_text()
    hlo = parse_hlo(text)
    for _ in range(warmup):
      state, metrics = step_fn(state, data, rng)
      jax.block_until_ready(metrics['loss'])
    host = bench.synthetic_train_batch(config, batch)
    sharding = NamedSharding(mesh, P('data'))
    start = time.perf_counter()
    jax.block_until_ready(train.shard_batch(host, sharding))
    transfer = time.perf_counter() - start
    times = []
    with tempfile.TemporaryDirectory() as directory:
      with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(steps):
          start = time.perf_counter()
          state, metrics = step_fn(state, data, rng)
          jax.block_until_ready(metrics['loss'])
          times.append(time.perf_counter() - start)
      events = _trace_events(directory)
  ops: dict[tuple[str, str], float] = collections.defaultdict(float)
  for event in events:
    if event['name'] in hlo:
      ops[classify(event['name'], hlo)] += event['dur'] * 1e-6 / steps
  return {
    'step_s': float(np.median(times)),
    'transfer_s': transfer,
    'ops': dict(ops),
    # Levers the issue names: no float64 anywhere, no host callback inside the step.
    'f64_values': text.count('f64['),
    'host_callbacks': len(re.findall(r'custom_call_target="[^"]*callback', text)),
  }


def markdown_table(result: Mapping[str, Any], *, header: str = '') -> str:
  """Seconds per step by (op kind, phase), largest first, with shares of the op total."""
  ops = result['ops']
  total = sum(ops.values())
  lines = [header, ''] if header else []
  lines += [
    '| Op kind | Phase | ms / step | Share of op time |',
    '|---|---|---:|---:|',
  ]
  for (what, when), seconds in sorted(ops.items(), key=lambda kv: -kv[1]):
    lines.append(f'| {what} | {when} | {seconds * 1e3:.1f} | {seconds / total * 100:.1f} % |')
  by_when: dict[str, float] = collections.defaultdict(float)
  by_what: dict[str, float] = collections.defaultdict(float)
  for (what, when), seconds in ops.items():
    by_when[when] += seconds
    by_what[what.split(' (')[0] if what.startswith('conv') else what] += seconds
  lines.append('')
  lines.append(
    'By phase: '
    + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in sorted(by_when.items(), key=lambda kv: -kv[1]))
    + '. By kind: '
    + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in sorted(by_what.items(), key=lambda kv: -kv[1]))
    + '.'
  )
  lines.append(
    f'Ops total {total * 1e3:.0f} ms per step; step wall time {result["step_s"] * 1e3:.0f} ms '
    f'(median); host-to-device transfer of the batch {result["transfer_s"] * 1e3:.1f} ms.'
  )
  if 'f64_values' in result:
    lines.append(
      f'Compiled step: {result["f64_values"]} float64 values, '
      f'{result["host_callbacks"]} host callbacks.'
    )
  return '\n'.join(lines) + '\n'


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  huge_pages.reexec()  # Measure as `rock_jax.main` runs (rock_jax.huge_pages).
  from absl import flags, logging
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].')
  flags.DEFINE_string('image_size', None, 'H,W (default: config.data.image_size).')
  flags.DEFINE_integer('batch', 2, 'Global batch.')
  flags.DEFINE_integer('steps', 3, 'Traced steps.')
  flags.DEFINE_string('variant', 'rock', 'config.model.variant.')
  flags.DEFINE_string('conv_1x1', None, 'config.model.conv_1x1 (default: the config value).')
  flags.DEFINE_string('out', None, 'Also write the markdown table to this file.')
  flags.mark_flags_as_required(['config'])
  values = flags.FLAGS

  def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    size = bench.parse_image_size(values.image_size) if values.image_size else None
    config = bench.variant_config(
      values.config, values.variant, image_size=size, conv_1x1=values.conv_1x1
    )
    result = profile(config, batch=values.batch, steps=values.steps)
    height, width = config.data.image_size
    header = (
      f'Device: {bench.device_description()}; {values.variant}, input {height}x{width}, '
      f'batch {values.batch}, 1x1 convs as {bench.conv_1x1_name(config)}; '
      f'mean of {values.steps} traced steps.'
    )
    table = markdown_table(result, header=header)
    print(table)
    if values.out:
      epath.Path(values.out).write_text(table)

  cli.run(main)


if __name__ == '__main__':
  _cli()
