"""Imports ImageNet ResNet weights (torchvision/timm or Keras) into the Flax backbone.

Nothing is downloaded: users fetch the weights themselves, then run

  python -m rock_jax.tools.import_weights --format=torchvision --input=resnet50.safetensors \
    --output=/path/to/resnet50_flax
  python -m rock_jax.tools.import_weights --format=keras \
    --input=resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 --output=/path/to/keras50

`--format=rock_pytorch` converts a whole rock-pytorch network instead, into a checkpoint
that `--config.init_from` and `rock_jax.detect` read (`rock_jax.tools.import_rock_pytorch`).

The output directory is an Orbax (StandardCheckpointer) checkpoint of
`{'params': ..., 'batch_stats': ...}` for `rock_jax.models.resnet.ResNet` ('v1.5' layout for
torchvision files, 'v1' for Keras files); `load_backbone(dir)` reads it back for the
trainer (`config.init_backbone`), to be placed under `params/backbone` and
`batch_stats/backbone`.

Sources:
- torchvision / timm state dicts (`conv1.weight`, `bn1.running_var`,
  `layer1.0.downsample.0.weight`, ...) in `.safetensors` or `.npz`; conv kernels are
  OIHW and become HWIO.
- Keras ResNet50/101 weights in `.h5` (Keras 2 `save_weights`, the format of the
  published ImageNet files: one group per layer name with a `weight_names` attribute) or
  `.weights.h5` (Keras 3: `layers/<class name>_<index>/vars/<i>`, layers numbered per
  class in the model's layer order).

A missing, mis-shaped or unreadable entry raises `WeightImportError` whose one-line
message names the file and the first bad key; the CLI prints it and exits with status 1.
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

import flax
import h5py
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from rock_jax import checkpoints, cli
from rock_jax.models import resnet

FORMATS = ('torchvision', 'keras')  # Backbone formats; the CLI also takes 'rock_pytorch'.


class WeightImportError(ValueError):
  """A weights file cannot be converted; the message is one line naming the file and key."""


def backbone_shapes(depth: int, layout: str) -> dict[str, Any]:
  """Variable shapes of a full-width ResNet without computing anything.

  Args:
    depth: 18, 34, 50 or 101.
    layout: 'v1.5' or 'v1'.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of `jax.ShapeDtypeStruct`.
  """
  model = resnet.ResNet(depth=depth, layout=layout, output_stride=32)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def _torchvision_module(flax_module: str) -> str:
  """Maps a Flax module name ('stem_conv', 'stage1_block2/proj_bn') to a torchvision one."""
  if flax_module == 'stem_conv':
    return 'conv1'
  if flax_module == 'stem_bn':
    return 'bn1'
  block, layer = flax_module.split('/')
  stage, index = block.removeprefix('stage').split('_block')
  layer = {'proj_conv': 'downsample.0', 'proj_bn': 'downsample.1'}.get(layer, layer)
  return f'layer{stage}.{int(index) - 1}.{layer}'


def _keras_layer(flax_module: str) -> str:
  """Maps a Flax module name to a Keras ResNet layer name ('conv2_block1_0_conv')."""
  if flax_module == 'stem_conv':
    return 'conv1_conv'
  if flax_module == 'stem_bn':
    return 'conv1_bn'
  block, layer = flax_module.split('/')
  stage, index = block.removeprefix('stage').split('_block')
  kind = 'conv' if 'conv' in layer else 'bn'
  # Keras numbers the shortcut projection 0 and the main-path layers 1..3.
  number = '0' if layer.startswith('proj') else layer[-1]
  return f'conv{int(stage) + 1}_block{index}_{number}_{kind}'


_LAYER_ORDER = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'proj_conv', 'proj_bn')
_LEAF_ORDER = ('kernel', 'scale', 'bias', 'mean', 'var')


def _network_order(key: tuple[str, ...]) -> tuple[int, ...]:
  """Sort key of a flattened variable path in the order of a torchvision state dict.

  Flax keeps module names sorted (`bn1` before `conv1`, `block10` before `block2`), so the
  first missing key of a file would otherwise not be the first one in the network.
  """
  module, leaf = key[1:-1], key[-1]
  if module[0].startswith('stem'):
    position = (0, 0, 0 if module[0] == 'stem_conv' else 1)
  else:
    stage, block = module[0].removeprefix('stage').split('_block')
    position = (int(stage), int(block), _LAYER_ORDER.index(module[1]))
  return (*position, _LEAF_ORDER.index(leaf))


def _convert(
  shapes: Mapping[str, Any],
  lookup: Callable[[str, str], tuple[str, np.ndarray | None]],
  path: str,
  file_layout: Callable[[tuple[int, ...]], tuple[int, ...]] = tuple,
) -> dict[str, Any]:
  """Fills the backbone variables from a source, checking every key and shape.

  Args:
    shapes: Variable shapes from `backbone_shapes`.
    lookup: `(flax_module, leaf) -> (source_key, array or None if missing)`, with the
      array already in Flax layout (HWIO kernels).
    path: File name, for the error messages.
    file_layout: maps a Flax-layout shape back to the file's layout, so that a
      shape error reports the shapes as the file stores them.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays.
  """
  flat = flax.traverse_util.flatten_dict(shapes)
  result = {}
  for key, shape in sorted(flat.items(), key=lambda item: _network_order(item[0])):
    module, leaf = '/'.join(key[1:-1]), key[-1]
    source_key, value = lookup(module, leaf)
    if value is None:
      raise WeightImportError(f'{path}: missing key {source_key!r}.')
    if tuple(value.shape) != tuple(shape.shape):
      raise WeightImportError(
        f'{path}: key {source_key!r} has shape {file_layout(tuple(value.shape))} in the file, '
        f'expected {file_layout(tuple(shape.shape))}.'
      )
    result[key] = np.asarray(value, np.float32)
  return flax.traverse_util.unflatten_dict(result)


def read_torchvision(path: str) -> dict[str, np.ndarray]:
  """Reads a torchvision/timm state dict from `.safetensors` or `.npz` (no pickle).

  Args:
    path: The file.

  Returns:
    Key -> numpy array.
  """
  try:
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file

      return dict(load_file(path))
    if path.endswith('.npz'):
      # Open the file here: np.load leaks its handle when the zip is truncated.
      with open(path, 'rb') as f, np.load(f, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
  except Exception as error:  # Truncated or corrupt files raise many different types.
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise WeightImportError(f'{path}: cannot read weights: {message}') from error
  raise WeightImportError(f'{path}: torchvision weights must be .safetensors or .npz.')


def convert_torchvision(
  state: Mapping[str, np.ndarray], *, depth: int = 50, path: str = '<state dict>'
) -> dict[str, Any]:
  """Converts a torchvision/timm ResNet state dict into the 'v1.5' Flax backbone.

  Args:
    state: Key -> array, e.g. `layer4.2.conv3.weight` (OIHW), `bn1.running_var`.
    depth: ResNet depth of the weights.
    path: File name, for the error messages.

  Returns:
    `{'params': ..., 'batch_stats': ...}` as numpy float32.
  """
  names = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
  names.update({'mean': 'running_mean', 'var': 'running_var'})

  def lookup(module: str, leaf: str) -> tuple[str, np.ndarray | None]:
    key = f'{_torchvision_module(module)}.{names[leaf]}'
    if key not in state:
      return key, None
    value = np.asarray(state[key])
    if leaf == 'kernel' and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    return key, value

  def file_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    # HWIO -> OIHW, the inverse of the transpose above (other leaves are unchanged).
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)

  return _convert(backbone_shapes(depth, 'v1.5'), lookup, path, file_layout)


def _keras_layer_order(depth: int) -> tuple[list[str], list[str]]:
  """Conv and BatchNorm layer names of Keras' ResNet in `model.layers` order.

  Keras 3 `.weights.h5` files name layers by class and position (conv2d, conv2d_1, ...),
  so the position in this order is the only link to a layer. In each first block of a
  stage Keras builds the main-path 1x1 and 3x3 first, then the shortcut, then the last 1x1.
  """
  sizes, _ = resnet.STAGE_SIZES[depth]
  convs, bns = ['conv1_conv'], ['conv1_bn']
  for stage, blocks in enumerate(sizes):
    for index in range(1, blocks + 1):
      numbers = ('1', '2', '0', '3') if index == 1 else ('1', '2', '3')
      prefix = f'conv{stage + 2}_block{index}_'
      convs += [prefix + n + '_conv' for n in numbers]
      bns += [prefix + n + '_bn' for n in numbers]
  return convs, bns


KERAS_WEIGHTS = {
  'conv': ('kernel', 'bias'),
  'bn': ('gamma', 'beta', 'moving_mean', 'moving_variance'),
}
KerasLayers = dict[str, list[tuple[str, np.ndarray | None]]]


def read_keras(path: str, *, depth: int = 50) -> KerasLayers:
  """Reads Keras ResNet weights (Keras 2 `.h5` or Keras 3 `.weights.h5`).

  Args:
    path: The file.
    depth: 50 or 101 (Keras' ResNet50 / ResNet101).

  Returns:
    Keras layer name -> its weights in Keras order ([kernel, bias] or [gamma, beta,
    moving_mean, moving_variance]) as (key in the file, array or None if missing).
  """
  try:
    with h5py.File(path, 'r') as f:
      if 'layers' in f and isinstance(f['layers'], h5py.Group):
        return _read_keras3(f['layers'], depth)
      return _read_keras2(f['model_weights'] if 'model_weights' in f else f)
  except (OSError, KeyError, ValueError) as error:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise WeightImportError(f'{path}: cannot read Keras weights: {message}') from error


def _read_keras3(layers: h5py.Group, depth: int) -> KerasLayers:
  """Keras 3 layout: `layers/<class>_<k>/vars/<i>`, numbered per class in layer order."""
  convs, bns = _keras_layer_order(depth)
  result = {}
  for class_name, names, kind in (('conv2d', convs, 'conv'), ('batch_normalization', bns, 'bn')):
    for position, name in enumerate(names):
      entry = class_name if position == 0 else f'{class_name}_{position}'
      result[name] = [
        (
          f'layers/{entry}/vars/{i} ({name}/{weight})',
          np.asarray(layers[f'{entry}/vars/{i}']) if f'{entry}/vars/{i}' in layers else None,
        )
        for i, weight in enumerate(KERAS_WEIGHTS[kind])
      ]
  return result


def _read_keras2(group: h5py.Group) -> KerasLayers:
  """Keras 2 layout: a group per layer name, weights listed in its `weight_names`."""
  result = {}
  for name, layer in group.items():
    if not isinstance(layer, h5py.Group):
      continue
    weight_names = [
      n.decode() if isinstance(n, bytes) else str(n) for n in layer.attrs.get('weight_names', [])
    ]
    result[name] = [(w, np.asarray(layer[w]) if w in layer else None) for w in weight_names]
  return result


def convert_keras(
  layers: KerasLayers, *, depth: int = 50, path: str = '<keras weights>'
) -> dict[str, Any]:
  """Converts Keras ResNet weights (from `read_keras`) into the 'v1' Flax backbone.

  Args:
    layers: Keras layer name -> weights in Keras order, as returned by `read_keras`.
    depth: 50 or 101.
    path: File name, for the error messages.

  Returns:
    `{'params': ..., 'batch_stats': ...}` as numpy float32.
  """
  positions = {
    'conv': {'kernel': 0, 'bias': 1},
    'bn': {'scale': 0, 'bias': 1, 'mean': 2, 'var': 3},
  }

  def lookup(module: str, leaf: str) -> tuple[str, np.ndarray | None]:
    name = _keras_layer(module)
    kind = 'bn' if name.endswith('_bn') else 'conv'
    position = positions[kind][leaf]
    entries = layers.get(name, [])
    if position >= len(entries):
      return f'{name}/{KERAS_WEIGHTS[kind][position]}', None
    return entries[position]

  return _convert(backbone_shapes(depth, 'v1'), lookup, path)


def import_file(path: str, fmt: str, *, depth: int = 50) -> dict[str, Any]:
  """Reads and converts a weights file.

  Args:
    path: `.safetensors` / `.npz` (torchvision) or `.h5` / `.weights.h5` (keras).
    fmt: 'torchvision' or 'keras'.
    depth: ResNet depth of the weights.

  Returns:
    `{'params': ..., 'batch_stats': ...}` for `ResNet(depth, layout='v1.5' or 'v1')`.
  """
  if not os.path.isfile(path):
    raise WeightImportError(f'{path}: no such file.')
  if fmt == 'torchvision':
    return convert_torchvision(read_torchvision(path), depth=depth, path=path)
  if fmt == 'keras':
    return convert_keras(read_keras(path, depth=depth), depth=depth, path=path)
  raise WeightImportError(f'{path}: unknown format {fmt!r}, expected one of {FORMATS}.')


def _cli() -> None:
  """Defines the flags and runs; flags live here so importing this module defines none."""
  from ml_collections import config_flags

  fmt = flags.DEFINE_enum('format', None, [*FORMATS, 'rock_pytorch'], 'Source of the weights.')
  source = flags.DEFINE_string('input', None, 'Weights file (.safetensors, .npz, .h5).')
  output = flags.DEFINE_string('output', None, 'Output Orbax checkpoint directory.')
  depth = flags.DEFINE_enum('depth', '50', ['18', '34', '50', '101'], 'ResNet depth.')
  config = config_flags.DEFINE_config_file(
    'config', None, 'rock_pytorch only: the network (default: configs/rock_pytorch.py[:baseline]).'
  )
  flags.mark_flags_as_required(['format', 'input', 'output'])

  def main(argv: list[str]) -> None:
    """Converts --input and writes --output; a bad file fails in one line (exit 2)."""
    del argv
    if os.path.exists(output.value):
      cli.fail(f'{output.value}: output directory exists already.')
    try:
      if fmt.value == 'rock_pytorch':
        from rock_jax.tools import import_rock_pytorch

        variables, network = import_rock_pytorch.import_file(source.value, config.value)
      else:
        variables = import_file(source.value, fmt.value, depth=int(depth.value))
    except WeightImportError as error:
      cli.fail(str(error))
    if fmt.value == 'rock_pytorch':
      import_rock_pytorch.save(variables, network, output.value)
    else:
      checkpoints.save_backbone(variables, output.value)
    count = sum(x.size for x in jax.tree.leaves(variables['params']))
    print(f'Wrote {count:,} parameters to {output.value}.')

  cli.run(main)


if __name__ == '__main__':
  _cli()
