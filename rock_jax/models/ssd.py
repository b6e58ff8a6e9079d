"""SSD detection head: extra feature maps and 3x3 box / class predictors (Liu et al. 2016).

Detection runs on the (refined) conv5 map and on one extra map per entry of
`model.ssd.extra_layers`. Each extra layer is a 1x1 conv to the mid width then a 3x3
stride-2 conv (padding 1, so n -> ceil(n / 2)) to the output width, each followed by
BatchNorm and ReLU as in the ResNet-SSD the reference builds on (set
`model.ssd.extras_bn = False` for the original SSD's conv + bias + ReLU). An entry can also
give the spatial conv's kernel, stride and padding (`rock_jax.boxes.extra_geometry`), and
`model.ssd.extras_conv_bias` keeps conv biases before the BatchNorms (rock-pytorch). Every
map gets a 3x3 conv predicting 4 box offsets and one predicting num_classes + 1 scores for
each of its `2 + 2 * len(aspect_ratios[k])` default boxes (order as
`rock_jax.boxes.box_shapes`).

`[B, h, w, k * 4]` is reshaped to `[B, h * w * k, 4]` and the maps are concatenated in
order, which is the default-box order of `rock_jax.boxes.default_boxes`. Foreground class
biases start at `-log((1 - pi) / pi)` (focal-loss prior), background at 0.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rock_jax import boxes as box_lib
from rock_jax.models import layers

# The reference SSD initialises extras and predictors with Xavier (Glorot) uniform.
head_init = nn.initializers.xavier_uniform()


def class_bias_init(num_classes: int, prior_pi: float):
  """Bias initialiser of a class predictor: 0 for background, the prior for the rest.

  Args:
    num_classes: Foreground classes C (each box has C + 1 scores, background first).
    prior_pi: Initial foreground probability pi.

  Returns:
    A Flax initialiser for a bias of shape `[k * (C + 1)]`.
  """
  foreground = -math.log((1.0 - prior_pi) / prior_pi)

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    del key
    (size,) = shape
    one_box = jnp.full((num_classes + 1,), foreground, dtype).at[0].set(0.0)
    return jnp.tile(one_box, size // (num_classes + 1))

  return init


class SSDHead(nn.Module):
  """Extra feature maps and per-map box and class predictors.

  Attributes:
    num_classes: Foreground classes C; logits have C + 1 entries (0 = background).
    extra_layers: `(mid_width, out_width)` or `(mid_width, out_width, kernel, stride,
      padding)` for each extra map (see `rock_jax.boxes.extra_geometry`).
    aspect_ratios: Ratios of each map (conv5 first); `len(extra_layers) + 1` entries.
    prior_pi: Focal-loss prior of the foreground class biases.
    extras_bn: BatchNorm (and no conv bias) in the extra layers.
    extras_conv_bias: Conv biases in the extra layers even before a BatchNorm.
    bn_momentum: Flax BatchNorm momentum.
    dtype: Compute dtype.
    conv_1x1: How convs are computed ('auto', 'conv', 'dot'; `layers.Conv`): the 1x1
      convs as dots and the spatial ones' gradients as dots on a CPU.
  """

  num_classes: int
  extra_layers: Sequence[Sequence[int]]
  aspect_ratios: Sequence[Sequence[float]]
  prior_pi: float = 0.01
  extras_bn: bool = True
  extras_conv_bias: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  conv_1x1: str = 'auto'

  def _conv_bn_relu(self, x, features, kernel, stride, padding, name, train):
    x = layers.Conv(
      features,
      kernel,
      strides=stride,
      padding=tuple((p, p) for p in padding),
      use_bias=self.extras_conv_bias or not self.extras_bn,
      kernel_init=head_init,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      conv_1x1=self.conv_1x1,
      name=f'{name}_conv',
    )(x)
    if self.extras_bn:
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name=f'{name}_bn',
      )(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, feature: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Predicts box offsets and class logits for every default box.

    Args:
      feature: The (refined) conv5 map `[B, h, w, C5]`.
      train: Training mode (BatchNorm batch statistics in the extras).

    Returns:
      `(box_offsets [B, A, 4], logits [B, A, num_classes + 1])`, float32.
    """
    if len(self.aspect_ratios) != len(self.extra_layers) + 1:
      raise ValueError(
        f'model.ssd.aspect_ratios has {len(self.aspect_ratios)} entries; it needs one per '
        f'feature map: {len(self.extra_layers) + 1} (conv5 + {len(self.extra_layers)} extras).'
      )
    maps = [feature.astype(self.dtype)]
    geometry = box_lib.extra_geometry(self.extra_layers)
    for index, (layer, (kernel, stride, padding)) in enumerate(
      zip(self.extra_layers, geometry, strict=True)
    ):
      mid, out = layer[:2]
      x = self._conv_bn_relu(maps[-1], mid, (1, 1), 1, (0, 0), f'extra{index + 1}_reduce', train)
      maps.append(self._conv_bn_relu(x, out, kernel, stride, padding, f'extra{index + 1}', train))

    all_boxes, all_logits = [], []
    for index, (x, k) in enumerate(
      zip(maps, box_lib.boxes_per_location(self.aspect_ratios), strict=True)
    ):
      batch, height, width, _ = x.shape
      boxes = layers.Conv(
        k * 4,
        (3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=head_init,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        conv_1x1=self.conv_1x1,
        name=f'box{index}',
      )(x)
      logits = layers.Conv(
        k * (self.num_classes + 1),
        (3, 3),
        padding=((1, 1), (1, 1)),
        kernel_init=head_init,
        bias_init=class_bias_init(self.num_classes, self.prior_pi),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        conv_1x1=self.conv_1x1,
        name=f'cls{index}',
      )(x)
      all_boxes.append(boxes.reshape(batch, height * width * k, 4))
      all_logits.append(logits.reshape(batch, height * width * k, self.num_classes + 1))
    boxes = jnp.concatenate(all_boxes, axis=1).astype(jnp.float32)
    logits = jnp.concatenate(all_logits, axis=1).astype(jnp.float32)
    return boxes, logits
