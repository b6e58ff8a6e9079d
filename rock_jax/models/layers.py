"""A drop-in `nn.Conv` that computes 1x1 convolutions as matrix multiplies on a CPU.

XLA:CPU lowers the gradient of `lax.conv_general_dilated` to slow convolution kernels,
while a 1x1 convolution is the matrix multiply `[N*H*W, Cin] x [Cin, Cout]`, whose
forward and both gradients are dots that XLA:CPU runs 2-5x faster (issue #18). On GPU
and TPU the convolution is already lowered to cuDNN or the MXU, so nothing changes there
by default.

`Conv` is `nn.Conv` with one more field, `conv_1x1`:
- 'conv': always `lax.conv_general_dilated` (exactly `nn.Conv`);
- 'dot': pointwise convolutions (1x1 kernel, zero padding, no groups, no input
  dilation, no mask) as a dot over the channel axis; a strided one slices its input
  first (`x[:, ::s, ::s]`, the only pixels a 1x1 kernel with stride s reads);
- 'auto': 'dot' on a CPU backend, 'conv' elsewhere.

The parameters are those of `nn.Conv`: `kernel` of shape `(1, 1, Cin, Cout)`, drawn by
the same initialiser from the same shape, and `bias` `(Cout,)`; checkpoints, the
weight importers and the parameter counts do not see the difference. Convolutions that
are not pointwise (3x3, 7x7, ...) always go through `nn.Conv`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import linear
from jax import lax

CONV_1X1_MODES = ('auto', 'conv', 'dot')


def use_dot(mode: str, backend: str | None = None) -> bool:
  """Whether a pointwise convolution is computed as a dot.

  Args:
    mode: 'auto', 'conv' or 'dot' (`config.model.conv_1x1`).
    backend: the JAX backend ('cpu', 'gpu', 'tpu'); default `jax.default_backend()`.

  Returns:
    True for 'dot', and for 'auto' on a CPU backend.
  """
  if mode not in CONV_1X1_MODES:
    raise ValueError(f'conv_1x1 must be one of {CONV_1X1_MODES}, got {mode!r}.')
  if mode == 'auto':
    return (backend or jax.default_backend()) == 'cpu'
  return mode == 'dot'


def _all_ones(value: None | int | Sequence[int]) -> bool:
  if value is None:
    return True
  if isinstance(value, int):
    return value == 1
  return all(v == 1 for v in value)


def _strides(strides: None | int | Sequence[int], rank: int) -> tuple[int, ...]:
  if strides is None:
    return (1,) * rank
  if isinstance(strides, int):
    return (strides,) * rank
  return tuple(strides)


class Conv(nn.Conv):
  """`nn.Conv`, with pointwise convolutions as matrix multiplies (see module docstring).

  Attributes:
    conv_1x1: 'auto', 'conv' or 'dot'.
  """

  conv_1x1: str = 'auto'

  def _kernel_size(self) -> tuple[int, ...]:
    # An int is one spatial dimension, as in nn.Conv.
    if isinstance(self.kernel_size, int):
      return (self.kernel_size,)
    return tuple(self.kernel_size)

  def _pointwise(self, rank: int) -> bool:
    """Whether this layer is a plain 1x1 convolution (the dot path applies)."""
    if self._kernel_size() != (1,) * rank:
      return False
    if self.feature_group_count != 1 or self.mask is not None:
      return False
    if not _all_ones(self.input_dilation):
      return False
    padding = linear.canonicalize_padding(self.padding, rank)
    if isinstance(padding, str):
      # For a 1x1 kernel 'SAME' pads nothing, at any stride.
      return padding in ('SAME', 'VALID')
    return all(low == 0 and high == 0 for low, high in padding)

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    """Applies the convolution.

    Args:
      inputs: `[..., spatial..., Cin]` (NHWC for 2-D).

    Returns:
      `[..., spatial'..., Cout]`, as `nn.Conv` returns it.
    """
    rank = len(self._kernel_size())
    if not (use_dot(self.conv_1x1) and self._pointwise(rank)):
      return super().__call__(inputs)
    in_features = inputs.shape[-1]
    kernel = self.param(
      'kernel', self.kernel_init, (1,) * rank + (in_features, self.features), self.param_dtype
    )
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    strides = _strides(self.strides, rank)
    if any(s != 1 for s in strides):
      spatial = tuple(slice(None, None, s) for s in strides)
      inputs = inputs[(Ellipsis, *spatial, slice(None))]
    # Contract the channel axis: [..., Cin] x [Cin, Cout]. Its gradients are the dots
    # dX = dY K^T and dK = X^T dY.
    y = lax.dot_general(
      inputs,
      kernel.reshape(in_features, self.features),
      (((inputs.ndim - 1,), (0,)), ((), ())),
      precision=self.precision,
    )
    if bias is not None:
      y = y + bias
    return y
