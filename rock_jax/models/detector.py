"""The assembled detector: ResNet backbone, optional ROCK / flat-MTL block, SSD head.

Variants (`config.model.variant`, paper Table 1):
- 'baseline': SSD on conv5, no auxiliary outputs;
- 'flat_mtl': 1x1 conv heads on conv5 per task, SSD on the unchanged conv5;
- 'rock_no_fusion': ROCK encoder and predictor, SSD on the unchanged conv5;
- 'rock': the full block, SSD on the refined conv5 (`model.rock.fusion` 'add' or 'product').

Parameter tree top level: `backbone`, `rock` (or `flat_mtl`), `ssd`. Class-dependent
parameters (for fine-tuning on new classes) are `ssd/cls<k>`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from rock_jax import tasks as tasks_lib
from rock_jax.models import layers, resnet, rock, ssd

VARIANTS = (tasks_lib.BASELINE, 'flat_mtl', 'rock_no_fusion', 'rock')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class Detector(nn.Module):
  """SSD detector with the paper's auxiliary-task variants.

  Attributes:
    config: The `config.model` ConfigDict.
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool, with_aux: bool = True) -> dict[str, Any]:
    """Runs the detector.

    Args:
      images: Normalised float32 images `[B, H, W, 3]`.
      train: Training mode (BatchNorm statistics; the backbone may keep them frozen).
      with_aux: Return the auxiliary predictions; False skips the ROCK predictor's
        outputs (the block itself still runs for 'rock', whose fusion the detector needs).

    Returns:
      A dict with 'boxes' `[B, A, 4]`, 'logits' `[B, A, num_classes + 1]` and 'aux'
      (per-task predictions, `{}` for 'baseline' or `with_aux=False`), all float32.
    """
    config = self.config
    if config.variant not in VARIANTS:
      raise ValueError(f'config.model.variant must be one of {VARIANTS}, got {config.variant!r}.')
    if config.dtype not in DTYPES:
      raise ValueError(f'config.model.dtype must be one of {tuple(DTYPES)}, got {config.dtype!r}.')
    dtype = DTYPES[config.dtype]
    tasks = tasks_lib.active(config)
    # Configs saved before the option existed compute 1x1 convs the default way.
    conv_1x1 = config.get('conv_1x1', 'auto')
    layers.use_dot(conv_1x1)  # Validates the option.

    x = resnet.from_config(config.backbone, dtype, conv_1x1)(images, train=train)
    aux = {}
    if config.variant == 'flat_mtl':
      _, aux = rock.FlatMTL(tasks, dtype=dtype, conv_1x1=conv_1x1, name='flat_mtl')(x, train=train)
    elif config.variant in ('rock', 'rock_no_fusion'):
      block = rock.ROCK(
        tasks,
        trunk_width=config.rock.trunk_width,
        fusion=config.rock.fusion if config.variant == 'rock' else 'none',
        extra_task_convs=config.rock.extra_task_convs,
        post_fusion_bn_relu=config.rock.post_fusion_bn_relu,
        conv_bias=config.rock.get('conv_bias', False),
        bn_momentum=config.rock.get('bn_momentum') or config.backbone.bn_momentum,
        dtype=dtype,
        conv_1x1=conv_1x1,
        name='rock',
      )
      x, aux = block(x, train=train)
    boxes, logits = ssd.SSDHead(
      num_classes=config.num_classes,
      # Nested tuples (a JSON-restored config has lists): module attributes must hash.
      extra_layers=tuple(
        tuple(tuple(v) if isinstance(v, list | tuple) else v for v in layer)
        for layer in config.ssd.extra_layers
      ),
      aspect_ratios=tuple(tuple(ratios) for ratios in config.ssd.aspect_ratios),
      prior_pi=config.ssd.prior_pi,
      extras_bn=config.ssd.get('extras_bn', True),
      extras_conv_bias=config.ssd.get('extras_conv_bias', False),
      bn_momentum=config.ssd.get('bn_momentum') or config.backbone.bn_momentum,
      dtype=dtype,
      conv_1x1=conv_1x1,
      name='ssd',
    )(x, train=train)
    aux = {name: value.astype(jnp.float32) for name, value in aux.items()} if with_aux else {}
    return {'boxes': boxes, 'logits': logits, 'aux': aux}


def build_model(config: ml_collections.ConfigDict) -> Detector:
  """Builds the detector of an experiment config.

  Args:
    config: The whole experiment ConfigDict (uses `config.model`).

  Returns:
    An unbound `Detector`; `model.init(rng, images, train=False)` gives
    `{'params', 'batch_stats'}`.
  """
  return Detector(config.model)
