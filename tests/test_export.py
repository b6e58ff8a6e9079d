"""Tests of `rock_jax.export` and `rock_jax.serving` on a smoke checkpoint.

Two exports of the same checkpoint: through the API with a symbolic batch and
postprocess inside, and through the command line with batch 2 and without it
(`rock_jax.serving` then runs postprocess). Both must give the detections of the
Flax model that `rock_jax.detect` builds from the checkpoint.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from cached_env import subprocess_env
from PIL import Image
from test_detect import save_smoke_checkpoint

from rock_jax import detect, export, inference, serving

# Builds a model, a dataset or a subprocess for most tests: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  root = tmp_path_factory.mktemp('export')
  workdir = root / 'run'
  save_smoke_checkpoint(workdir)
  dynamic = root / 'dynamic'
  metadata = export.run(workdir, dynamic, batch='dynamic', with_postprocess=True)
  assert metadata['batch'] is None and metadata['with_postprocess']
  fixed = root / 'fixed'
  result = subprocess.run(
    [sys.executable, '-m', 'rock_jax.export', f'--checkpoint={workdir}', f'--out={fixed}']
    + ['--batch=2'],
    capture_output=True,
    text=True,
    check=False,
    timeout=900,
    cwd=REPO,
    env=subprocess_env(root / 'cache', REPO),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Exported step 3 (batch 2, without postprocess' in result.stdout
  return workdir, dynamic, fixed


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """Smooth images (random ones give near-tied scores), at 64x96 and other sizes."""
  folder = tmp_path_factory.mktemp('export_images')
  rng = np.random.default_rng(1)
  for name, (height, width) in (('a', (64, 96)), ('b', (120, 200)), ('c', (64, 96))):
    coarse = rng.integers(0, 255, (4, 6, 3), np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(folder / f'{name}.png')
  return folder


def _batch(folder, image_size):
  files = detect.list_images(folder)
  return np.stack([detect.preprocess(detect.read_image(p), image_size) for p in files])


def _assert_same_detections(got, want):
  np.testing.assert_array_equal(got['num'], want['num'])
  np.testing.assert_array_equal(got['classes'], want['classes'])
  np.testing.assert_allclose(got['scores'], want['scores'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got['boxes'], want['boxes'], atol=1e-5)


@pytest.mark.slow
def test_artifacts_give_the_flax_models_detections(exports, images):
  workdir, dynamic, fixed = exports
  loaded = inference.load_model(workdir)
  x = _batch(images, loaded.config.data.image_size)  # 3 images.
  want, _ = detect.make_predict_fn(loaded)(x)
  assert want['num'].min() > 0
  for directory in (dynamic, dynamic / 'saved_model', fixed, fixed / 'saved_model'):
    served = serving.load(directory)
    assert served.class_names == loaded.class_names and served.step == 3
    if served.batch is None:
      got = served.predict(x)
    else:  # Batch 2: the first two, then the third padded.
      assert served.batch == 2
      pad = np.concatenate([x[2:], np.zeros_like(x[:1])])
      parts = [served.predict(x[:2]), served.predict(pad)]
      got = {k: np.concatenate([parts[0][k], parts[1][k][:1]]) for k in want}
    _assert_same_detections(got, want)


@pytest.mark.slow
def test_detect_runs_from_either_artifact(exports, images, tmp_path):
  workdir, dynamic, fixed = exports
  detect.run(workdir, images, tmp_path / 'flax', write_panels=False)
  want = json.loads((tmp_path / 'flax' / 'detections.json').read_text())
  assert want
  for name, directory in (('jax', fixed), ('tf', dynamic / 'saved_model')):
    summary = detect.run(None, images, tmp_path / name, exported=directory)
    assert summary['step'] == 3
    got = json.loads((tmp_path / name / 'detections.json').read_text())
    assert [(r['image_id'], r['category_id']) for r in got] == [
      (r['image_id'], r['category_id']) for r in want
    ]
    np.testing.assert_allclose([r['bbox'] for r in got], [r['bbox'] for r in want], atol=0.011)
    np.testing.assert_allclose([r['score'] for r in got], [r['score'] for r in want], atol=2e-5)
    assert (tmp_path / name / 'panels' / 'b.png').exists()


_FRESH = """
import json, sys
import numpy as np
import tensorflow as tf
from PIL import Image
serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
out = {}
for name in sys.argv[2:]:
  image = np.asarray(Image.open(name).convert('RGB'))[None]
  det = serve(images=tf.constant(image))
  out[name] = {k: v.numpy().tolist() for k, v in det.items()}
