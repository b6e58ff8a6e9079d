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
weight importers and the parameter counts do not see the difference.

A spatial convolution (2-D, no groups or input dilation) takes `conv_tap_grad` in the
'dot' mode: matrix multiplies where XLA:CPU is slow. XLA:CPU computes a kernel gradient
as a convolution with the channels as its batch, 2-7x slower than the forward
convolution of the same FLOPs. The gradients:
- at stride 1, any width: the input gradient is the convolution of dY with the flipped
  kernel, and its im2col matrix dZ (the taps of dY side by side) serves both gradients,
  one dot each: dX = dZ W^T and dW = X^T dZ;
- strided, both widths at least `TAP_GRAD_MIN_CHANNELS`: the kernel gradient is one dot
  per kernel tap (one im2col dot where the output has fewer pixels than channels), and
  the input gradient one dot per tap added back on the strided grid (`untaps`), where
  XLA:CPU convolves the zero-dilated dY with a transposed copy of the kernel.
The forward pass stays XLA's convolution but in two cases where one dot is faster: an
output at most 1/`NARROW_OUTPUT_RATIO` as wide as its input at stride 1 (the SSD
predictors), and a strided conv with fewer output pixels than channels (the SSD extras).
Every dot is 2-D, with the pixels of all images as one axis: contracting the pixel axes
of 4-D arrays makes XLA:CPU feed the dot transposed copies (BENCHMARKS.md, issue #18).
Narrower strided convs and other convolutions go through `nn.Conv` unchanged.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import linear
from jax import lax

CONV_1X1_MODES = ('auto', 'conv', 'dot')
# A strided spatial conv with both widths at least this takes its gradients as dots
# (`conv_tap_grad`); narrower ones keep XLA's (measured, BENCHMARKS.md). Every unstrided
# one takes them.
TAP_GRAD_MIN_CHANNELS = 64
# A stride-1 conv at most 1/this as wide as its input computes its forward pass as one dot.
NARROW_OUTPUT_RATIO = 4
_NHWC = ('NHWC', 'HWIO', 'NHWC')


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


def _conv(x, kernel, strides, padding, dilation, precision):
  return lax.conv_general_dilated(
    x,
    kernel,
    strides,
    padding,
    rhs_dilation=dilation,
    dimension_numbers=_NHWC,
    precision=precision,
  )


def taps(
  x: jnp.ndarray,
  kernel_size: Sequence[int],
  out_size: Sequence[int],
  strides: Sequence[int],
  padding: Sequence[tuple[int, int]],
  dilation: Sequence[int],
) -> list[jnp.ndarray]:
  """The input pixels each kernel tap of a 2-D conv multiplies, `[B, Ho, Wo, C]` per tap.

  Tap `(i, j)` (item `i * kw + j`) holds, at output pixel `(y, x)`, the input at
  `(y * sh + i * dh - pad_top, x * sw + j * dw - pad_left)`, zero outside the image.
  """
  # lax.pad: a negative padding crops (the flipped padding of a stride-1 input gradient).
  x = lax.pad(
    x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0))
  )
  (kh, kw), (ho, wo), (sh, sw), (dh, dw) = kernel_size, out_size, strides, dilation
  batch, channels = x.shape[0], x.shape[-1]
  return [
    lax.slice(
      x,
      (0, i * dh, j * dw, 0),
      (batch, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, channels),
      (1, sh, sw, 1),
    )
    for i in range(kh)
    for j in range(kw)
  ]


def untaps(
  parts: Sequence[jnp.ndarray],
  in_size: Sequence[int],
  kernel_size: Sequence[int],
  strides: Sequence[int],
  padding: Sequence[tuple[int, int]],
  dilation: Sequence[int],
) -> jnp.ndarray:
  """The transpose of `taps`: each tap's `[B, Ho, Wo, C]` added back where it was read.

  Returns `[B, H, W, C]` for `in_size = (H, W)`: the sum over taps of `parts[i * kw + j]`
  placed at `(y * sh + i * dh - pad_top, x * sw + j * dw - pad_left)`, the padding
  dropped. JAX transposes `taps`' strided slices and padding into pads and a slice.
  """
  batch, out_size, channels = parts[0].shape[0], parts[0].shape[1:3], parts[0].shape[-1]
  x = jax.ShapeDtypeStruct((batch, *in_size, channels), parts[0].dtype)
  (total,) = jax.linear_transpose(
    lambda x: taps(x, kernel_size, out_size, strides, padding, dilation), x
  )(list(parts))
  return total


