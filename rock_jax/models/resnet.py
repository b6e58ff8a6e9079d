"""Dilated ResNet backbone (18/34/50/101) in Flax Linen, torchvision v1.5 or Keras v1 layout.

The backbone returns the conv5 feature map. Its output stride (8, 16 or 32) is set by
dilating the last stage(s) with torchvision's `replace_stride_with_dilation` semantics:
in a dilated stage the stride is removed, the first block keeps the previous dilation on
its 3x3 conv and the later blocks use the new one. The paper's default (ResNet-50, output
stride 16) maps a 480x640 image to a 30x40x2048 conv5.

Layouts:
- 'v1.5' (torchvision): stride on the 3x3 conv of a bottleneck, no conv biases,
  BatchNorm epsilon 1e-5.
- 'v1' (Keras `ResNet50`): stride on the first 1x1 conv, biases on every conv, BatchNorm
  epsilon 1.001e-5.

Parameter names follow `stem_conv`, `stem_bn`, `stage{s}_block{b}/{conv,bn}{1,2,3}` and
`stage{s}_block{b}/proj_{conv,bn}` (the shortcut projection), which
`rock_jax.tools.import_weights` maps from torchvision and Keras names.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rock_jax.models import layers, pooling

# Blocks per stage of the standard ResNets, and whether they use bottleneck blocks.
STAGE_SIZES = {
  18: ((2, 2, 2, 2), False),
  34: ((3, 4, 6, 3), False),
  50: ((3, 4, 6, 3), True),
  101: ((3, 4, 23, 3), True),
}
BN_EPSILON = {'v1.5': 1e-5, 'v1': 1.001e-5}
# torchvision initialises convs with kaiming_normal(mode='fan_out', relu).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def stage_dilations(output_stride: int) -> tuple[tuple[int, int], ...]:
  """Returns (stride, dilation) of stages 2..5 for an output stride.

  Args:
    output_stride: 8, 16 or 32.

  Returns:
    Four (stride, dilation) pairs; a dilated stage has stride 1 and doubles the
    dilation of the previous stage.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}.')
  # Stages dilated instead of strided, as torchvision's replace_stride_with_dilation.
  dilate = {32: (False,) * 4, 16: (False,) * 3 + (True,), 8: (False,) * 2 + (True,) * 2}
  dilate = dilate[output_stride]
  result, dilation = [], 1
  for index, dilated in enumerate(dilate):
    stride = 1 if index == 0 else 2
    if dilated:
      dilation *= stride
      stride = 1
    result.append((stride, dilation))
  return tuple(result)


