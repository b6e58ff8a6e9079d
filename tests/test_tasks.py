"""The auxiliary-task specs (`rock_jax.tasks`) and a new dense task added by config alone.

The toy task 'edges' is declared in the config (kind dense_scalar, read from a dataset
field 'edge_strength' that no built-in dataset has) and gets one function of its own,
its loss. The input pipeline, the model, the train step, the evaluator and the
workdir's results then carry it with no other change.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import synthetic
from rock_jax import input_pipeline, losses, tasks, train

H, W, CELL = 48, 64, 16  # conv5 is 3x4 cells of 16x16 pixels (output stride 16).
CLASSES = ('cube', 'ball')


def _edge_map(rng: np.random.Generator) -> np.ndarray:
  """Constant per conv5 cell (0 = no value in some cells), so every resampling agrees."""
  cells = rng.uniform(0.2, 1.0, (H // CELL, W // CELL)).astype(np.float32)
  cells[rng.random(cells.shape) < 0.25] = 0.0
  return np.kron(cells, np.ones((CELL, CELL), np.float32))


class ToyEdges(tfds.core.GeneratorBasedBuilder):
  """Tiny images with one or two boxes and an 'edge_strength' map."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(H, W, 3)),
          'edge_strength': tfds.features.Tensor(shape=(H, W), dtype=np.float32),
          'objects': tfds.features.Sequence(
            {
              'bbox': tfds.features.BBoxFeature(),
              'label': tfds.features.ClassLabel(names=list(CLASSES)),
            }
          ),
          'image_id': np.int64,
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(seed) for seed, name in enumerate(SPLITS)}

  def _generate_examples(self, seed: int):
    for index in range(6):
      yield index, toy_example(seed, index)


SPLITS = ('train', 'validation', 'test')


def toy_example(seed: int, index: int) -> dict:
  rng = np.random.default_rng([seed, index])
  image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
  top, left = rng.uniform(0.05, 0.45, 2)
  box = np.array([top, left, top + 0.45, left + 0.45], np.float32)
  return {
    'image': image,
    'edge_strength': _edge_map(rng),
    'objects': {'bbox': box[None], 'label': np.array([index % 2], np.int64)},
    'image_id': seed * 100 + index,
  }


def _l1_on_edges(task, aux, batch, config):
  """The toy task's own loss: L1 between the predicted map and the target, valid cells."""
  del config
  weights = batch[f'{task}_mask'] * batch[f'has_{task}'][:, None, None]
  error = jnp.abs(aux[task] - batch[task]) * weights
  return jnp.sum(error) / jnp.maximum(jnp.sum(weights), 1.0)


def _toy_config(data_dir):
  config = synthetic.get_config('smoke')
  config.data.name = 'toy_edges'
  config.data.builder_config = ''
  config.data.data_dir = str(data_dir)
  config.data.augment = False
  config.model.num_classes = len(CLASSES)
  # The whole declaration of the new task.
  config.model.tasks = 'edges'
  config.model.task_specs.edges = dict(kind='dense_scalar', width=4, source='edge_strength')
  return config


def test_specs_batch_keys_and_the_baseline_rule():
  config = synthetic.get_config('smoke')
  declared = tasks.parse(config.model)
  assert [(t.name, t.kind, t.source) for t in declared] == [
    ('scene', 'image_class', 'scene'),
    ('depth', 'dense_scalar', 'depth'),
    ('normals', 'dense_vector', 'normals'),
  ]
  # An image task has no mask: nothing asks the pipeline for a `scene_mask`.
  assert tasks.batch_keys(config) == (
    'scene', 'has_scene', 'depth', 'has_depth', 'depth_mask',
    'normals', 'has_normals', 'normals_mask',
  )  # fmt: skip
  assert train.train_batch_keys(config)[:3] == ('image', 'box_targets', 'cls_targets')
  config.model.variant = 'baseline'
  assert tasks.active(config) == () and tasks.names(config) == []
  assert tasks.batch_keys(config) == ()
  assert len(tasks.parse(config.model)) == 3  # Still declared: the loss logs them as 0.
  config.model.task_specs.depth.kind = 'dense_matrix'
  config.model.variant = 'rock'
  with pytest.raises(ValueError, match="'depth': kind must be one of"):
    tasks.active(config)


@pytest.mark.slow
def test_a_new_dense_task_needs_a_config_entry_and_one_function(tmp_path, monkeypatch):
  monkeypatch.setitem(losses.TASK_LOSSES, 'edges', _l1_on_edges)
  config = _toy_config(tmp_path / 'data')

  # The pipeline makes the target from the declared source field, at the conv5 grid.
  batch = next(input_pipeline.create_eval_dataset(config, 'validation').as_numpy_iterator())
  assert {'edges', 'edges_mask', 'has_edges'} <= set(batch)
  assert 'depth' not in batch and 'scene' not in batch
  for i, image_id in enumerate(batch['image_id'][: int(batch['valid'].sum())]):
    written = toy_example(1, int(image_id) - 100)['edge_strength'][::CELL, ::CELL]
    np.testing.assert_allclose(batch['edges'][i], written, rtol=1e-6)
    np.testing.assert_array_equal(batch['edges_mask'][i], (written > 0).astype(np.float32))
  assert (batch['has_edges'][batch['valid'] > 0] == 1).all()

  # The real trainer trains it with its own loss and evaluates it by its kind.
  config.train.num_steps = 2
  config.train.eval_every = 2
  workdir = tmp_path / 'run'
  results = train.train_and_evaluate(config, str(workdir))
  assert results['split'] == 'test'
  assert results['edges_rmse'] is not None and results['edges_rel'] is not None
  assert 'loss/edges' in results and results['loss/edges'] > 0
  logged = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_rows = [row for row in logged if row.get('kind') == 'train']
  assert train_rows and all('loss/edges' in row for row in train_rows)
