"""Converts a whole rock-pytorch network (vita-epfl/rock-pytorch) into a rock_jax checkpoint.

  python -m rock_jax.tools.import_weights --format=rock_pytorch --input=rock.safetensors \
      --output=DIR [--config=configs/rock_pytorch.py]

The input is the reference's full `state_dict` (`rock_network()` or `baseline_ssd()`)
saved as `.safetensors` or `.npz`; no pickle is read. Write it once with torch (README,
"Coming from rock-pytorch"). Without `--config`, the network is `configs/rock_pytorch.py`,
or `configs/rock_pytorch.py:baseline` when the file has no `auxiliary.*` key.

Mapping (`entries` lists every key, in the reference's order):
- `feature_extractor.*` -> `backbone` (torchvision names, as the `torchvision` format);
- `auxiliary.conv1/bn1`, `conv2/bn2` -> `rock/trunk1`, `rock/trunk2`; `auxiliary.bn3` ->
  `rock/fusion_bn`; in `auxiliary.<t>_extractor`: `conv{i}/bn{i}` -> `rock/<t>_extra{i}`,
  `<t>_in` -> `rock/<t>_enc`, `<t>_out` + `bn_out` -> `rock/<t>_dec`;
- `detection.additional_layers.<i>.{0,1,3,4}` -> `ssd/extra<i+1>_reduce_{conv,bn}`,
  `ssd/extra<i+1>_{conv,bn}`; `detection.loc.<k>` / `conf.<k>` -> `ssd/box<k>` / `ssd/cls<k>`.
- Conv kernels go from OIHW to HWIO. The conv biases before BatchNorms are **kept**: the
  rock_pytorch config builds those convs with biases (`model.rock.conv_bias`,
  `model.ssd.extras_conv_bias`), so the parameter count is the reference's and the
  network is the same in training mode too. `num_batches_tracked` is read and dropped.
- Head channels: the reference's conv channel `k * A + a` (coordinate or class k of
  anchor a, anchor-major outputs) becomes this project's `a * K + k`, and the box
  coordinates `(x, y, w, h)` become `(y, x, h, w)`. With the default boxes of the config,
  the outputs then decode to the reference's boxes and scores.

The output DIR is a checkpoint like a training run's (`DIR/checkpoints/0/{state,config}`,
the config as JSON), so `--config.init_from=DIR` and `rock_jax.detect --checkpoint=DIR`
read it. It holds no optimizer state: start runs from it with `init_from`, in another
workdir, not by resuming in DIR. A missing, unexpected or mis-shaped key raises
`WeightImportError` with one line naming the file and the key (shapes as in the file,
torch layout).
"""

import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rock_jax import checkpoints
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector
from rock_jax.tools import import_weights

WeightImportError = import_weights.WeightImportError
# Reference box coordinates (x, y, w, h) in this project's order (y, x, h, w).
BOX_COORDINATES = (1, 0, 3, 2)
# One state_dict entry: (torch key, (collection, *flax path) or None, head kind or None).
Entry = tuple[str, tuple[str, ...] | None, str | None]


