"""rock-pytorch compatibility: its network as a config, its weights imported, its outputs.

The reference numbers come from `../shared/reference/rock_pytorch/` (outputs of the PyTorch
network on weights that numpy rebuilds from `forward_recipe.json`) and from an independent
numpy transcription of the reference's `pboxes_rock()`; none comes from the code under
test. The shared folder sits next to the project root; without it the fixture tests skip.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from configs import rock_pytorch
from rock_jax import boxes, checkpoints
from rock_jax.models import detector
from rock_jax.tools import import_rock_pytorch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, '..', 'shared', 'reference', 'rock_pytorch')
# The reference's maps at 480x640: (h, w, anchors per location), from its README.
LEVELS = ((30, 40, 4), (15, 20, 6), (8, 10, 6), (4, 5, 6), (2, 3, 4), (1, 1, 4))
needs_fixtures = pytest.mark.skipif(
  not os.path.isdir(SHARED), reason=f'rock-pytorch fixtures not found at {SHARED}'
)


def reference_pboxes() -> np.ndarray:
  """The reference's `pboxes_rock()` in its own order and (cx, cy, w, h) form, clamped."""
  fig_h, fig_w = 480, 640
  feat = [(30, 40), (15, 20), (8, 10), (4, 5), (2, 3), (1, 1)]
  steps_h, steps_w = [16, 32, 60, 120, 240, 480], [16, 32, 64, 128, 213, 640]
  sk = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
  ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
  out = []
  for idx, (fh, fw) in enumerate(feat):
    sizes = [(sk[idx], sk[idx]), (math.sqrt(sk[idx] * sk[idx + 1]),) * 2]
    for alpha in ratios[idx]:
      w, h = sk[idx] * math.sqrt(alpha), sk[idx] / math.sqrt(alpha)
      sizes += [(w, h), (h, w)]
    for w, h in sizes:
      for i in range(fh):
        for j in range(fw):
          out.append(((j + 0.5) / (fig_w / steps_w[idx]), (i + 0.5) / (fig_h / steps_h[idx]), w, h))
  return np.clip(np.asarray(out, np.float32), 0, 1)


def to_project_order(x: np.ndarray) -> np.ndarray:
  """Reference `[..., K, A]` (anchor-major per level) -> `[..., A, K]` (location-major)."""
  parts, offset = [], 0
  for h, w, a in LEVELS:
    block = x[..., offset : offset + a * h * w].reshape(*x.shape[:-1], a, h, w)
    parts.append(np.moveaxis(block, (-4, -3), (-1, -2)).reshape(*x.shape[:-2], h * w * a, -1))
    offset += a * h * w
  assert offset == x.shape[-1]
  return np.concatenate(parts, axis=-2)


def recipe_state(recipe: dict, variant: str) -> dict[str, np.ndarray]:
  """The fixture's state_dict, rebuilt with numpy as `forward_recipe.json` documents."""
  seed, spec = recipe['seed'], recipe[variant]
  state = {}
  for index, (key, shape) in enumerate(zip(spec['keys'], spec['shapes'], strict=True)):
    rng = np.random.default_rng([seed, index])
    if key.endswith('num_batches_tracked'):
      state[key] = np.zeros(shape, np.int64)
      continue
    if key.endswith('running_mean') or key.endswith('bias'):
      value = rng.normal(0, 0.1, shape)
    elif key.endswith('running_var') or len(shape) == 1:
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0, math.sqrt(1 / np.prod(shape[1:])), shape)
    state[key] = value.astype(np.float32)
  return state


@pytest.fixture(scope='module')
def recipe():
  if not os.path.isdir(SHARED):
    pytest.skip(f'rock-pytorch fixtures not found at {SHARED}')
  with open(os.path.join(SHARED, 'forward_recipe.json')) as f:
    return json.load(f)


@pytest.mark.parametrize('arg, expected', [(None, 49_327_531), ('baseline', 41_948_560)])
def test_parameter_count_and_default_boxes(arg, expected):
  config = rock_pytorch.get_config(arg)
  shapes = import_rock_pytorch.variable_shapes(config)
  assert sum(x.size for x in jax.tree.leaves(shapes['params'])) == expected
  ours = boxes.default_boxes(config.model, (480, 640))
  assert ours.shape == (7228, 4)
  ref = to_project_order(reference_pboxes().T[None])[0]  # [7228, (cx, cy, w, h)]
  np.testing.assert_allclose(ours, ref[:, [1, 0, 3, 2]], rtol=0, atol=1e-6)
  # The steps_w = 213 quirk: the 2x3 map's centres, as the fixtures' README rounds them.
  level4 = ours[4800 + 1800 + 480 + 120 : -4]
  np.testing.assert_allclose(level4[:12:4, 1], [0.1664, 0.4992, 0.8320], atol=1e-4)


