"""Checked readers for the datasets' original files, with one-line errors.

Every failure raises `DataError` whose message starts with the offending file and
says what is wrong with it (missing, truncated, missing key, wrong shape, wrong
PNG bit depth or size, ...), so a bad manual directory is fixed in one look
instead of from a traceback deep inside h5py or TensorFlow.

Files are reached through `etils.epath` (local or cloud paths), never `open` or
`os.listdir`, which TFDS' builder tests forbid; h5py and scipy need local paths,
which they get as strings.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from etils import epath

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# IHDR colour types -> channels (palette PNGs decode to RGB indices we do not accept).
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


class DataError(ValueError):
  """A dataset file is missing or malformed; the message names the file."""


def require_file(path: epath.PathLike) -> epath.Path:
  """Returns `path` as an `epath.Path`, raising `DataError` when it is not a file.

  Args:
    path: the expected file.

  Returns:
    The path.
  """
  path = epath.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: missing file')
  return path


def require_dir(path: epath.PathLike) -> epath.Path:
  """Returns `path` as an `epath.Path`, raising `DataError` when it is not a folder.

  Args:
    path: the expected folder.

  Returns:
    The path.
  """
  path = epath.Path(path)
  if not path.is_dir():
    raise DataError(f'{path}: missing folder')
  return path


def open_mat_v73(path: epath.PathLike):
  """Opens a MATLAB v7.3 (HDF5) .mat for reading with h5py.

  Args:
    path: the .mat file (local: HDF5 needs random access to a real file).

  Returns:
    An open `h5py.File` (use it as a context manager).
  """
  import h5py  # Imported here so that builders not reading .mat files don't need it.

  path = require_file(path)
  try:
    return h5py.File(str(path), 'r')
  except OSError as e:
    # h5py says e.g. 'truncated file: eof = ..., sblock->base_addr = ...'.
    detail = str(e).split('(', 1)[-1].rstrip(')')
    raise DataError(f'{path}: not a readable MATLAB v7.3/HDF5 file (truncated?): {detail}') from e


def require_dataset(
  h5file, key: str, shape: Sequence[int | None], path: epath.PathLike, dtype=None
):
  """Returns `h5file[key]` after checking it exists and has the expected shape.

  Args:
    h5file: an open `h5py.File`.
    key: dataset name.
    shape: expected shape as h5py sees it; `None` entries match any size.
    path: the file, for error messages.
    dtype: expected numpy dtype, or None for any.

  Returns:
    The `h5py.Dataset` (not read into memory).
  """
  if key not in h5file:
    raise DataError(f'{path}: missing key {key!r}')
  ds = h5file[key]
  ok = len(ds.shape) == len(shape) and all(
    s is None or s == d for s, d in zip(shape, ds.shape, strict=True)
  )
  if not ok:
    want = tuple('*' if s is None else s for s in shape)
    raise DataError(f'{path}: key {key!r} has shape {ds.shape}, expected {want}')
  if dtype is not None and ds.dtype != np.dtype(dtype):
    raise DataError(f'{path}: key {key!r} has dtype {ds.dtype}, expected {np.dtype(dtype)}')
  return ds


def read_mat_strings(h5file, key: str, path: epath.PathLike) -> list[str]:
  """Reads a MATLAB cell array of strings (references into `#refs#`) from a v7.3 .mat.

  Args:
    h5file: an open `h5py.File`.
    key: the cell array's name, e.g. 'names' or 'scenes'.
    path: the file, for error messages.

  Returns:
    The strings in MATLAB's linear order.
  """
  refs = require_dataset(h5file, key, (None, None), path)[()]
  out = []
  # h5py reverses MATLAB's axes, so a C-order ravel is MATLAB's column-major order.
  for ref in refs.reshape(-1):
    try:
      chars = h5file[ref]
    except (TypeError, ValueError, KeyError) as e:
      raise DataError(f'{path}: key {key!r} holds a broken string reference') from e
    # MATLAB stores '' as a 2-element uint64 array flagged MATLAB_empty.
    if chars.attrs.get('MATLAB_empty', 0):
      out.append('')
    else:
      out.append(''.join(chr(c) for c in np.asarray(chars[()]).reshape(-1)))
  return out


def load_splits(path: epath.PathLike, num_images: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads NYUv2's `splits.mat` (MATLAB v5) and checks it.

  Args:
    path: the splits file.
    num_images: number of images in the labeled set (1449); indices are 1-based.

  Returns:
    `(train, test)` int64 arrays of 1-based indices, in file order.
  """
  import scipy.io

  path = require_file(path)
  try:
    mat = scipy.io.loadmat(str(path))
  except Exception as e:  # noqa: BLE001 - scipy raises MatReadError, IndexError, ValueError...
    # An empty, short or text file fails deep in scipy's header parsing.
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
      f'{path}: not a readable MATLAB v5 file (empty, truncated or text?): {detail}'
    ) from e
  out = []
  for key in ('trainNdxs', 'testNdxs'):
    if key not in mat:
      raise DataError(f'{path}: missing key {key!r}')
    arr = np.asarray(mat[key])
    if arr.ndim != 2 or 1 not in arr.shape or not np.issubdtype(arr.dtype, np.number):
      raise DataError(f'{path}: key {key!r} has shape {arr.shape}, expected (n, 1) numbers')
    arr = arr.reshape(-1)
    if not np.all(np.equal(np.mod(arr, 1), 0)):
      raise DataError(f'{path}: key {key!r} holds non-integer indices')
    arr = arr.astype(np.int64)
    bad = arr[(arr < 1) | (arr > num_images)]
    if bad.size:
      raise DataError(f'{path}: {key} index {bad[0]} outside 1..{num_images}')
    if np.unique(arr).size != arr.size:
      raise DataError(f'{path}: {key} repeats indices')
    out.append(arr)
  both = np.intersect1d(out[0], out[1])
  if both.size:
    raise DataError(f'{path}: trainNdxs and testNdxs overlap ({both.size} indices, e.g. {both[0]})')
  return out[0], out[1]


