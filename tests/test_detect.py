"""Tests of `rock_jax.detect` and `rock_jax.panels` on a smoke checkpoint."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import nyuv2
from rock_jax import checkpoints, detect, panels, train
from rock_jax.models import detector

TASK_KINDS = {'scene': 'image_class', 'depth': 'dense_scalar', 'normals': 'dense_vector'}


def save_smoke_checkpoint(workdir, variant: str = 'rock') -> None:
  """Saves a freshly initialised smoke model the way the trainer does."""
  config = nyuv2.get_config('smoke')
  config.model.variant = variant
  model = detector.build_model(config)
  # Jitted as in the trainer: an eager init runs op by op and takes far longer.
  state = jax.jit(functools.partial(train.create_train_state, config, model))(jax.random.key(0))
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
  checkpoints.save(manager, 3, state, config)
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
  [result] = detect.to_coco(det, 7, (200, 400))
  assert result['image_id'] == 7 and result['category_id'] == 3
  np.testing.assert_allclose(result['bbox'], [80, 20, 160, 80], atol=0.01)
  assert result['score'] == pytest.approx(0.75)


def test_preprocess_resizes_and_normalises():
  image = np.full((10, 30, 3), 255, np.uint8)
  x = detect.preprocess(image, (64, 96))
  assert x.shape == (64, 96, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x[0, 0], (1.0 - np.array(detect.MEAN_RGB)) / detect.STDDEV_RGB)


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
  assert [(r['image_id'], r['category_id']) for r in batched] == [
    (r['image_id'], r['category_id']) for r in results
  ]
  np.testing.assert_allclose([r['bbox'] for r in batched], [r['bbox'] for r in results], atol=0.05)
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
