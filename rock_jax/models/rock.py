"""ROCK residual auxiliary block and the flat multi-task heads (paper Section 2, Figure 2).

ROCK refines the base feature map X (conv5) with auxiliary tasks:
- encoder: shared trunk (1x1 conv to `trunk_width`, BN, ReLU; 3x3 conv, BN, ReLU), then one
  linear 1x1 conv per task into K_t maps (with bias, no BN and no ReLU);
- decoder: per task a 1x1 conv K_t -> C (the width of X), BN, ReLU;
- fusion: 'add' is Eq. 1, `X + sum_t Dec_t(Enc_t(X))`; 'product' is
  `X * prod_t (1 + Dec_t(Enc_t(X)))`, a multiplicative gate written in residual form so
  that a zero decoder output leaves X unchanged (the decoders end in a ReLU, so a pure
  `X * prod_t Dec_t` would zero out X wherever one decoder is inactive, discarding the
  pretrained features at initialisation); 'none' skips decoder and fusion (the paper's
  'ROCK w/o fusion' ablation);
- predictor: pooling only (no parameters): global average pooling for image-level
  classes, the channel mean for dense scalars, the channel mean of each contiguous group
  of K_t / components maps for dense vectors.

Convs followed by BatchNorm have no bias (`conv_bias` adds them, as rock-pytorch has).
With the paper's tasks (27 / 128 / 3 x 128) and X of width 2048 the block has 4,802,587
parameters.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rock_jax import tasks as tasks_lib
from rock_jax.models import layers

FUSIONS = ('add', 'product', 'none')


def pool(task: tasks_lib.Task, encoding: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """The parameter-free predictor of one task.

  Args:
    task: The task.
    encoding: `[B, h, w, K]` task maps.

  Returns:
    The task's float32 outputs: image_class `{name: [B, K], name_map: [B, h, w, K]}`,
    dense_scalar `{name: [B, h, w]}`, dense_vector `{name: [B, h, w, components]}`.
  """
  encoding = encoding.astype(jnp.float32)
  if task.kind == 'image_class':
    return {task.name: encoding.mean(axis=(1, 2)), task.name + '_map': encoding}
  if task.kind == 'dense_scalar':
    return {task.name: encoding.mean(axis=-1)}
  batch, height, width, channels = encoding.shape
  groups = encoding.reshape(batch, height, width, task.components, channels // task.components)
  return {task.name: groups.mean(axis=-1)}


class ConvBNReLU(nn.Module):
  """A 1x1 or 3x3 conv, then BatchNorm and ReLU (no conv bias unless asked: BN has an offset)."""

  features: int
  kernel: int = 1
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  conv_bias: bool = False
  conv_1x1: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    pad = (self.kernel - 1) // 2
    x = layers.Conv(
      self.features,
      (self.kernel, self.kernel),
      padding=((pad, pad), (pad, pad)),
      use_bias=self.conv_bias,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      conv_1x1=self.conv_1x1,
      name='conv',
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='bn',
    )(x)
    return nn.relu(x)


class ROCK(nn.Module):
  """The residual auxiliary block.

  Attributes:
    tasks: Auxiliary tasks, in order.
    trunk_width: Width of the shared encoder trunk (C / 4 in the paper).
    fusion: 'add' (Eq. 1), 'product' or 'none' (no decoder, X passes unchanged).
    extra_task_convs: Reference option: per task 1x1 (trunk/2), 3x3 (trunk/2), 1x1
      (trunk) convs with BN and ReLU before the linear task conv.
    post_fusion_bn_relu: Reference option: BN and ReLU after the fusion.
    conv_bias: Reference option: biases on the convs before a BatchNorm (no effect on
      the function in training mode; in eval mode they shift the running means).
    bn_momentum: Flax BatchNorm momentum.
    dtype: Compute dtype.
    conv_1x1: How 1x1 convs are computed ('auto', 'conv', 'dot'; `layers.Conv`).
  """

  tasks: tuple[tasks_lib.Task, ...]
  trunk_width: int = 512
  fusion: str = 'add'
  extra_task_convs: bool = False
  post_fusion_bn_relu: bool = False
  conv_bias: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  conv_1x1: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Refines X and predicts the auxiliary tasks.

    Args:
      x: Base feature map `[B, h, w, C]`.
      train: Training mode (BatchNorm batch statistics).

    Returns:
      `(x_refined [B, h, w, C], aux)` with aux as in `pool`.
    """
    if self.fusion not in FUSIONS:
      raise ValueError(f'ROCK fusion must be one of {FUSIONS}, got {self.fusion!r}.')
    if not self.tasks:
      raise ValueError('ROCK needs at least one auxiliary task (config.model.tasks).')
    x = x.astype(self.dtype)
    dense = lambda features, kernel, name: ConvBNReLU(
      features,
      kernel,
      self.bn_momentum,
      self.dtype,
      conv_bias=self.conv_bias,
      conv_1x1=self.conv_1x1,
      name=name,
    )
    trunk = dense(self.trunk_width, 1, 'trunk1')(x, train=train)
    trunk = dense(self.trunk_width, 3, 'trunk2')(trunk, train=train)

    aux, decoded = {}, []
    for task in self.tasks:
      y = trunk
      if self.extra_task_convs:
        y = dense(self.trunk_width // 2, 1, f'{task.name}_extra1')(y, train=train)
        y = dense(self.trunk_width // 2, 3, f'{task.name}_extra2')(y, train=train)
        y = dense(self.trunk_width, 1, f'{task.name}_extra3')(y, train=train)
      # Linear task conv: its maps are what the pooling predictor reads.
      encoding = layers.Conv(
        task.width,
        (1, 1),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        conv_1x1=self.conv_1x1,
        name=f'{task.name}_enc',
      )(y)
      aux.update(pool(task, encoding))
      if self.fusion != 'none':
        decoded.append(dense(x.shape[-1], 1, f'{task.name}_dec')(encoding, train=train))

    if self.fusion == 'add':
      x = x + sum(decoded)
    elif self.fusion == 'product':
      for d in decoded:
        x = x * (1 + d)
    if self.post_fusion_bn_relu and self.fusion != 'none':
      x = nn.relu(
        nn.BatchNorm(
          use_running_average=not train,
          momentum=self.bn_momentum,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name='fusion_bn',
        )(x)
      )
    return x, aux


class FlatMTL(nn.Module):
  """Flat multi-task baseline: a 1x1 conv head per task on X, no fusion.

  image_class tasks get K_t maps and global average pooling; dense_scalar 1 map;
  dense_vector `components` maps.

  Attributes:
    tasks: Auxiliary tasks, in order.
    dtype: Compute dtype.
    conv_1x1: How 1x1 convs are computed ('auto', 'conv', 'dot'; `layers.Conv`).
  """

  tasks: tuple[tasks_lib.Task, ...]
  dtype: Any = jnp.float32
  conv_1x1: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Predicts the auxiliary tasks; X passes unchanged.

    Args:
      x: Base feature map `[B, h, w, C]`.
      train: Unused (no BatchNorm); kept for the common block interface.

    Returns:
      `(x, aux)` with aux as in `pool`.
    """
    del train
    aux = {}
    for task in self.tasks:
      width = {'image_class': task.width, 'dense_scalar': 1, 'dense_vector': task.components}
      maps = layers.Conv(
        width[task.kind],
        (1, 1),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        conv_1x1=self.conv_1x1,
        name=f'{task.name}_head',
      )(x.astype(self.dtype))
      # With one map per output, the pooling predictor is the identity for dense tasks.
      aux.update(pool(dataclasses.replace(task, width=width[task.kind]), maps))
    return x, aux