class Block(nn.Module):
  """One residual block (basic for ResNet-18/34, bottleneck for 50/101).

  Attributes:
    width: Inner width (the 3x3 conv width); a bottleneck outputs 4 x width.
    bottleneck: Bottleneck (1x1, 3x3, 1x1) or basic (3x3, 3x3) block.
    stride: Spatial stride of the block.
    first_dilation: Dilation of the first 3x3 conv (torchvision keeps the previous
      stage's dilation there in the first block of a dilated stage).
    dilation: Dilation of the other 3x3 convs.
    layout: 'v1.5' or 'v1' (see module docstring).
    use_running_average: BatchNorm uses its running statistics.
    bn_momentum: Flax BatchNorm momentum (0.9 = PyTorch 0.1).
    dtype: Compute dtype.
    conv_1x1: How 1x1 convs are computed ('auto', 'conv', 'dot'; `layers.Conv`).
  """

  width: int
  bottleneck: bool
  stride: int = 1
  first_dilation: int = 1
  dilation: int = 1
  layout: str = 'v1.5'
  use_running_average: bool = True
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  conv_1x1: str = 'auto'

  def _conv(self, x, features, kernel, stride, dilation, name):
    pad = dilation * (kernel - 1) // 2
    return layers.Conv(
      features,
      (kernel, kernel),
      strides=stride,
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=dilation,
      use_bias=self.layout == 'v1',
      kernel_init=conv_init,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      conv_1x1=self.conv_1x1,
      name=name,
    )(x)

  def _bn(self, x, name):
    return nn.BatchNorm(
      use_running_average=self.use_running_average,
      momentum=self.bn_momentum,
      epsilon=BN_EPSILON[self.layout],
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name=name,
    )(x)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out_features = self.width * 4 if self.bottleneck else self.width
    if self.bottleneck:
      # v1 (Keras) strides the first 1x1 conv; v1.5 (torchvision) strides the 3x3.
      s1, s2 = (self.stride, 1) if self.layout == 'v1' else (1, self.stride)
      y = nn.relu(self._bn(self._conv(x, self.width, 1, s1, 1, 'conv1'), 'bn1'))
      y = self._conv(y, self.width, 3, s2, self.first_dilation, 'conv2')
      y = nn.relu(self._bn(y, 'bn2'))
      y = self._bn(self._conv(y, out_features, 1, 1, 1, 'conv3'), 'bn3')
    else:
      y = self._conv(x, self.width, 3, self.stride, self.first_dilation, 'conv1')
      y = nn.relu(self._bn(y, 'bn1'))
      y = self._bn(self._conv(y, self.width, 3, 1, self.dilation, 'conv2'), 'bn2')
    if self.stride != 1 or x.shape[-1] != out_features:
      x = self._bn(self._conv(x, out_features, 1, self.stride, 1, 'proj_conv'), 'proj_bn')
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet backbone without its classifier, returning conv5.

  Attributes:
    depth: 18, 34, 50 or 101.
    layout: 'v1.5' (torchvision) or 'v1' (Keras).
    output_stride: 8, 16 or 32.
    width: Stem width (64 for the real ResNets); stage widths are width x (1, 2, 4, 8).
    stage_sizes: Blocks per stage; empty for the standard sizes of `depth`.
    freeze_bn_stats: Use the running statistics in training too (scale and offset
      still train), as the reference does.
    bn_momentum: Flax BatchNorm momentum (0.9 = PyTorch momentum 0.1).
    dtype: Compute dtype; parameters stay float32.
    conv_1x1: How 1x1 convs are computed ('auto', 'conv', 'dot'; `layers.Conv`); where
      they are dots, a large stem max pool also takes its sliced gradient
      (`pooling.max_pool`), and 'conv' keeps XLA's own lowering of both.
  """

  depth: int = 50
  layout: str = 'v1.5'
  output_stride: int = 16
  width: int = 64
  stage_sizes: Sequence[int] = ()
  freeze_bn_stats: bool = True
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  conv_1x1: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Computes conv5.

    Args:
      x: Normalised images `[B, H, W, 3]`.
      train: Training mode (BatchNorm batch statistics unless frozen).

    Returns:
      conv5 `[B, ceil(H / s), ceil(W / s), C5]` for output stride s, in `dtype`.
    """
    if self.depth not in STAGE_SIZES:
      raise ValueError(f'ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}.')
    if self.layout not in BN_EPSILON:
      raise ValueError(f"ResNet layout must be 'v1.5' or 'v1', got {self.layout!r}.")
    sizes, bottleneck = STAGE_SIZES[self.depth]
    sizes = tuple(self.stage_sizes) or sizes
    use_running_average = (not train) or self.freeze_bn_stats

    x = x.astype(self.dtype)
    x = nn.Conv(
      self.width,
      (7, 7),
      strides=2,
      padding=((3, 3), (3, 3)),
      use_bias=self.layout == 'v1',
      kernel_init=conv_init,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='stem_conv',
    )(x)
    x = nn.BatchNorm(
      use_running_average=use_running_average,
      momentum=self.bn_momentum,
      epsilon=BN_EPSILON[self.layout],
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='stem_bn',
    )(x)
    x = nn.relu(x)
    # -inf padding (Flax) equals Keras' zero padding here since inputs are >= 0 after ReLU.
    # On a CPU (where the 1x1 convs are dots) a large pool takes its gradient through
    # window slices: XLA:CPU's select_and_scatter is slow there (pooling.py).
    sliced = layers.use_dot(self.conv_1x1) and x[0].size >= pooling.SLICED_MIN_SIZE
    x = pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), sliced_grad=sliced)

    previous_dilation = 1
    for stage, (num_blocks, (stride, dilation)) in enumerate(
      zip(sizes, stage_dilations(self.output_stride), strict=True)
    ):
      for index in range(num_blocks):
        x = Block(
          width=self.width * 2**stage,
          bottleneck=bottleneck,
          stride=stride if index == 0 else 1,
          first_dilation=previous_dilation if index == 0 else dilation,
          dilation=dilation,
          layout=self.layout,
          use_running_average=use_running_average,
          bn_momentum=self.bn_momentum,
          dtype=self.dtype,
          conv_1x1=self.conv_1x1,
          name=f'stage{stage + 1}_block{index + 1}',
        )(x)
      previous_dilation = dilation
    return x


def from_config(backbone_config: Any, dtype: Any = jnp.float32, conv_1x1: str = 'auto') -> ResNet:
  """Builds the backbone from `config.model.backbone`.

  Args:
    backbone_config: The `model.backbone` ConfigDict.
    dtype: Compute dtype.
    conv_1x1: How 1x1 convs are computed (`config.model.conv_1x1`).

  Returns:
    An unbound `ResNet` named 'backbone'.
  """
  return ResNet(
    depth=backbone_config.depth,
    layout=backbone_config.layout,
    output_stride=backbone_config.output_stride,
    width=backbone_config.width,
    stage_sizes=tuple(backbone_config.stage_sizes),
    freeze_bn_stats=backbone_config.freeze_bn_stats,
    bn_momentum=backbone_config.bn_momentum,
    dtype=dtype,
    conv_1x1=conv_1x1,
    name='backbone',
  )