def default_config(state: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`configs/rock_pytorch.py`, or its `baseline` when the file has no ROCK block."""
  from rock_jax.configs import rock_pytorch  # noqa: PLC0415

  has_rock = any(key.startswith('auxiliary.') for key in state)
  return rock_pytorch.get_config(None if has_rock else 'baseline')


def variable_shapes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`{'params', 'batch_stats'}` shapes of the config's detector, without computing."""
  model = detector.build_model(config)
  height, width = config.data.image_size
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def _conv(torch: str, flax_module: tuple[str, ...], head: str | None = None) -> list[Entry]:
  return [
    (f'{torch}.weight', ('params', *flax_module, 'kernel'), head),
    (f'{torch}.bias', ('params', *flax_module, 'bias'), head),
  ]


def _bn(torch: str, flax_module: tuple[str, ...]) -> list[Entry]:
  return [
    (f'{torch}.weight', ('params', *flax_module, 'scale'), None),
    (f'{torch}.bias', ('params', *flax_module, 'bias'), None),
    (f'{torch}.running_mean', ('batch_stats', *flax_module, 'mean'), None),
    (f'{torch}.running_var', ('batch_stats', *flax_module, 'var'), None),
    (f'{torch}.num_batches_tracked', None, None),
  ]


def entries(config: ml_collections.ConfigDict, shapes: Mapping[str, Any]) -> list[Entry]:
  """Every state_dict key of the reference network of `config`, in the reference's order.

  Args:
    config: a rock_pytorch config (variant 'rock' or 'baseline').
    shapes: `variable_shapes(config)`.

  Returns:
    The entries; keys the Flax model lacks (a conv without bias) are left out, so a
    config without the reference options gives 'unexpected key' errors, not silence.
  """
  flat = flax.traverse_util.flatten_dict(shapes)
  backbone = sorted(
    {key[1:-1] for key in flat if key[:2] == ('params', 'backbone')},
    key=lambda module: import_weights._network_order(('params', *module[1:], 'kernel'))[:-1],
  )
  result = []
  for module in backbone:
    torch = 'feature_extractor.' + import_weights._torchvision_module('/'.join(module[1:]))
    conv = 'conv' in module[-1]
    result += [(k, p, None) for k, p, _ in (_conv if conv else _bn)(torch, module)]
  ssd = config.model.ssd
  for i in range(len(ssd.extra_layers)):
    layer = f'detection.additional_layers.{i}'
    result += _conv(f'{layer}.0', ('ssd', f'extra{i + 1}_reduce_conv'))
    result += _bn(f'{layer}.1', ('ssd', f'extra{i + 1}_reduce_bn'))
    result += _conv(f'{layer}.3', ('ssd', f'extra{i + 1}_conv'))
    result += _bn(f'{layer}.4', ('ssd', f'extra{i + 1}_bn'))
  for k in range(len(ssd.extra_layers) + 1):
    result += _conv(f'detection.loc.{k}', ('ssd', f'box{k}'), 'box')
  for k in range(len(ssd.extra_layers) + 1):
    result += _conv(f'detection.conf.{k}', ('ssd', f'cls{k}'), 'cls')
  if config.model.variant != tasks_lib.BASELINE:
    result += _conv('auxiliary.conv1', ('rock', 'trunk1', 'conv'))
    result += _conv('auxiliary.conv2', ('rock', 'trunk2', 'conv'))
    result += _bn('auxiliary.bn1', ('rock', 'trunk1', 'bn'))
    result += _bn('auxiliary.bn2', ('rock', 'trunk2', 'bn'))
    result += _bn('auxiliary.bn3', ('rock', 'fusion_bn'))
    for task in tasks_lib.active(config):
      t, prefix = task.name, f'auxiliary.{task.name}_extractor'
      result += _bn(f'{prefix}.bn_out', ('rock', f'{t}_dec', 'bn'))
      result += _conv(f'{prefix}.{t}_in', ('rock', f'{t}_enc'))
      result += _conv(f'{prefix}.{t}_out', ('rock', f'{t}_dec', 'conv'))
      for i in (1, 2, 3):
        result += _conv(f'{prefix}.conv{i}', ('rock', f'{t}_extra{i}', 'conv'))
      for i in (1, 2, 3):
        result += _bn(f'{prefix}.bn{i}', ('rock', f'{t}_extra{i}', 'bn'))
  return [entry for entry in result if entry[1] is None or entry[1] in flat]


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax variable: HWIO kernels are OIHW there."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(flax_shape)


def _reorder_head(value: np.ndarray, head: str, num_outputs: int) -> np.ndarray:
  """Reference channel `k * A + a` -> channel `a * K + k` (boxes: also x, y, w, h -> y, x, h, w).

  Args:
    value: OIHW weight or bias, output channels first.
    head: 'box' or 'cls'.
    num_outputs: K, 4 for boxes or num_classes + 1.

  Returns:
    The same tensor with its output channels permuted.
  """
  anchors = value.shape[0] // num_outputs
  grouped = value.reshape(num_outputs, anchors, *value.shape[1:])
  if head == 'box':
    grouped = grouped[list(BOX_COORDINATES)]
  return np.swapaxes(grouped, 0, 1).reshape(value.shape)


def convert(
  state: Mapping[str, np.ndarray], config: ml_collections.ConfigDict, *, path: str = '<state>'
) -> dict[str, Any]:
  """Converts a rock-pytorch state dict into `{'params', 'batch_stats'}` of `config`'s model.

  Args:
    state: key -> array, as in the reference's `state_dict()`.
    config: the rock_pytorch config that builds the same network.
    path: file name, for the error messages.

  Returns:
    The variables as float32 numpy arrays.

  Raises:
    WeightImportError: the first missing, unexpected or mis-shaped key.
  """
  shapes = variable_shapes(config)
  flat = flax.traverse_util.flatten_dict(shapes)
  table = entries(config, shapes)
  known = {key for key, _, _ in table}
  for key in state:
    if key not in known:
      raise WeightImportError(f'{path}: unexpected key {key!r} (not in the {_describe(config)}).')
  result = {}
  for key, target, head in table:
    if key not in state:
      raise WeightImportError(f'{path}: missing key {key!r}.')
    value = np.asarray(state[key])
    expected = () if target is None else torch_shape(flat[target].shape)
    if target is None and value.size == 1:
      continue  # num_batches_tracked: a count, unused in eval mode.
    if tuple(value.shape) != expected:
      raise WeightImportError(
        f'{path}: key {key!r} has shape {tuple(value.shape)}, expected {expected}.'
      )
    if head is not None:
      value = _reorder_head(value, head, 4 if head == 'box' else config.model.num_classes + 1)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    result[target] = np.asarray(value, np.float32)
  return flax.traverse_util.unflatten_dict(result)


def _describe(config: ml_collections.ConfigDict) -> str:
  return f'{config.model.variant!r} network of the config'


def import_file(path: str, config: ml_collections.ConfigDict | None = None) -> tuple[dict, Any]:
  """Reads and converts a rock-pytorch `.safetensors` / `.npz` state dict.

  Args:
    path: the file.
    config: the network to build; None picks `default_config(state)`.

  Returns:
    `(variables, config)`.
  """
  if not os.path.isfile(path):
    raise WeightImportError(f'{path}: no such file.')
  if not path.endswith(('.safetensors', '.npz')):
    raise WeightImportError(f'{path}: rock-pytorch weights must be .safetensors or .npz.')
  state = import_weights.read_torchvision(path)
  config = config if config is not None else default_config(state)
  return convert(state, config, path=path), config


def save(variables: Mapping[str, Any], config: ml_collections.ConfigDict, directory: str) -> None:
  """Writes the variables and config as step 0 of a run's checkpoints in `directory`."""
  manager = checkpoints.create_manager(
    checkpoints.checkpoint_dir(directory), keep=1, async_save=False
  )
  checkpoints.save(manager, 0, dict(variables), config)
  manager.wait_until_finished()
  manager.close()