out['modules'] = sorted(m for m in sys.modules if m.split('.')[0] in ('rock_jax', 'flax'))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_saved_model_loads_alone_in_a_fresh_process(exports, images, tmp_path):
  workdir, dynamic, _ = exports
  files = [str(images / 'a.png'), str(images / 'b.png')]
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)
  result = subprocess.run(
    [sys.executable, '-c', _FRESH, str(dynamic / 'saved_model'), *files],
    capture_output=True,
    text=True,
    check=False,
    timeout=600,
    cwd=tmp_path,  # Not the repository: rock_jax is not importable from here by path.
    env=env,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  # TensorFlow's own imports pull in jax when it is installed; rock_jax and Flax stay out.
  assert out['modules'] == []
  # At the model's size: the Flax model's detections, boxes in pixels.
  loaded = inference.load_model(workdir)
  want, _ = detect.make_predict_fn(loaded)(_batch(images, loaded.config.data.image_size)[:1])
  got = {k: np.asarray(v) for k, v in out[files[0]].items()}
  got['num'] = got.pop('num_detections')
  got['boxes'] = got['boxes'] / np.array([64, 96, 64, 96], np.float32)
  _assert_same_detections(got, want)
  # Any other size: resized as `detect` and the eval pipeline resize it (float, no
  # antialiasing), so again the Flax model's detections, boxes in that image's pixels
  # (the graph's preprocessing differs from the eager one by float rounding only).
  other = {k: np.asarray(v) for k, v in out[files[1]].items()}
  assert other['boxes'].shape == (1, 100, 4) and other['classes'].dtype == np.int64
  n = int(other['num_detections'][0])
  assert n > 0 and (other['boxes'][0, :n] >= 0).all()
  assert (other['boxes'][0, :n, 0::2] <= 120 + 1e-3).all()
  assert (other['boxes'][0, :n, 1::2] <= 200 + 1e-3).all()
  assert other['boxes'][0, :n, 3].max() > 96  # Scaled past the model's 96 columns.
  want, _ = detect.make_predict_fn(loaded)(_batch(images, loaded.config.data.image_size)[1:2])
  other['num'] = other.pop('num_detections')
  other['boxes'] = other['boxes'] / np.array([120, 200, 120, 200], np.float32)
  _assert_same_detections(other, want)


@pytest.mark.slow
def test_bad_artifacts_give_one_line_errors(exports, images, tmp_path):
  _, dynamic, _ = exports
  with pytest.raises(serving.ExportError, match='no such export folder'):
    serving.load(tmp_path / 'missing')
  broken = tmp_path / 'broken'
  broken.mkdir()
  with pytest.raises(serving.ExportError, match=r'export\.json: missing'):
    serving.load(broken)
  metadata = json.loads((dynamic / 'export.json').read_text())
  (broken / 'export.json').write_text(json.dumps({**metadata, 'format': 'rock_jax.export/0'}))
  with pytest.raises(serving.ExportError, match="format 'rock_jax.export/0' is not"):
    serving.load(broken)
  (broken / 'export.json').write_text(json.dumps(metadata))
  (broken / 'model.jax_exported').write_bytes(b'not flatbuffers at all')
  with pytest.raises(serving.ExportError, match='not a readable jax.export artifact') as error:
    serving.load(broken)
  assert '\n' not in str(error.value) and 'model.jax_exported' in str(error.value)
  (broken / 'saved_model.pb').write_bytes(b'garbage')
  with pytest.raises(serving.ExportError, match='not a loadable SavedModel') as error:
    serving.load(broken)
  assert '\n' not in str(error.value)
  # A SavedModel without the signature on the model input (an export from before it).
  older = tmp_path / 'older'
  module = tf.Module()
  module.serve = tf.function(lambda images: {'scores': tf.reduce_mean(images, [1, 2, 3])})
  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
  concrete = module.serve.get_concrete_function(spec)
  tf.saved_model.save(module, str(older), signatures={serving.SIGNATURE: concrete})
  (older / 'export.json').write_text(json.dumps(metadata))
  with pytest.raises(serving.ExportError, match="no 'preprocessed' signature") as error:
    serving.load(older)
  assert '\n' not in str(error.value)
  with pytest.raises(serving.ExportError, match='--batch must be'):
    export.parse_batch('0')

  result = subprocess.run(
    [sys.executable, '-m', 'rock_jax.detect', f'--exported={broken}']
    + [f'--images={images}', f'--out={tmp_path / "o"}'],
    capture_output=True,
    text=True,
    check=False,
    timeout=300,
    cwd=REPO,
  )
  assert result.returncode == 2  # cli.EXIT_CODE: a user error
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'not a loadable SavedModel' in errors[0], result.stderr[-2000:]