def png_header(data: bytes, path: epath.PathLike) -> tuple[int, int, int, int]:
  """Parses a PNG's IHDR chunk.

  Args:
    data: the file's bytes.
    path: the file, for error messages.

  Returns:
    `(height, width, bit_depth, channels)`.
  """
  if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b'IHDR':
    raise DataError(f'{path}: not a PNG file')
  width, height, bit_depth, color_type = struct.unpack('>IIBB', data[16:26])
  if color_type not in _PNG_CHANNELS:
    raise DataError(f'{path}: PNG colour type {color_type} (palette?) not supported')
  return height, width, bit_depth, _PNG_CHANNELS[color_type]


def read_png(
  path: epath.PathLike,
  *,
  bit_depth: int | Sequence[int],
  channels: int | Sequence[int],
  size: tuple[int, int] | None = None,
) -> np.ndarray:
  """Reads a PNG after checking its bit depth, channels and size.

  Args:
    path: the PNG.
    bit_depth: accepted bit depth(s), 8 or 16.
    channels: accepted channel count(s) (1 grey, 3 RGB, ...).
    size: expected `(height, width)`, or None for any.

  Returns:
    `[H, W, C]` uint8 or uint16 array (uint16 for 16-bit files).
  """
  path = require_file(path)
  data = path.read_bytes()
  height, width, depth, chans = png_header(data, path)
  depths = (bit_depth,) if isinstance(bit_depth, int) else tuple(bit_depth)
  if depth not in depths:
    want = ' or '.join(str(d) for d in depths)
    raise DataError(f'{path}: PNG has bit depth {depth}, expected {want}')
  chans_ok = (channels,) if isinstance(channels, int) else tuple(channels)
  if chans not in chans_ok:
    want = ' or '.join(str(c) for c in chans_ok)
    raise DataError(f'{path}: PNG has {chans} channels, expected {want}')
  if size is not None and (height, width) != tuple(size):
    raise DataError(
      f'{path}: PNG size {width}x{height} (WxH), expected {size[1]}x{size[0]} to match the image'
    )
  dtype = tf.uint16 if depth == 16 else tf.uint8
  try:
    # PIL reads 16-bit RGB as 8-bit, so TensorFlow decodes (it keeps all 16 bits).
    return tf.io.decode_png(data, channels=chans, dtype=dtype).numpy()
  except tf.errors.OpError as e:
    raise DataError(f'{path}: corrupt PNG ({e.message.splitlines()[0]})') from e
