"""Tests of the ImageNet weight importer: Keras numerics, torchvision names, errors, CLI."""

import os
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from rock_jax import checkpoints
from rock_jax.models import resnet
from rock_jax.tools import import_weights

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def keras_resnet50(tmp_path_factory):
  """Keras ResNet50 with random weights and non-trivial BN statistics, saved both ways."""
  import tensorflow as tf
  from keras.src.legacy.saving import legacy_h5_format

  tf.config.set_visible_devices([], 'GPU')
  # No tf.keras.utils.set_random_seed here: it sets TensorFlow's global seed for the whole
  # test session, which changes (and with seed 0 breaks) tf.data shuffles in other tests.
  model = tf.keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, tf.keras.layers.BatchNormalization):
      gamma, beta, mean, var = layer.get_weights()
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
          rng.normal(0.0, 0.2, beta.shape).astype(np.float32),
          rng.normal(0.0, 0.5, mean.shape).astype(np.float32),
          rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
        ]
      )
  directory = tmp_path_factory.mktemp('keras')
  keras3 = str(directory / 'resnet50.weights.h5')
  model.save_weights(keras3)
  # Keras 2 layout, as the published ImageNet `.h5` files (written by Keras' own writer).
  keras2 = str(directory / 'resnet50_notop.h5')
  with h5py.File(keras2, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  image = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
  expected = model(image, training=False).numpy()
  return {'keras3': keras3, 'keras2': keras2, 'image': image, 'expected': expected}


def _flax_conv5(variables, image):
  model = resnet.ResNet(depth=50, layout='v1', output_stride=32)
  return np.asarray(model.apply(variables, image, train=False))


@pytest.mark.parametrize('layout', ['keras3', 'keras2'])
def test_keras_numerics(keras_resnet50, layout):
  variables = import_weights.import_file(keras_resnet50[layout], 'keras')
  got = _flax_conv5(variables, keras_resnet50['image'])
  expected = keras_resnet50['expected']
  assert got.shape == expected.shape == (1, 2, 2, 2048)
  assert np.std(expected) > 1e-3  # Features are not trivially zero.
  error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
  assert error < 1e-4, error


def test_keras_missing_layer(keras_resnet50, tmp_path):
  path = str(tmp_path / 'truncated.weights.h5')
  with h5py.File(keras_resnet50['keras3'], 'r') as src, h5py.File(path, 'w') as dst:
    # Drop the last conv of Keras' layer order (conv5_block3_3_conv is conv2d_52).
    for name in src['layers']:
      if name != 'conv2d_52':
        src.copy(src[f'layers/{name}'], dst, f'layers/{name}')
  with pytest.raises(import_weights.WeightImportError) as info:
    import_weights.import_file(path, 'keras')
  message = str(info.value)
  assert '\n' not in message
  assert path in message and 'conv2d_52' in message and 'conv5_block3_3_conv' in message


def _torchvision_state(depth: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A torchvision-named ResNet state dict with random values, written from its naming rules."""
  sizes, bottleneck = resnet.STAGE_SIZES[depth]
  state = {}

  def conv(name, cin, cout, k):
    state[f'{name}.weight'] = rng.normal(size=(cout, cin, k, k)).astype(np.float32)

  def bn(name, c):
    state[f'{name}.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f'{name}.bias'] = rng.normal(size=c).astype(np.float32)
    state[f'{name}.running_mean'] = rng.normal(size=c).astype(np.float32)
    state[f'{name}.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f'{name}.num_batches_tracked'] = np.array(100, np.int64)

  conv('conv1', 3, 64, 7)
  bn('bn1', 64)
  cin = 64
  for stage, blocks in enumerate(sizes):
    width = 64 * 2**stage
    cout = width * 4 if bottleneck else width
    for b in range(blocks):
      p = f'layer{stage + 1}.{b}'
      if bottleneck:
        conv(f'{p}.conv1', cin, width, 1)
        conv(f'{p}.conv2', width, width, 3)
        conv(f'{p}.conv3', width, cout, 1)
        for i, c in ((1, width), (2, width), (3, cout)):
          bn(f'{p}.bn{i}', c)
      else:
        conv(f'{p}.conv1', cin, width, 3)
        conv(f'{p}.conv2', width, width, 3)
        bn(f'{p}.bn1', width)
        bn(f'{p}.bn2', width)
      if b == 0 and (stage > 0 or cin != cout):
        conv(f'{p}.downsample.0', cin, cout, 1)
        bn(f'{p}.downsample.1', cout)
      cin = cout
  state['fc.weight'] = rng.normal(size=(1000, cin)).astype(np.float32)
  state['fc.bias'] = np.zeros(1000, np.float32)
  return state


@pytest.fixture(scope='module')
def resnet18_state():
  return _torchvision_state(18, np.random.default_rng(1))


def test_torchvision_resnet50_names_and_count():
  state = _torchvision_state(50, np.random.default_rng(0))
  variables = import_weights.convert_torchvision(state, depth=50)
  params = jax.tree.leaves(variables['params'])
  assert sum(x.size for x in params) == 23_508_032
  # Every learned tensor of the file except fc is used exactly once.
  used = sum(v.size for k, v in state.items() if not k.startswith('fc.') and 'num_batches' not in k)
  assert used == sum(x.size for x in jax.tree.leaves(variables))
  block = variables['params']['stage4_block3']
  np.testing.assert_array_equal(
    block['conv2']['kernel'], state['layer4.2.conv2.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    variables['params']['stage2_block1']['proj_conv']['kernel'][0, 0],
    state['layer2.0.downsample.0.weight'][:, :, 0, 0].T,
  )
  np.testing.assert_array_equal(
    variables['batch_stats']['stem_bn']['var'], state['bn1.running_var']
  )
  np.testing.assert_array_equal(
    variables['params']['stage1_block1']['proj_bn']['scale'], state['layer1.0.downsample.1.weight']
  )


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_torchvision_files(resnet18_state, tmp_path, suffix):
  path = str(tmp_path / f'resnet18{suffix}')
  if suffix == '.npz':
    np.savez(path, **resnet18_state)
  else:
    save_file(resnet18_state, path)
  variables = import_weights.import_file(path, 'torchvision', depth=18)
  np.testing.assert_array_equal(
    variables['params']['stage3_block2']['conv1']['kernel'],
    resnet18_state['layer3.1.conv1.weight'].transpose(2, 3, 1, 0),
  )
  # The converted tree runs in the model it was made for.
  images = np.zeros((1, 32, 32, 3), np.float32)
  out = resnet.ResNet(depth=18).apply(variables, images, train=False)
  assert out.shape == (1, 2, 2, 512)


def test_torchvision_missing_and_misshaped(resnet18_state, tmp_path):
  path = str(tmp_path / 'bad.safetensors')
  state = {k: v for k, v in resnet18_state.items() if k != 'layer4.1.bn2.running_var'}
  save_file(state, path)
  with pytest.raises(import_weights.WeightImportError, match=r'layer4\.1\.bn2\.running_var'):
    import_weights.import_file(path, 'torchvision', depth=18)

  state = dict(resnet18_state)
  state['layer2.0.downsample.0.weight'] = np.zeros((128, 64, 3, 3), np.float32)
  save_file(state, path)
  with pytest.raises(import_weights.WeightImportError) as info:
    import_weights.import_file(path, 'torchvision', depth=18)
  assert 'layer2.0.downsample.0.weight' in str(info.value)
  # Shapes as the file stores them (OIHW), not the converted HWIO ones.
  assert 'has shape (128, 64, 3, 3) in the file, expected (128, 64, 1, 1)' in str(info.value)

  # ResNet-18 weights read as ResNet-50: the first bad key in network order is named.
  with pytest.raises(import_weights.WeightImportError, match=r"'layer1\.0\.conv1\.weight'"):
    import_weights.convert_torchvision(resnet18_state, depth=50)


def test_truncated_files(resnet18_state, tmp_path):
  for suffix, fmt in (('.safetensors', 'torchvision'), ('.npz', 'torchvision'), ('.h5', 'keras')):
    full = str(tmp_path / f'full{suffix}')
    if suffix == '.npz':
      np.savez(full, **resnet18_state)
    elif suffix == '.safetensors':
      save_file(resnet18_state, full)
    else:
      with h5py.File(full, 'w') as f:
        f['x'] = np.zeros(100_000, np.float32)
    path = str(tmp_path / f'truncated{suffix}')
    with open(full, 'rb') as f, open(path, 'wb') as g:
      g.write(f.read()[:1000])
    with pytest.raises(import_weights.WeightImportError) as info:
      import_weights.import_file(path, fmt, depth=18)
    assert path in str(info.value) and '\n' not in str(info.value)


def test_cli(resnet18_state, tmp_path):
  good = str(tmp_path / 'resnet18.npz')
  np.savez(good, **resnet18_state)
  bad = str(tmp_path / 'bad.npz')
  np.savez(bad, **{k: v for k, v in resnet18_state.items() if k != 'conv1.weight'})
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, '-m', 'rock_jax.tools.import_weights', '--format=torchvision']

  output = str(tmp_path / 'out')
  run = subprocess.run(
    [*command, f'--input={good}', f'--output={output}', '--depth=18'],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    check=False,
  )
  assert run.returncode == 0, run.stderr
  restored = checkpoints.load_backbone(output)
  np.testing.assert_allclose(
    np.asarray(restored['params']['stem_conv']['kernel']),
    resnet18_state['conv1.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_allclose(
    np.asarray(restored['batch_stats']['stage4_block2']['bn2']['mean']),
    resnet18_state['layer4.1.bn2.running_mean'],
  )

  run = subprocess.run(
    [*command, f'--input={bad}', f'--output={tmp_path / "out2"}', '--depth=18'],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    check=False,
  )
  assert run.returncode == 2
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and 'conv1.weight' in lines[0] and bad in lines[0], run.stderr
  assert not os.path.exists(tmp_path / 'out2')


@pytest.mark.slow
def test_trainer_starts_from_imported_backbone(resnet18_state, tmp_path, monkeypatch):
  """importer output -> `config.init_backbone` -> the trainer's first checkpoint."""
  from configs import synthetic
  from rock_jax import checkpoints, train

  # He-scaled convs: the fixture's unit-variance kernels overflow a real forward pass.
  resnet18_state = {
    k: v * np.sqrt(2.0 / np.prod(v.shape[1:])) if v.ndim == 4 else v
    for k, v in resnet18_state.items()
  }
  weights = str(tmp_path / 'weights')
  checkpoints.save_backbone(
    import_weights.import_file(_npz(resnet18_state, tmp_path), 'torchvision', depth=18), weights
  )

  config = synthetic.get_config('smoke')
  config.model.backbone.update(depth=18, width=64, stage_sizes=(), freeze_bn_stats=True)
  config.init_backbone = 'weights'  # Relative: taken from the current directory.
  config.train.update(num_steps=1, learning_rate=0.0, checkpoint_every=1, eval_every=1)
  config.eval.num_panels = 0
  config.data.test_split = ''  # The validation evaluation is enough here.
  workdir = str(tmp_path / 'run')

  # The BatchNorm statistics the train step itself receives (and, frozen, normalises with).
  seen = []
  step = train.train_step

  def recording_step(state, batch, rng, **kwargs):
    var = state.batch_stats['backbone']['stage3_block2']['bn1']['var']
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), var)
    return step(state, batch, rng, **kwargs)

  monkeypatch.setattr(train, 'train_step', recording_step)
  monkeypatch.chdir(tmp_path)
  train.train_and_evaluate(config, workdir)
  imported = resnet18_state['layer3.1.bn1.running_var']
  assert len(seen) == 1
  np.testing.assert_allclose(seen[0], imported)
  assert not np.allclose(imported, 1.0)  # Fresh statistics would be all ones.

  # With a zero learning rate and frozen backbone statistics, step 1 still holds the import.
  variables = checkpoints.load_variables(workdir)
  np.testing.assert_allclose(
    np.asarray(variables['params']['backbone']['stem_conv']['kernel']),
    resnet18_state['conv1.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_allclose(
    np.asarray(variables['batch_stats']['backbone']['stage3_block2']['bn1']['var']),
    resnet18_state['layer3.1.bn1.running_var'],
  )


@pytest.mark.parametrize('batches_tracked', [False, True])
def test_timm_safetensors_load_as_they_are(tmp_path, batches_tracked):
  """timm's ResNet-50 `model.safetensors`: torchvision's names plus `fc`, read unchanged."""
  state = _torchvision_state(50, np.random.default_rng(2))
  assert 'fc.weight' in state and 'fc.bias' in state
  if not batches_tracked:
    state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
  path = str(tmp_path / 'model.safetensors')  # The file name timm publishes.
  save_file(state, path)
  out = str(tmp_path / 'r50')
  checkpoints.save_backbone(import_weights.import_file(path, 'torchvision', depth=50), out)
  loaded = checkpoints.load_backbone(out)
  np.testing.assert_array_equal(
    loaded['params']['stage4_block3']['conv3']['kernel'],
    state['layer4.2.conv3.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
    loaded['batch_stats']['stage2_block4']['bn2']['mean'], state['layer2.3.bn2.running_mean']
  )


def _npz(state: dict[str, np.ndarray], directory) -> str:
  path = str(directory / 'resnet18.npz')
  np.savez(path, **state)
  return path
