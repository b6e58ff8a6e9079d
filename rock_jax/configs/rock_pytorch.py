"""The network of the PyTorch re-implementation (vita-epfl/rock-pytorch), exactly.

Built from the same modules as the paper configuration, with the reference's options:
- ROCK block: per-task 1x1 / 3x3 / 1x1 convs before each task's encoding conv, BN + ReLU
  after the fusion, and conv biases before every BatchNorm; BatchNorm momentum 0.01 in
  PyTorch terms (Flax 0.99) there and in the SSD extras;
- SSD head: 5 extra layers of widths (1024, 1024), (256, 512), (128, 256), (128, 256),
  (128, 256) with conv biases; the 4th spatial conv is 3x3 and the 5th 2x3, both stride 1
  and unpadded, so the 6 maps at 480x640 are 30x40, 15x20, 8x10, 4x5, 2x3 and 1x1;
- default boxes: the reference's `pboxes_rock()`, 7,228 boxes, with its per-map steps
  (`step_w = 213` on the 2x3 map);
- evaluation: NMS on unclipped boxes, clipped on output (`eval.clip_before_nms = False`).
49,327,531 parameters (`:baseline`, SSD without the ROCK block: 41,948,560), as the
reference. `rock_jax.tools.import_weights --format=rock_pytorch` converts its weights
(README: "Coming from rock-pytorch").

Options (comma separated): `baseline` (the reference's `baseline_ssd()`), `smoke` (the same
structure, narrow and at 64x80, for CPU tests of the entry points).

python -m rock_jax.main --config=configs/rock_pytorch.py --config.mode=eval \
    --config.init_from=IMPORTED_DIR --workdir=DIR
"""

import ml_collections

from rock_jax.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the rock-pytorch network; options `baseline` and `smoke`."""
  options, smoke = base.split_arg(arg)
  if set(options) - {'baseline'}:
    raise ValueError(f'rock_pytorch.py takes "baseline" and "smoke", got {arg!r}.')
  config = base.get_base_config()
  model = config.model
  model.num_classes = 19  # 20 outputs, background at index 0.
  model.rock.extra_task_convs = True
  model.rock.post_fusion_bn_relu = True
  model.rock.conv_bias = True
  model.rock.bn_momentum = 0.99  # PyTorch momentum 0.01 in the block and the SSD extras.
  ssd = model.ssd
  # (mid, out) or (mid, out, kernel, stride, padding) of each extra layer.
  ssd.extra_layers = (
    (1024, 1024),
    (256, 512),
    (128, 256),
    (128, 256, 3, 1, 0),
    (128, 256, (2, 3), 1, 0),
  )
  ssd.extras_conv_bias = True
  ssd.bn_momentum = 0.99
  ssd.scales = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
  ssd.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
  # (step_h, step_w) in pixels; 213 is the reference's, not 640 / 3.
  ssd.steps = ((16, 16), (32, 32), (60, 64), (120, 128), (240, 213), (480, 640))
  config.eval.clip_before_nms = False

  if 'baseline' in options:
    model.variant = 'baseline'
    model.tasks = ''
  if smoke:
    config = _smoke(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Same structure, narrow, at 64x80."""
  config = base.smoke(config)
  config.data.image_size = (64, 80)  # conv5 4x5, as the reference's 4th map.
  model = config.model
  # Maps 4x5, 4x5, 4x5, 4x5, 2x3, 1x1: the reference's last two unpadded layers.
  model.ssd.extra_layers = (
    (8, 16, 3, 1, 1),
    (8, 16, 3, 1, 1),
    (8, 16, 3, 1, 1),
    (8, 16, 3, 1, 0),
    (8, 16, (2, 3), 1, 0),
  )
  model.ssd.scales = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
  model.ssd.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
  model.ssd.steps = ((16, 16), (16, 16), (16, 16), (16, 16), (32, 27), (64, 80))
  return config
