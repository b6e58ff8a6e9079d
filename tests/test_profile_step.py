"""Tests of the train-step profiler's HLO classification (tiny functions, no model)."""

import collections

import jax
import jax.numpy as jnp
from jax import lax

from rock_jax.tools import profile_step


def _classes(fn, *args) -> collections.Counter:
  hlo = profile_step.parse_hlo(jax.jit(fn).lower(*args).compile().as_text())
  entry = {name for name, inst in hlo.items() if inst['computation'].startswith('main')}
  assert entry, 'no ENTRY instructions parsed'
  return collections.Counter(profile_step.classify(name, hlo) for name in entry)


def test_classify_forward_backward_and_loss():
  dn = ('NHWC', 'HWIO', 'NHWC')

  def step(x, k3, w):
    def loss(k3, w):
      y = lax.conv_general_dilated(x, k3, (1, 1), 'SAME', dimension_numbers=dn)
      y = jnp.tanh(jnp.einsum('nhwc,cd->nhwd', y, w))
      with jax.named_scope('loss'):
        # A sort (as the hard-negative mining) is not fused into the model's ops.
        return jnp.sort(y.reshape(-1))[-10:].sum()

    grads = jax.grad(loss, argnums=(0, 1))(k3, w)
    # An "optimizer": outside the differentiated function.
    return jax.tree.map(lambda g: g * 0.1, grads)

  x = jnp.ones((2, 8, 8, 4))
  classes = _classes(step, x, jnp.ones((3, 3, 4, 8)), jnp.ones((8, 16)))
  whats = {what for what, _ in classes}
  whens = {when for _, when in classes}
  assert ('conv 3x3', 'forward') in classes
  assert ('conv 3x3 (kernel grad)', 'backward') in classes
  assert any(what == 'dot (matmul)' for what in whats)
  assert {'forward', 'backward'} <= whens
  assert {'loss', 'optimizer and metrics'} <= whens


def test_markdown_table_sums():
  result = {
    'step_s': 1.0,
    'transfer_s': 0.001,
    'ops': {('conv 3x3', 'forward'): 0.3, ('dot (matmul)', 'backward'): 0.1},
  }
  table = profile_step.markdown_table(result, header='Device: test')
  assert '| conv 3x3 | forward | 300.0 | 75.0 % |' in table
  assert 'Ops total 400 ms per step; step wall time 1000 ms' in table
