"""Tests of `rock_jax.detect` and `rock_jax.panels` on a smoke checkpoint."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import nyuv2, synthetic
from rock_jax import (
  checkpoints,
  coco,
  detect,
  eval_loop,
  inference,
  input_pipeline,
  panels,
  train,
)
from rock_jax.models import detector

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

TASK_KINDS = {'scene': 'image_class', 'depth': 'dense_scalar', 'normals': 'dense_vector'}


def save_smoke_checkpoint(workdir, variant: str = 'rock', config=None, steps=None) -> None:
  """Saves a freshly initialised smoke model the way the trainer does.

  `steps` maps step -> validation metrics (None: none) to save several checkpoints.
  """
  config = nyuv2.get_config('smoke') if config is None else config
  config.model.variant = variant
  model = detector.build_model(config)
  # Jitted as in the trainer: an eager init runs op by op and takes far longer.
  state = jax.jit(functools.partial(train.create_train_state, config, model))(jax.random.key(0))
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
  for step, metrics in (steps or {3: None}).items():
    checkpoints.save(manager, step, state, config, metrics=metrics)
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def smoke_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('smoke_run')
  save_smoke_checkpoint(workdir)
  return workdir


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
  """Images of several sizes and modes (RGB JPEG, greyscale PNG, RGBA PNG)."""
  folder = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (120, 200, 3), np.uint8)).save(folder / 'a.jpg')
  Image.fromarray(rng.integers(0, 255, (50, 30), np.uint8)).save(folder / 'b.png')
  Image.fromarray(rng.integers(0, 255, (77, 91, 4), np.uint8), 'RGBA').save(folder / 'c.png')
  (folder / 'notes.txt').write_text('not an image, ignored')
  return folder


# ------------------------------------------------------------------ panels


def test_colormap_endpoints_and_shape():
  rgb = panels.colormap(np.array([[0.0, 1.0], [-3.0, np.nan]]))
  assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[0, 0], [68, 1, 84])  # viridis(0)
  np.testing.assert_array_equal(rgb[0, 1], [253, 231, 37])  # viridis(1)
  np.testing.assert_array_equal(rgb[1, 0], rgb[0, 0])  # Clipped.
  np.testing.assert_array_equal(rgb[1, 1], rgb[0, 0])  # NaN -> 0.


def test_vector_map_encodes_unit_normals():
  normals = np.zeros((2, 2, 3), np.float32)
  normals[..., 2] = -5.0  # Towards the camera, any length.
  rgb = panels.vector_map(normals, (4, 4))
  np.testing.assert_array_equal(rgb[0, 0], [128, 128, 0])


def test_draw_detections_respects_threshold():
  image = np.zeros((100, 200, 3), np.uint8)
  boxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.6, 0.6, 0.9, 0.9]])
  drawn = panels.draw_detections(
    image, boxes, np.array([0.9, 0.1]), np.array([1, 2]), ('a', 'b'), score_threshold=0.5
  )
  assert drawn.shape == image.shape
  assert drawn[50, 20:80].any()  # Left edge of the kept box (x = 20 px).
  assert not drawn[65:85, 125:175].any()  # The low-score box is not drawn.


def test_figure3_panel_has_one_tile_per_task():
  image = np.full((60, 80, 3), 100, np.uint8)
  det = {
    'boxes': np.array([[0.2, 0.2, 0.8, 0.8]]),
    'scores': np.array([0.9]),
    'classes': np.array([1]),
    'num': 1,
  }
  aux = {
    'scene': np.array([0.0, 3.0]),
    'scene_map': np.random.default_rng(0).normal(size=(4, 5, 2)),
    'depth': np.zeros((4, 5)),
    'normals': np.ones((4, 5, 3)),
  }
  tile = 30 * 80 // 60 + 4  # Tile width at height 30, plus the gap.
  rock = panels.figure3_panel(
    image, det, aux, class_names=('x',), task_kinds=TASK_KINDS, tile_height=30
  )
  baseline = panels.figure3_panel(image, det, {}, class_names=('x',), task_kinds={}, tile_height=30)
  assert rock.size == (4 * tile - 4, 30 + panels.TITLE_HEIGHT)
  assert baseline.size == (tile - 4, 30 + panels.TITLE_HEIGHT)
  titles = [t for t, _ in panels.task_tiles(image, aux, TASK_KINDS, {'scene': ('a', 'b')})]
  assert titles[0].startswith('scene: b (0.95)') and titles[1].startswith('depth 1.0-1.0 m')


# ------------------------------------------------------------------ detect


def test_to_coco_maps_to_original_pixels():
  det = {
    'boxes': np.array([[0.1, 0.2, 0.5, 0.6], [0, 0, 0, 0]], np.float32),
    'scores': np.array([0.75, 0.0]),
    'classes': np.array([3, 0]),
    'num': np.int32(1),
  }
  [result] = coco.coco_detections(det, 7, (200, 400))
  assert result['image_id'] == 7 and result['category_id'] == 3
  np.testing.assert_allclose(result['bbox'], [80, 20, 160, 80], atol=0.01)
  assert result['score'] == pytest.approx(0.75)


def test_preprocess_resizes_and_normalises():
  image = np.full((10, 30, 3), 255, np.uint8)
  x = detect.preprocess(image, (64, 96))
  assert x.shape == (64, 96, 3) and x.dtype == np.float32
  np.testing.assert_allclose(
    x[0, 0], (1.0 - np.array(input_pipeline.IMAGENET_MEAN)) / input_pipeline.IMAGENET_STD
  )


def test_detect_end_to_end(smoke_workdir, image_dir, tmp_path):
  summary = detect.run(smoke_workdir, image_dir, tmp_path / 'out', score_threshold=0.0)
  assert summary['num_images'] == 3 and summary['step'] == 3
  results = json.loads((tmp_path / 'out' / 'detections.json').read_text())
  info = json.loads((tmp_path / 'out' / 'images.json').read_text())
  sizes = {im['id']: (im['height'], im['width']) for im in info['images']}
  assert [im['file_name'] for im in info['images']] == ['a.jpg', 'b.png', 'c.png']
  assert sizes == {1: (120, 200), 2: (50, 30), 3: (77, 91)}
  assert [c['name'] for c in info['categories']][:2] == ['bathtub', 'bed']
  assert len(info['categories']) == 19
  assert len(results) == summary['num_detections'] > 0
  for r in results:
    height, width = sizes[r['image_id']]
    x, y, w, h = r['bbox']
    assert 0 <= x and 0 <= y and w >= 0 and h >= 0
    assert x + w <= width + 0.01 and y + h <= height + 0.01
    assert 1 <= r['category_id'] <= 19 and r['score'] > 0.05  # config.eval.score_threshold
  for name, (height, width) in (('a', (120, 200)), ('b', (50, 30))):
    with Image.open(tmp_path / 'out' / 'panels' / f'{name}.png') as panel:
      size = panel.size
    tile = round(width * 240 / height)
    assert size == (4 * tile + 3 * 4, 240 + panels.TITLE_HEIGHT)

  # Batching (with a padded last batch) gives the same detections.
  detect.run(smoke_workdir, image_dir, tmp_path / 'out2', batch_size=2, write_panels=False)
  batched = json.loads((tmp_path / 'out2' / 'detections.json').read_text())
  # The same detections; two with scores equal to float rounding may come in either order.
  assert len(batched) == len(results)
  unmatched = list(batched)
  for r in results:
    match = next(
      (
        b
        for b in unmatched
        if (b['image_id'], b['category_id']) == (r['image_id'], r['category_id'])
        and abs(b['score'] - r['score']) < 1e-5
        and np.allclose(b['bbox'], r['bbox'], atol=0.05)
      ),
      None,
    )
    assert match is not None, r
    unmatched.remove(match)
  assert not (tmp_path / 'out2' / 'panels' / 'a.png').exists()


def test_detect_errors(smoke_workdir, image_dir, tmp_path):
  with pytest.raises(detect.DetectError, match='no checkpoint found at'):
    detect.run(tmp_path / 'nothing', image_dir, tmp_path / 'o')
  with pytest.raises(detect.DetectError, match='image folder not found'):
    detect.run(smoke_workdir, tmp_path / 'missing', tmp_path / 'o')

  bad = tmp_path / 'bad'
  bad.mkdir()
  Image.new('RGB', (8, 8)).save(bad / 'a_good.png')
  (bad / 'broken.jpg').write_bytes(b'this is not a jpeg')
  with pytest.raises(detect.DetectError, match=r'cannot read image .*broken\.jpg'):
    detect.run(smoke_workdir, bad, tmp_path / 'o')
  assert not (tmp_path / 'o').exists()  # Checked before anything runs or is written.
  # A file whose header parses but whose data is cut off fails when it is decoded.
  data = (bad / 'a_good.png').read_bytes()
  (bad / 'broken.jpg').unlink()
  (bad / 'cut.png').write_bytes(data[: len(data) // 2])
  with pytest.raises(detect.DetectError, match=r'cannot read image .*cut\.png'):
    detect.read_image(bad / 'cut.png')

  config = nyuv2.get_config('smoke')
  config.model.num_classes = 5
  with pytest.raises(detect.DetectError, match='does not match the config') as e:
    detect.run(smoke_workdir, image_dir, tmp_path / 'o', config=config)
  assert '\n' not in str(e.value) and 'ssd/' in str(e.value)
  config = nyuv2.get_config('smoke')
  config.model.variant = 'baseline'
  with pytest.raises(detect.DetectError, match="does not match the config.*'baseline'"):
    detect.run(smoke_workdir, image_dir, tmp_path / 'o', config=config)


def test_detect_cli_one_line_error(tmp_path, image_dir):
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'rock_jax.detect',
      f'--checkpoint={tmp_path / "none"}',
      f'--images={image_dir}',
      f'--out={tmp_path / "o"}',
    ],
    capture_output=True,
    text=True,
    check=False,
    timeout=120,
  )
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [f'error: no checkpoint found at {tmp_path / "none"}']


@pytest.mark.slow
def test_detect_matches_the_eval_pipeline(tmp_path, monkeypatch):
  """The same images through detect and through the eval pipeline: same inputs, same boxes."""
  import tensorflow_datasets as tfds

  config = synthetic.get_config('smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.eval.batch_size = 4  # The 4 test images in one batch, as detect's batch below.
  workdir = tmp_path / 'run'
  save_smoke_checkpoint(workdir, config=config.copy_and_resolve_references())
  builder = input_pipeline.get_builder('synthetic_rooms', 'tiny', data_dir=config.data.data_dir)
  examples = list(tfds.as_numpy(builder.as_dataset(split='test', shuffle_files=False)))
  folder = tmp_path / 'images'
  folder.mkdir()
  for k, ex in enumerate(examples):  # PNG: lossless, the same pixels come back.
    Image.fromarray(ex['image']).save(folder / f'{k:02d}.png')

  # Model inputs: the eval pipeline's batch and detect's preprocessing, bit for bit.
  [batch] = list(
    input_pipeline.create_eval_dataset(
      config, 'test', process_index=0, process_count=1
    ).as_numpy_iterator()
  )
  size = tuple(config.data.image_size)
  for k, ex in enumerate(examples):
    image = detect.read_image(folder / f'{k:02d}.png')
    np.testing.assert_array_equal(image, ex['image'])
    np.testing.assert_array_equal(detect.preprocess(image, size), batch['image'][k])

  # Detections: the evaluator's COCO results and detect's detections.json.
  evaluators = []

  class Recording(eval_loop.coco.CocoEvaluator):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      evaluators.append(self)

  monkeypatch.setattr(eval_loop.coco, 'CocoEvaluator', Recording)
  mesh = train.create_mesh(config.eval.batch_size)
  model = detector.build_model(config)
  with jax.set_mesh(mesh):
    evaluator = eval_loop.Evaluator(config, model, mesh)
    evaluator.run(checkpoints.load_variables(workdir), 'test', step=3)
  detect.run(workdir, folder, tmp_path / 'out', batch_size=4, write_panels=False)
  from_detect = json.loads((tmp_path / 'out' / 'detections.json').read_text())
  ids = {int(ex['image_id']): k + 1 for k, ex in enumerate(examples)}  # detect: by file order.
  from_eval = [{**d, 'image_id': ids[d['image_id']]} for d in evaluators[0].detections_json()]
  key = lambda d: (d['image_id'], -d['score'], d['category_id'])
  from_eval, from_detect = sorted(from_eval, key=key), sorted(from_detect, key=key)
  assert len(from_eval) == len(from_detect) > 0
  assert [(d['image_id'], d['category_id']) for d in from_detect] == [
    (d['image_id'], d['category_id']) for d in from_eval
  ]
  # One device (detect) vs the eval mesh's 4: the same math, up to float reassociation.
  np.testing.assert_allclose(
    [d['bbox'] for d in from_detect], [d['bbox'] for d in from_eval], rtol=1e-5, atol=1e-4
  )
  np.testing.assert_allclose(
    [d['score'] for d in from_detect], [d['score'] for d in from_eval], rtol=1e-5, atol=1e-6
  )


def test_detect_takes_the_best_checkpoint_and_a_file_or_glob(tmp_path, image_dir, monkeypatch):
  workdir = tmp_path / 'run'
  steps = {2: {'mAP@0.5': 0.4}, 4: {'mAP@0.5': 0.1}, 5: None}  # Best 2, latest 5.
  save_smoke_checkpoint(workdir, steps=steps)
  save_smoke_checkpoint(tmp_path / 'plain')  # No validation metrics: the latest step.
  monkeypatch.chdir(tmp_path)  # Relative --checkpoint and --out.
  assert (inference.load_model('run').step, inference.load_model('run').kind) == (2, 'best')
  assert inference.load_model('run', latest=True).step == 5
  assert inference.load_model('run/checkpoints/4').kind == 'given'
  assert inference.load_model('plain').kind == 'latest'
  assert detect.list_images(image_dir / 'a.jpg') == [image_dir / 'a.jpg']
  assert detect.list_images(str(image_dir / '*.png')) == [image_dir / 'b.png', image_dir / 'c.png']
  with pytest.raises(detect.DetectError, match=r'no images .* match'):
    detect.list_images(str(image_dir / '*.gif'))
  summary = detect.run('run', image_dir / 'a.jpg', 'out', write_panels=False)
  assert (summary['step'], summary['checkpoint_kind'], summary['num_images']) == (2, 'best', 1)
  assert json.loads((tmp_path / 'out' / 'images.json').read_text())['images'][0]['id'] == 1


# ------------------------------------------------------------------ panel legibility


def _overlap(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_a_crowded_image_never_overlap():
  rng = np.random.default_rng(1)
  n = 40  # Far more boxes than the 120x90 image has room for labels.
  y0, x0 = rng.uniform(0, 0.8, n), rng.uniform(0, 0.8, n)
  boxes = np.stack([y0, x0, y0 + 0.2, x0 + 0.2], axis=1)
  image = np.zeros((120, 90, 3), np.uint8)
  drawn, labels = panels.draw_detections_with_labels(
    image, boxes, rng.uniform(0.5, 1.0, n), rng.integers(1, 4, n), ('chair', 'lamp', 'sofa')
  )
  assert drawn.shape == image.shape and len(labels) >= 3
  for i, a in enumerate(labels):
    assert 0 <= a[0] and a[2] <= 90 and 0 <= a[1] and a[3] <= 120, a  # Inside the image.
    for b in labels[i + 1 :]:
      assert not _overlap(a, b), (a, b)


def test_layout_labels_moves_a_colliding_label_and_drops_one_without_room():
  # Two boxes with the same top-left corner: the second label goes inside its box,
  # under the first one's; a third box has no free place left at all.
  boxes = [(10, 20, 60, 40), (10, 20, 60, 40), (10, 20, 60, 40)]
  rects = panels.layout_labels(boxes, [(40, 10)] * 3, width=100, height=100)
  assert rects[0] == (10, 10, 50, 20)  # Above the box.
  assert rects[1] == (10, 20, 50, 30)  # Inside its top-left corner.
  assert rects[2] == (10, 30, 50, 40)  # Down the inside of the left edge.
  crowded = panels.layout_labels([(0, 0, 10, 10)] * 2, [(10, 10)] * 2, width=10, height=10)
  assert crowded[0] == (0, 0, 10, 10) and crowded[1] is None


def test_titles_of_a_portrait_panel_stay_in_their_tiles():
  image = np.full((400, 150, 3), 90, np.uint8)  # Tall and narrow: tiles 90 px wide at 240.
  tile = panels.resize_to_height(image, 240)
  tiles = [
    ('12 detections >= 0.3', tile),
    ('scene: living_room_with_a_long_name (0.97)', tile),
    ('depth 0.5-10.0 m', tile),
    ('normals', tile),
  ]
  extents = panels.title_extents(tiles)
  x = 0
  for (_, t), (start, end) in zip(tiles, extents, strict=True):
    assert x <= start and end <= x + t.shape[1], (start, end, x)
    x += t.shape[1] + 4
  panel = panels.compose(tiles)
  assert panel.size == (4 * tile.shape[1] + 12, 240 + panels.TITLE_HEIGHT)


def test_panel_with_targets_has_a_ground_truth_row():
  image = np.full((60, 80, 3), 100, np.uint8)
  det = {'boxes': np.array([[0.2, 0.2, 0.8, 0.8]]), 'scores': np.array([0.9]), 'classes': [1]}
  aux = {'scene': np.array([0.0, 3.0]), 'depth': np.zeros((4, 5)), 'normals': np.ones((4, 5, 3))}
  batch = {
    'gt_boxes': np.array([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]]]),
    'gt_labels': np.array([[1, 0]]),
    'gt_mask': np.array([[True, False]]),
    'scene': np.array([1]),
    'has_scene': np.array([1.0]),
    'depth': np.full((1, 4, 5), 2.0),
    'depth_mask': np.ones((1, 4, 5)),
    'has_depth': np.array([1.0]),
    'normals': np.ones((1, 4, 5, 3)),
    'normals_mask': np.zeros((1, 4, 5)),  # No valid normal: a grey tile.
    'has_normals': np.array([1.0]),
  }
  targets = panels.targets_of(batch, 0, TASK_KINDS)
  assert targets['boxes'].shape == (1, 4) and int(targets['scene']) == 1
  panel = panels.figure3_panel(
    image, det, aux, class_names=('x',), task_kinds=TASK_KINDS, tile_height=30, targets=targets
  )
  tile = 30 * 80 // 60 + 4
  assert panel.size == (4 * tile - 4, 2 * (30 + panels.TITLE_HEIGHT) + 4)
  pixels = np.asarray(panel)
  normals_target = pixels[30 + 2 * panels.TITLE_HEIGHT + 4 + 5, 3 * tile + 5]
  np.testing.assert_array_equal(normals_target, [128, 128, 128])