@needs_fixtures
@pytest.mark.parametrize('variant', ['rock', 'baseline'])
def test_keys_are_the_reference_keys(recipe, variant):
  config = rock_pytorch.get_config(None if variant == 'rock' else 'baseline')
  shapes = import_rock_pytorch.variable_shapes(config)
  table = import_rock_pytorch.entries(config, shapes)
  # Every key of the reference, in its state_dict order, each exactly once.
  assert [key for key, _, _ in table] == recipe[variant]['keys']
  by_key = dict(zip(recipe[variant]['keys'], recipe[variant]['shapes'], strict=True))
  targets = [target for _, target, _ in table if target is not None]
  assert len(targets) == len(set(targets)) == len(jax.tree.leaves(shapes))
  for key, target, _ in table:
    if target is not None:
      leaf = shapes
      for name in target:
        leaf = leaf[name]
      assert import_rock_pytorch.torch_shape(leaf.shape) == tuple(by_key[key]), key


@needs_fixtures
@pytest.mark.slow
@pytest.mark.parametrize('variant', ['rock', 'baseline'])
def test_forward_matches_reference(recipe, variant, tmp_path):
  state = recipe_state(recipe, variant)
  path = str(tmp_path / ('state.safetensors' if variant == 'rock' else 'state.npz'))
  if path.endswith('.npz'):
    np.savez(path, **state)
  else:
    save_file(state, path)
  variables, config = import_rock_pytorch.import_file(path)
  assert config.model.variant == variant
  expected = dict(np.load(os.path.join(SHARED, f'forward_{variant}.npz')))
  image = np.transpose(expected['image_nchw'], (0, 2, 3, 1))
  model = detector.build_model(config)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(image))
  ours = {
    'locs': np.asarray(out['boxes'])[..., list(import_rock_pytorch.BOX_COORDINATES)],
    'confs': np.asarray(out['logits']),
  }
  reference = {
    'locs': to_project_order(expected['locs']),
    'confs': to_project_order(expected['confs']),
  }
  if variant == 'rock':
    ours['scene_logprob'] = np.asarray(jax.nn.log_softmax(out['aux']['scene']))
    ours['depth'] = np.asarray(out['aux']['depth'])
    ours['normals'] = np.asarray(out['aux']['normals'])
    reference['scene_logprob'] = expected['scene_logprob']
    reference['depth'] = expected['depth'][:, 0]
    reference['normals'] = np.transpose(expected['normals'], (0, 2, 3, 1))
  assert set(reference) == set(recipe[variant]['outputs'])
  for name, ref in reference.items():
    assert ours[name].shape == ref.shape, name
    # Relative to the output's largest magnitude (the recipe records it too).
    scale = np.abs(ref).max()
    np.testing.assert_allclose(scale, recipe[variant]['output_abs_max'][name], rtol=1e-6)
    error = np.abs(ours[name] - ref).max() / scale
    assert error <= 1e-4, f'{variant} {name}: relative error {error:.2e}'


@pytest.mark.slow
def test_head_batchnorm_momentum_is_the_references():
  """PyTorch momentum 0.01 in the ROCK block and SSD extras: new = 0.99 old + 0.01 batch.

  From zero running means, one training step leaves 0.01 x the batch mean; with the
  backbone's momentum (Flax 0.9) it would be 0.1 x the same batch mean: 10 times more.
  """
  config = rock_pytorch.get_config('smoke')
  images = jax.random.normal(jax.random.key(0), (2, *config.data.image_size, 3))
  variables = detector.build_model(config).init(jax.random.key(1), images, train=False)
  means = {}
  for momentum in (0.99, None):
    config.model.rock.bn_momentum = config.model.ssd.bn_momentum = momentum
    _, updates = detector.build_model(config).apply(
      variables, images, train=True, mutable=['batch_stats']
    )
    stats = updates['batch_stats']
    means[momentum] = [stats['rock']['fusion_bn']['mean'], stats['ssd']['extra1_bn']['mean']]
  for reference, backbone in zip(means[0.99], means[None], strict=True):
    np.testing.assert_allclose(10 * np.asarray(reference), backbone, rtol=1e-3, atol=1e-7)
    assert np.abs(reference).max() > 1e-3


SMOKE_DATA = (
  '--config.data.name=synthetic_rooms',
  '--config.data.builder_config=tiny',
  '--config.data.eval_split=test',
  '--config.model.num_classes=11',  # The synthetic rooms' classes.
)