def _columns(x, kernel_size, out_size, strides, padding, dilation):
  """`taps` as 2-D `[B*Ho*Wo, C]` matrices: side by side, the im2col matrix."""
  return [
    tap.reshape(-1, x.shape[-1])
    for tap in taps(x, kernel_size, out_size, strides, padding, dilation)
  ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_tap_grad(x, kernel, strides, padding, dilation, precision=None):
  """`lax.conv_general_dilated` (NHWC, HWIO) whose gradients are dots per kernel tap.

  Args:
    x: `[B, H, W, C]`.
    kernel: `[kh, kw, C, O]`.
    strides: `(sh, sw)`.
    padding: `((top, bottom), (left, right))`, non-negative.
    dilation: the kernel dilation `(dh, dw)`.
    precision: passed to the convolutions and the dots.

  Returns:
    `[B, Ho, Wo, O]`. At stride 1 both gradients are one dot each of dZ, the taps of dY
    for the flipped kernel side by side (`[B*H*W, kh*kw*O]`): `dX = dZ W^T` and
    `dW = X^T dZ`. Strided, the kernel gradient of tap `(i, j)` is
    `taps(x)[i, j]^T dY` (`[B*Ho*Wo, C]^T [B*Ho*Wo, O]`), or all taps side by side in one
    dot where `B*Ho*Wo < O`, and the input gradient is `untaps` of the per-tap
    `dY W[i, j]^T`. The same sums as the convolution's, in another order.
  """
  return _tap_conv(x, kernel, strides, padding, dilation, precision)


def _tap_conv(x, kernel, strides, padding, dilation, precision):
  """The forward pass of `conv_tap_grad`: XLA's convolution, or one dot where it is slow.

  - An output at most 1/`NARROW_OUTPUT_RATIO` as wide as the input, at stride 1 (the SSD
    predictors): the products `X W[i, j]` of all taps in one dot, `[B*H*W, C] x [C,
    kh*kw*O]`, each then read where its tap reads and summed.
  - Strided, with fewer output pixels than channels (the SSD extras): one im2col dot.
  """
  kh, kw, channels, features = kernel.shape
  batch, height, width = x.shape[:3]
  out_size = tuple(
    (size + low + high - (k - 1) * d - 1) // s + 1
    for size, k, s, (low, high), d in zip(
      (height, width), (kh, kw), strides, padding, dilation, strict=True
    )
  )
  dot = functools.partial(lax.dot_general, precision=precision, preferred_element_type=jnp.float32)
  if all(s == 1 for s in strides) and NARROW_OUTPUT_RATIO * features <= channels:
    products = dot(x.reshape(-1, channels), kernel, (((1,), (2,)), ((), ())))
    products = jnp.pad(
      products.reshape(batch, height, width, kh, kw, features),
      ((0, 0), *padding, (0, 0), (0, 0), (0, 0)),
    )
    (ho, wo), (dh, dw) = out_size, dilation
    y = sum(
      products[:, i * dh : i * dh + ho, j * dw : j * dw + wo, i, j]
      for i in range(kh)
      for j in range(kw)
    )
    return y.astype(x.dtype)
  if any(s != 1 for s in strides) and batch * out_size[0] * out_size[1] < features:
    columns = _columns(x, (kh, kw), out_size, strides, padding, dilation)
    y = dot(
      jnp.concatenate(columns, axis=1), kernel.reshape(-1, features), (((1,), (0,)), ((), ()))
    )
    return y.reshape(batch, *out_size, features).astype(x.dtype)
  return _conv(x, kernel, strides, padding, dilation, precision)


def _tap_grad_fwd(x, kernel, strides, padding, dilation, precision):
  return _tap_conv(x, kernel, strides, padding, dilation, precision), (x, kernel)


def _tap_grad_bwd(strides, padding, dilation, precision, residuals, dy):
  x, kernel = residuals
  kh, kw, channels, features = kernel.shape
  dot = functools.partial(lax.dot_general, precision=precision, preferred_element_type=jnp.float32)
  pixels = (((0,), (0,)), ((), ()))
  if all(s == 1 for s in strides):
    # At stride 1 the input gradient is the convolution of dY with the flipped kernel. Its
    # im2col matrix dZ, the taps of dY side by side `[B*H*W, kh*kw*O]`, serves both
    # gradients, one dot each: dX = dZ W^T contracting taps and output channels, and
    # dW = X^T dZ contracting pixels (BENCHMARKS.md).
    flipped = tuple(
      ((k - 1) * d - low, (k - 1) * d - high)
      for k, d, (low, high) in zip((kh, kw), dilation, padding, strict=True)
    )
    dz = jnp.stack(taps(dy, (kh, kw), x.shape[1:3], strides, flipped, dilation)[::-1], axis=3)
    dx = dot(
      dz.reshape(-1, kh * kw, features),
      kernel.reshape(kh * kw, channels, features),
      (((1, 2), (0, 2)), ((), ())),
    )
    dkernel = dot(x.reshape(-1, channels), dz.reshape(-1, kh * kw * features), pixels)
    dkernel = dkernel.reshape(channels, kh, kw, features).transpose(1, 2, 0, 3)
    return dx.reshape(x.shape).astype(x.dtype), dkernel.astype(kernel.dtype)
  # Strided: XLA:CPU's input gradient is a convolution of the zero-dilated dY with a
  # transposed copy of the kernel, 1.2-2.1x slower than a dot per tap, `dY W[i, j]^T`,
  # each added back on the strided grid (BENCHMARKS.md).
  dy2 = dy.reshape(-1, features)
  channels_last = (((1,), (1,)), ((), ()))
  parts = [
    dot(dy2, kernel[i, j], channels_last).reshape(*dy.shape[:3], channels)
    for i in range(kh)
    for j in range(kw)
  ]
  dx = untaps(parts, x.shape[1:3], (kh, kw), strides, padding, dilation).astype(x.dtype)
  # The kernel gradient, `[B*Ho*Wo, C]^T [B*Ho*Wo, O]` per tap. As 2-D dots XLA:CPU reads
  # both operands in place; contracting the 4-D arrays' (B, H, W) axes would cost a
  # transposed copy of each tap.
  columns = _columns(x, (kh, kw), dy.shape[1:3], strides, padding, dilation)
  if dy2.shape[0] < features:
    # Fewer pixels than output channels (the SSD extras): one dot of the taps side by
    # side (im2col) moves less memory than stacking kh * kw kernel-sized products.
    dkernel = dot(jnp.concatenate(columns, axis=1), dy2, pixels)
  else:
    dkernel = jnp.stack([dot(column, dy2, pixels) for column in columns])
  return dx, dkernel.reshape(kernel.shape).astype(kernel.dtype)


conv_tap_grad.defvjp(_tap_grad_fwd, _tap_grad_bwd)


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

  def _tap_grad_padding(self, inputs: jnp.ndarray) -> tuple[tuple[int, int], ...] | None:
    """The explicit padding of a 2-D conv whose gradients take `conv_tap_grad`.

    None where the layer keeps `nn.Conv`: not 2-D NHWC, a strided conv with a width under
    `TAP_GRAD_MIN_CHANNELS`, groups, input dilation, a mask, or a padding mode other than
    'SAME', 'VALID' or non-negative pairs.
    """
    kernel_size = self._kernel_size()
    if len(kernel_size) != 2 or inputs.ndim != 4:
      return None
    if self.feature_group_count != 1 or self.mask is not None:
      return None
    if not _all_ones(self.input_dilation):
      return None
    dilation, strides = _strides(self.kernel_dilation, 2), _strides(self.strides, 2)
    narrow = min(inputs.shape[-1], self.features) < TAP_GRAD_MIN_CHANNELS
    if narrow and any(s != 1 for s in strides):
      return None
    window = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True))
    padding = linear.canonicalize_padding(self.padding, 2)
    if isinstance(padding, str):
      if padding not in ('SAME', 'VALID'):
        return None
      padding = lax.padtype_to_pads(inputs.shape[1:3], window, strides, padding)
    padding = tuple((int(low), int(high)) for low, high in padding)
    if any(low < 0 or high < 0 for low, high in padding):
      return None
    return padding

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    """Applies the convolution.

    Args:
      inputs: `[..., spatial..., Cin]` (NHWC for 2-D).

    Returns:
      `[..., spatial'..., Cout]`, as `nn.Conv` returns it.
    """
    rank = len(self._kernel_size())
    if not use_dot(self.conv_1x1):
      return super().__call__(inputs)
    if not self._pointwise(rank):
      padding = self._tap_grad_padding(inputs)
      if padding is None:
        return super().__call__(inputs)
      return self._spatial(inputs, padding)
    in_features = inputs.shape[-1]
    inputs, kernel, bias = self._parameters(inputs)
    strides = _strides(self.strides, rank)
    if any(s != 1 for s in strides):
      spatial = tuple(slice(None, None, s) for s in strides)
      inputs = inputs[(Ellipsis, *spatial, slice(None))]
    # [N*H*W, Cin] x [Cin, Cout]. Its gradients are the dots dX = dY K^T and
    # dK = X^T dY. Flattened to 2-D first: the kernel gradient of a dot that contracts
    # the channels of the 4-D array would contract (N, H, W), which XLA:CPU feeds with a
    # transposed copy of dY (half the time of this layer's backward, BENCHMARKS.md).
    y = lax.dot_general(
      inputs.reshape(-1, in_features),
      kernel.reshape(in_features, self.features),
      (((1,), (0,)), ((), ())),
      precision=self.precision,
    ).reshape(*inputs.shape[:-1], self.features)
    if bias is not None:
      y = y + bias
    return y

  def _parameters(self, inputs: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """`(inputs, kernel, bias)` as `nn.Conv` creates and promotes them (bias may be None)."""
    kernel_shape = (*self._kernel_size(), inputs.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, kernel_shape, self.param_dtype)
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    return self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)

  def _spatial(self, inputs: jnp.ndarray, padding: tuple[tuple[int, int], ...]) -> jnp.ndarray:
    """A 2-D conv as `nn.Conv` computes it, with the kernel gradient of `conv_tap_grad`."""
    inputs, kernel, bias = self._parameters(inputs)
    y = conv_tap_grad(
      inputs,
      kernel,
      _strides(self.strides, 2),
      padding,
      _strides(self.kernel_dilation, 2),
      self.precision,
    )
    if bias is not None:
      y = y + bias
    return y
