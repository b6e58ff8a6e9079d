"""Start-up checks: what a run needs, checked before any model or data pipeline is built.

Each failure is a `StartupError` whose message is one line saying what is wrong and
how to go on; `rock_jax.main` prints it as `error: ...` and exits with status 1.

- ImageNet initialisation (`check_backbone_init`): the paper starts every backbone
  from ImageNet weights, and the configs keep the backbone's BatchNorm statistics
  frozen (as the reference does), which only makes sense with imported statistics. A
  training run of such a config refuses to start without `config.init_backbone` (a
  directory written by `rock_jax.tools.import_weights`), unless it resumes its own
  workdir or starts from another run (`config.init_from`). `init_backbone=scratch` is
  the explicit opt-out: the backbone starts from scratch and its BatchNorm statistics
  are trained (`model.backbone.freeze_bn_stats` is switched off).
- Data (`check_data`): a dataset that is neither prepared in `data.data_dir` nor has its
  original files in the manual dir fails here, naming the missing files, the folders
  looked in and the download addresses, instead of deep inside TFDS after the model
  is built.
"""

import importlib
import os

import ml_collections
from absl import logging
from etils import epath

# `--config.init_backbone=scratch`: train the backbone from scratch, BatchNorm unfrozen.
SCRATCH = 'scratch'


class StartupError(ValueError):
  """A run that cannot start as configured; the message is one line."""


def absolute(path: str) -> str:
  """Makes a local path absolute (Orbax rejects relative ones); URLs (`gs://`) stay."""
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def needs_imagenet(config: ml_collections.ConfigDict) -> bool:
  """Whether the config's backbone must start from ImageNet weights.

  True when the backbone's BatchNorm statistics are frozen (fresh statistics would
  stay at their initial values) or the paper starts this experiment from ImageNet
  (`model.backbone.imagenet_init`).
  """
  backbone = config.model.backbone
  return bool(backbone.get('freeze_bn_stats', False) or backbone.get('imagenet_init', False))


def _has_checkpoint(workdir: str | os.PathLike) -> bool:
  folder = epath.Path(workdir) / 'checkpoints'
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check_backbone_init(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """Refuses a training run that would silently start the backbone from scratch.

  Args:
    config: the experiment config.
    workdir: the run's workdir (a run that resumes needs no initialisation).

  Returns:
    The config, with relative `init_from` / `init_backbone` made absolute and, for
    `init_backbone=scratch`, `model.backbone.freeze_bn_stats` off.

  Raises:
    StartupError: no ImageNet weights for a config that needs them, or an
      `init_backbone` / `init_from` directory that does not exist.
  """
  config = config.copy_and_resolve_references()
  for field in ('init_from', 'init_backbone'):
    value = config.get(field)
    if value and value != SCRATCH:
      config[field] = absolute(value)
      if '://' not in value and not os.path.isdir(config[field]):
        raise StartupError(f'--config.{field}={value}: no such directory ({config[field]}).')
  if config.get('init_backbone') == SCRATCH:
    if config.model.backbone.get('freeze_bn_stats'):
      logging.warning('init_backbone=scratch: training the backbone BatchNorm statistics.')
    config.model.backbone.freeze_bn_stats = False
    return config
  if (
    config.get('mode', 'train') != 'train' or config.get('init_from') or config.get('init_backbone')
  ):
    return config
  if _has_checkpoint(workdir) or not needs_imagenet(config):
    return config
  depth, layout = config.model.backbone.depth, config.model.backbone.layout
  raise StartupError(
    f'this config starts the ResNet-{depth} backbone (layout {layout}) from ImageNet weights '
    '(the paper does; its BatchNorm statistics stay frozen), but config.init_backbone is '
    'not set: pass --config.init_backbone=DIR (a folder written by python -m '
    'rock_jax.tools.import_weights, see README "ImageNet weights"), or '
    f'--config.init_backbone={SCRATCH} to train from scratch with BatchNorm statistics '
    'trained.'
  )


def check_data(config: ml_collections.ConfigDict) -> None:
  """Fails fast when a dataset of the run is neither prepared nor buildable.

  Checks the main dataset and every mixture entry: a builder that is prepared in
  `data.data_dir` is fine; otherwise a builder that reads original files
  (`MANUAL_FILES` in its module) needs them in the manual dir.

  Raises:
    StartupError: naming the dataset, the missing files, the folders looked in and
      where to download the files.
  """
  import tensorflow_datasets as tfds  # Only here: TFDS pulls in TensorFlow.

  data = config.data
  sources = [(data.name, data.get('builder_config'))]
  sources += [(name, builder_config) for name, builder_config, _ in data.get('mixture', ())]
  for name, builder_config in sources:
    try:
      module = importlib.import_module(f'rock_jax.datasets.{name}')
    except ModuleNotFoundError:
      continue  # Registered elsewhere (e.g. by a test): the input pipeline checks it.
    required = getattr(module, 'MANUAL_FILES', ())
    if not required:
      continue  # Generated locally (synthetic rooms).
    registered = getattr(module, 'BUILDER_NAME', name)
    full = f'{registered}/{builder_config}' if builder_config else registered
    data_dir = data.get('data_dir')
    verbosity = logging.get_verbosity()
    # TFDS warns "Variant folder ... has no dataset_info.json" for a dataset not built
    # yet: that is what this check reports, in its own words.
    logging.set_verbosity(logging.ERROR)
    try:
      builder = tfds.builder(full, data_dir=absolute(data_dir) if data_dir else None)
      prepared = builder.is_prepared()
    finally:
      logging.set_verbosity(verbosity)
    if prepared:
      continue
    manual_dir = data.get('manual_dir')
    manual = epath.Path(
      absolute(manual_dir) if manual_dir else builder.data_dir_root / 'downloads' / 'manual'
    )
    missing = [f for f in required if not (manual / f).exists()]
    if not missing:
      continue
    urls = '; '.join(getattr(module, 'DOWNLOAD_URLS', ()))
    raise StartupError(
      f'dataset {full} is not prepared in {builder.data_dir_root} and its original files '
      f'are missing from the manual dir {manual}: {", ".join(missing)}. Download from {urls}, '
      'then pass --config.data.manual_dir=DIR (or --config.data.data_dir=DIR where it is '
      'prepared already).'
    )


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """All start-up checks (data, then weights); returns the config to run (see `check_backbone_init`)."""
  config = config.copy_and_resolve_references()
  for field in ('data_dir', 'manual_dir'):
    if config.data.get(field):
      config.data[field] = absolute(config.data[field])
  # Data first: a documented command with a placeholder weights folder still says what
  # data is missing.
  check_data(config)
  return check_backbone_init(config, workdir)