def smoke_state(config, seed: int = 0) -> dict[str, np.ndarray]:
  """A rock-pytorch-format state dict of the smoke network (keys from the importer's table)."""
  rng = np.random.default_rng(seed)
  shapes = import_rock_pytorch.variable_shapes(config)
  state = {}
  for key, target, _ in import_rock_pytorch.entries(config, shapes):
    if target is None:
      state[key] = np.zeros((), np.int64)
      continue
    leaf = shapes
    for name in target:
      leaf = leaf[name]
    shape = import_rock_pytorch.torch_shape(leaf.shape)
    if key.endswith('running_var') or (key.endswith('weight') and len(shape) == 1):
      value = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 4:
      value = rng.normal(0, math.sqrt(1 / np.prod(shape[1:])), shape)
    else:
      value = rng.normal(0, 0.1, shape)
    state[key] = value.astype(np.float32)
  return state


def test_import_errors_are_one_line(tmp_path):
  config = rock_pytorch.get_config('smoke')
  state = smoke_state(config)
  cases = {
    'missing': {k: v for k, v in state.items() if k != 'auxiliary.bn3.running_var'},
    'unexpected': {**state, 'detection.loc.9.weight': np.zeros(3, np.float32)},
    'shape': {**state, 'detection.conf.1.weight': np.zeros((7, 16, 3, 3), np.float32)},
  }
  expected = {
    'missing': "missing key 'auxiliary.bn3.running_var'",
    'unexpected': "unexpected key 'detection.loc.9.weight'",
    'shape': "'detection.conf.1.weight' has shape (7, 16, 3, 3), expected (120, 16, 3, 3)",
  }
  for name, bad in cases.items():
    path = str(tmp_path / f'{name}.npz')
    np.savez(path, **bad)
    with pytest.raises(import_rock_pytorch.WeightImportError) as info:
      import_rock_pytorch.import_file(path, config)
    message = str(info.value)
    assert message.startswith(f'{path}: ') and expected[name] in message and '\n' not in message
  # A ROCK file read as the baseline: the first auxiliary key is unexpected.
  path = str(tmp_path / 'rock.npz')
  np.savez(path, **state)
  baseline = rock_pytorch.get_config('baseline,smoke')
  with pytest.raises(import_rock_pytorch.WeightImportError, match="unexpected key 'auxiliary"):
    import_rock_pytorch.import_file(path, baseline)
  with pytest.raises(import_rock_pytorch.WeightImportError, match='no such file'):
    import_rock_pytorch.import_file(str(tmp_path / 'absent.npz'), config)


@pytest.mark.slow
def test_import_then_eval_and_detect_entry_points(tmp_path):
  """A rock-pytorch file -> import_weights CLI -> main --config.mode=eval, and -> detect."""
  config = rock_pytorch.get_config('smoke')
  config.model.num_classes = 11
  state = smoke_state(config)
  weights = str(tmp_path / 'rock_smoke.safetensors')
  save_file(state, weights)
  imported = str(tmp_path / 'imported')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = lambda *args: subprocess.run(
    [sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
  )
  result = run(
    'rock_jax.tools.import_weights',
    '--format=rock_pytorch',
    f'--input={weights}',
    f'--output={imported}',
    '--config=configs/rock_pytorch.py:smoke',
    *SMOKE_DATA,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # The checkpoint holds the file's values, head channels reordered (anchor a, class c).
  variables = checkpoints.load_variables(imported)
  kernel = np.asarray(variables['params']['ssd']['cls0']['kernel'])  # [3, 3, C, A * 12]
  conf = state['detection.conf.0.weight']  # [12 * A, C, 3, 3], channel c * A + a.
  a, c, anchors = 2, 5, conf.shape[0] // 12
  np.testing.assert_array_equal(kernel[..., a * 12 + c], conf[c * anchors + a].transpose(1, 2, 0))
  np.testing.assert_array_equal(
    variables['batch_stats']['rock']['fusion_bn']['mean'], state['auxiliary.bn3.running_mean']
  )

  workdir = str(tmp_path / 'eval')
  result = run(
    'rock_jax.main',
    '--config=configs/rock_pytorch.py:smoke',
    '--config.mode=eval',
    f'--config.init_from={imported}',
    f'--workdir={workdir}',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    *SMOKE_DATA,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, 'results.json')), os.listdir(workdir)

  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (90, 120, 3), np.uint8)).save(images / 'room.png')
  out = str(tmp_path / 'detections')
  result = run('rock_jax.detect', f'--checkpoint={imported}', f'--images={images}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, 'images.json')) as f:
    assert json.load(f)['images'][0]['height'] == 90
  assert os.path.exists(os.path.join(out, 'panels', 'room.png'))
