"""Executes notebooks/inspect_params.ipynb on a smoke checkpoint, so it never rots.

The committed notebook carries the outputs of such a run (so it reads on GitHub); this
test re-executes it from a copy of the repository layout: the kernel runs in
`notebooks/` and finds the default checkpoint `workdir/smoke` by relative path.
"""

import base64
import functools
import io
import pathlib
import re

import jax
import nbclient
import nbformat
import pytest
from PIL import Image

from configs import nyuv2
from rock_jax import checkpoints, train
from rock_jax.models import detector

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'inspect_params.ipynb'


def save_smoke_checkpoint(workdir: pathlib.Path) -> None:
  """Saves a freshly initialised smoke ROCK model the way the trainer does."""
  config = nyuv2.get_config('smoke')
  model = detector.build_model(config)
  state = jax.jit(functools.partial(train.create_train_state, config, model))(jax.random.key(0))
  manager = checkpoints.create_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
  checkpoints.save(manager, 2, state, config)
  manager.wait_until_finished()
  manager.close()


@pytest.mark.slow
def test_inspect_params_notebook(tmp_path, monkeypatch):
  save_smoke_checkpoint(tmp_path / 'workdir' / 'smoke')
  (tmp_path / 'notebooks').mkdir()
  # The kernel inherits this environment: no ROCK_CHECKPOINT, so the parameter cell looks
  # for its default, the relative `workdir/smoke`, from `notebooks/` upwards.
  monkeypatch.delenv('ROCK_CHECKPOINT', raising=False)
  monkeypatch.setenv('ROCK_SCORE_THRESHOLD', '0.0')
  monkeypatch.setenv('PYTHONPATH', str(REPO))  # This checkout's rock_jax, from any folder.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  committed = [c.get('outputs') for c in notebook.cells if c.cell_type == 'code']
  assert all(committed), 'commit the notebook executed, with its outputs'
  client = nbclient.NotebookClient(
    notebook,
    timeout=300,
    kernel_name='python3',
    resources={'metadata': {'path': str(tmp_path / 'notebooks')}},
  )
  client.execute()  # Raises CellExecutionError, with the cell's traceback, on any failure.

  text = ''.join(
    out.get('text', '')
    for cell in notebook.cells
    if cell.cell_type == 'code'
    for out in cell.outputs
    if out.output_type == 'stream'
  )
  assert 'checkpoint: ../workdir/smoke' in text
  assert 'step 2: variant ' in text
  assert 'summary.py agrees:' in text
  assert "task 'normals' (dense_vector, K = 12):" in text  # The smoke normals width.
  # Smoke widths: trunk 16, K_normals 12, backbone (conv5) 64.
  assert re.search(r'encoder normals_enc\s+1x1 conv\s+16 -> 12\s+204 params', text)
  assert re.search(r'decoder normals_dec\s+1x1 conv\s+12 -> 64\s', text)
  assert 'WARNING' not in text
  # Per stage and module: the smoke backbone's four stages, ROCK's trunk and tasks.
  for part in ('stem', 'stage1', 'stage4', 'trunk', 'task normals', 'class predictors'):
    assert re.search(rf'^  {part}\s+[\d,]+', text, re.M), part
  assert 'zeroed the BatchNorm scale and offset of 3 decoders' in text
  assert 'residual check: passed' in text
  images = [
    out['data']['image/png']
    for cell in notebook.cells
    if cell.cell_type == 'code'
    for out in cell.outputs
    if out.output_type == 'display_data' and 'image/png' in out.get('data', {})
  ]
  assert len(images) == 1
  with Image.open(io.BytesIO(base64.b64decode(images[0]))) as panel:
    width, height = panel.size
  assert height == 240 + 22 and width > 4 * 240  # Detections, scene, depth, normals.
