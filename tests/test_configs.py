"""Every experiment config loads through the real flag parser, and its smoke variant builds.

The models are only traced (`jax.eval_shape`), never compiled, so this stays fast.
"""

import glob
import os
import warnings

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from rock_jax import boxes
from rock_jax.models import detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
  os.path.relpath(p, REPO)
  for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
  if not p.endswith(('__init__.py', 'base.py'))
)
# Arguments each file accepts besides the default (each also with ',smoke').
ARGS = {
  'configs/nyuv2_tasks.py': ['D', 'DN', 'DS', 'NS', 'DNS'],
  'configs/nyuv2_flat_mtl.py': ['DN', 'DS', 'NS'],
  'configs/nyuv2_depth_fusion.py': ['add', 'product'],
  'configs/nyuv2_fraction.py': ['0.6', '0.7', '0.8'],
  'configs/rock_pytorch.py': ['baseline'],
}


def parse(spec: str, *overrides: str):
  """Parses `--config=spec` (and overrides) exactly as `rock_jax.main` does."""
  argv = ['prog', f'--config={spec}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  with warnings.catch_warnings():
    # ml_collections 1.1.0 loads config files with the deprecated `load_module()`.
    warnings.filterwarnings('ignore', 'the load_module', DeprecationWarning)
    flag_values(argv)
  return flag_values.config


def all_specs():
  for path in CONFIG_FILES:
    for arg in [None, *ARGS.get(path, [])]:
      yield path if arg is None else f'{path}:{arg}'


def test_the_expected_experiment_files_exist():
  expected = {
    'nyuv2', 'nyuv2_baseline', 'nyuv2_flat_mtl', 'nyuv2_rock_no_fusion', 'nyuv2_no_aux_sup',
    'nyuv2_tasks', 'nyuv2_depth_fusion', 'nyuv2_fraction', 'mlt_pretrain', 'nyuv2_finetune',
    'cityscapes', 'synthetic',
  }  # fmt: skip
  assert expected <= {os.path.basename(p)[:-3] for p in CONFIG_FILES}


@pytest.mark.slow
@pytest.mark.parametrize('spec', list(all_specs()))
def test_config_loads_and_smoke_builds(spec):
  config = parse(spec)
  assert config.train.num_steps >= 1000
  smoke_spec = spec + (',smoke' if ':' in spec else ':smoke')
  smoke = parse(smoke_spec)
  assert smoke.train.num_steps <= 10
  # Same experiment: the smoke variant only shrinks it.
  assert (smoke.model.variant, smoke.model.tasks, smoke.data.name) == (
    config.model.variant,
    config.model.tasks,
    config.data.name,
  )
  model = detector.build_model(smoke)
  height, width = smoke.data.image_size
  images = jnp.zeros((2, height, width, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  anchors = boxes.default_boxes(smoke.model, (height, width)).shape[0]
  assert outputs['boxes'].shape == (2, anchors, 4)
  assert outputs['logits'].shape == (2, anchors, smoke.model.num_classes + 1)
  tasks = [t for t in smoke.model.tasks.split(',') if t]
  if smoke.model.variant != 'baseline':
    assert set(tasks) <= set(outputs['aux'])


def test_paper_settings():
  config = parse('configs/nyuv2.py')
  assert (config.train.batch_size, config.train.num_steps) == (8, 40_000)
  assert config.train.learning_rate == 5e-5 and tuple(config.train.lr_boundaries) == (30_000,)
  assert config.train.lr_decay == 0.1 and config.train.optimizer == 'adam'
  assert dict(config.loss.weights) == dict(cls=1.0, loc=3.0, scene=3.0, depth=3.0, normals=30.0)
  assert tuple(config.data.image_size) == (480, 640)
  assert config.eval.nms_iou == 0.3


def test_variants_and_ablations():
  assert parse('configs/nyuv2_baseline.py').model.variant == 'baseline'
  assert parse('configs/nyuv2_flat_mtl.py').model.variant == 'flat_mtl'
  assert parse('configs/nyuv2_flat_mtl.py:NS').model.tasks == 'scene,normals'
  assert parse('configs/nyuv2_rock_no_fusion.py').model.variant == 'rock_no_fusion'
  assert parse('configs/nyuv2_tasks.py:DN').model.tasks == 'depth,normals'
  assert parse('configs/nyuv2_tasks.py:DS').model.tasks == 'scene,depth'
  assert parse('configs/nyuv2_tasks.py:D').model.tasks == 'depth'
  no_aux = parse('configs/nyuv2_no_aux_sup.py')
  assert no_aux.model.variant == 'rock' and no_aux.model.tasks == 'scene,depth,normals'
  assert (no_aux.loss.weights.scene, no_aux.loss.weights.depth, no_aux.loss.weights.normals) == (
    0.0,
    0.0,
    0.0,
  )
  product = parse('configs/nyuv2_depth_fusion.py:product')
  assert (product.model.tasks, product.model.rock.fusion) == ('depth', 'product')
  assert parse('configs/nyuv2_fraction.py:0.6').data.train_fraction == 0.6


def test_pretraining_finetuning_and_cityscapes():
  mlt = parse('configs/mlt_pretrain.py')
  assert mlt.data.name == 'mlt' and 'scene' not in mlt.model.tasks
  assert (mlt.train.num_steps, tuple(mlt.train.lr_boundaries)) == (320_000, (240_000,))
  finetune = parse('configs/nyuv2_finetune.py', '--config.init_from=/ckpt')
  assert finetune.init_from == '/ckpt' and finetune.model.num_classes == 19
  # Official split: no validation images, so nothing is chosen; test once, final step.
  assert (finetune.data.eval_split, finetune.data.test_split) == ('', 'test')
  assert finetune.init_exclude
  city = parse('configs/cityscapes.py')
  assert (city.model.num_classes, city.model.tasks, city.train.num_steps) == (8, 'depth', 60_000)


def test_overrides_and_bad_arguments():
  config = parse('configs/synthetic.py:smoke', '--config.model.variant=baseline')
  assert config.model.variant == 'baseline'
  for spec in ('configs/nyuv2_tasks.py:DX', 'configs/nyuv2_depth_fusion.py:max',
               'configs/nyuv2_fraction.py:1.5', 'configs/nyuv2_baseline.py:foo'):  # fmt: skip
    # absl reports the config file's ValueError as an illegal flag value.
    with pytest.raises(flags.IllegalFlagValueError, match='got'):
      parse(spec)
