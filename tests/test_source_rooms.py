"""The `source` style and builder config of the synthetic rooms (issue #11's MLT analog).

The source must differ from the target in lighting, textures, camera range and object
mix, and carry no scene label; the target renders must not change.
"""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rock_jax.datasets import rooms_layout, rooms_render, synthetic_rooms

N = 24  # Renders per style for the statistics (48x64: well under a second each).


def _configs():
  return {c.name: c for c in synthetic_rooms.SyntheticRooms.BUILDER_CONFIGS}


@pytest.fixture(scope='module')
def renders():
  out = {}
  for name in ('target', 'source'):
    style = rooms_render.STYLES[name]
    out[name] = [
      rooms_render.render_scene(np.random.default_rng([11, i]), 48, 64, style=style)
      for i in range(N)
    ]
  return out


def test_default_style_is_the_target_style():
  assert rooms_render.STYLES['target'] == rooms_render.RenderStyle()
  for i in range(3):
    a = rooms_render.render_scene(np.random.default_rng([5, i]), 48, 64)
    b = rooms_render.render_scene(
      np.random.default_rng([5, i]), 48, 64, style=rooms_render.STYLES['target']
    )
    for key in ('image', 'depth', 'normals', 'boxes', 'labels'):
      np.testing.assert_array_equal(a[key], b[key])
  # Every original config keeps the target style, its seed and its scene labels.
  for name in ('default', 'cpu', 'bench', 'tiny'):
    config = _configs()[name]
    assert (config.style, config.scene_labels, config.seed) == ('target', True, 0)


def test_source_style_differs_in_each_named_way():
  target, source = rooms_render.STYLES['target'], rooms_render.STYLES['source']
  # Lighting: flatter (more ambient, less directional) and more strongly tinted.
  assert source.ambient[0] > target.ambient[1] and source.direct[1] < target.direct[0]
  assert source.tint[1] - source.tint[0] > 2 * (target.tint[1] - target.tint[0])
  # Textures: finer and less saturated.
  assert source.texture_frequency > 1.0 and source.saturation < 1.0
  # Camera: lower, closer, wider.
  assert source.camera_height[1] < target.camera_height[1]
  assert source.camera_distance[1] < target.camera_distance[1]
  assert source.focal < target.focal
  assert dict(source.presence) and all(m != 1.0 for _, m in source.presence)


def test_source_renders_show_the_differences(renders):
  target, source = renders['target'], renders['source']
  # Camera range: the source camera is closer to what it looks at (smaller median depth).
  depth = {k: np.median([np.median(r['depth']) for r in v]) for k, v in renders.items()}
  assert depth['source'] < 0.85 * depth['target']

  # Textures: washed-out colours: mean per-pixel chroma (max - min over channels) relative
  # to the brightness, after a grey-world white balance removes the light's tint.
  def chroma(images):
    values = []
    for r in images:
      image = r['image'].astype(np.float32) + 1.0
      image = image / image.mean((0, 1)) * image.mean()
      values.append((np.ptp(image, axis=-1) / image.mean(-1)).mean())
    return np.mean(values)

  assert chroma(source) < 0.8 * chroma(target)

  # Lighting: a flat light leaves less brightness contrast inside an image.
  def contrast(images):
    return np.mean([r['image'].astype(np.float32).mean(-1).std() for r in images])

  assert contrast(source) < contrast(target)


def test_source_object_mix():
  counts = {name: collections.Counter() for name in ('target', 'source')}
  for name, style in (('target', None), ('source', rooms_render.STYLES['source'])):
    presence = dict(style.presence) if style else None
    for scene_name in rooms_render.SCENES:
      for i in range(30):
        scene = rooms_layout.furnish(np.random.default_rng([3, i]), scene_name, presence)
        counts[name].update(rooms_render.CLASSES[k] for k in scene.labels)
  more = [c for c, m in rooms_render.STYLES['source'].presence if m > 1]
  fewer = [c for c, m in rooms_render.STYLES['source'].presence if m < 1]
  assert sum(counts['source'][c] for c in more) > 1.2 * sum(counts['target'][c] for c in more)
  assert sum(counts['source'][c] for c in fewer) < 0.8 * sum(counts['target'][c] for c in fewer)
  # `None` and an empty mapping keep the original table.
  a = rooms_layout.furnish(np.random.default_rng(1), 'office')
  b = rooms_layout.furnish(np.random.default_rng(1), 'office', {})
  assert a.labels == b.labels


def test_source_builder_has_no_scene_label_and_other_images(tmp_path):
  configs = _configs()
  assert configs['source'].num_train > configs['cpu'].num_train  # Larger than the target.
  assert configs['source'].seed != configs['cpu'].seed
  builder = synthetic_rooms.load_builder('source_tiny', data_dir=str(tmp_path))
  assert 'scene' not in builder.info.features
  assert builder.info.features['objects']['label'].names == list(rooms_render.CLASSES)
  target = synthetic_rooms.render_example(configs['tiny'], 'train', 0)
  for ex in tfds.as_numpy(builder.as_dataset('train').take(2)):
    assert 'scene' not in ex
    assert ex['image'].shape == (48, 64, 3)
    ref = synthetic_rooms.render_example(configs['source_tiny'], 'train', int(ex['image_id']))
    assert 'scene' not in ref
    np.testing.assert_array_equal(ex['image'], ref['image'])
    assert not np.array_equal(ex['image'], target['image'])
