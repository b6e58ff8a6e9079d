"""Orbax checkpoints: save, resume, and partial initialisation from other runs.

Layout: `WORKDIR/checkpoints/<step>/{state,config,metrics}`. `state` is the whole
`TrainState` (step, params, batch_stats, optimizer state) written with
`ocp.args.StandardSave`; `config` is the run's config as JSON so tools can rebuild
the model; `metrics` holds the validation metrics of the steps that were evaluated.
The manager keeps the last `train.keep_checkpoints` steps plus the best one by
validation mAP@0.5.

Where the initial state comes from (`restore_or_initialize`), first match wins:
1. the run's own workdir (resume: the whole state, bitwise);
2. `config.init_from`: parameters and BatchNorm statistics of another run's
   checkpoint (e.g. MLT pretraining), merged into a fresh init; leaves whose path
   matches a regex of `config.init_exclude` keep their fresh values (each one is
   logged); any other mismatch is an error;
3. `config.init_backbone`: ImageNet weights converted by
   `rock_jax.tools.import_weights` for the backbone;
4. scratch.

Damaged checkpoints (`restore_latest_good`, `load_checkpoint`): a step whose files
are missing or truncated (an interrupted save, a half-deleted folder, a bad disk)
or whose values are not finite is skipped with one warning line that names it
and says why, and the newest step that restores cleanly is used. Nothing is ever
deleted: the trainer moves a skipped step aside to `WORKDIR/checkpoints.damaged/`
(so that it does not shadow the steps saved after the resume); read-only users
(`detect`, `mode=eval`) leave it in place and say so. A checkpoint whose shapes do
not fit the model (another width, class count, variant or task set) is not
damaged: it fails at once in one line naming the first leaf that differs.
"""

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

BEST_METRIC = 'mAP@0.5'
STATE = 'state'
CONFIG = 'config'
DAMAGED = 'checkpoints.damaged'
# Files every complete step folder has (Orbax's PyTree metadata, OCDBT manifest, the
# JSON config); one missing means an interrupted save or a half-deleted folder.
REQUIRED_FILES = (f'{STATE}/_METADATA', f'{STATE}/manifest.ocdbt', f'{CONFIG}/metadata')
# Config fields that may change on resume without changing what is trained.
RESUME_SAFE_FIELDS = (
  'mode',
  'init_from',
  'init_exclude',
  'init_backbone',
  'data.data_dir',
  'train.num_steps',
  'train.eval_every',
  'train.log_every',
  'train.checkpoint_every',
  'train.keep_checkpoints',
  'train.async_checkpoints',
  'eval.',
)


class CheckpointError(Exception):
  """A checkpoint cannot be used (damaged, or for another model); one-line message."""


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
  """Returns the checkpoint directory of a workdir."""
  return epath.Path(workdir) / 'checkpoints'


def _best_metric(metrics: dict[str, Any]) -> float:
  """Ranks checkpoints by validation mAP@0.5 (None, for an empty eval, ranks last)."""
  value = metrics.get(BEST_METRIC)
  return float('-inf') if value is None else float(value)


def create_manager(
  directory: str | epath.Path,
  *,
  keep: int = 3,
  async_save: bool = True,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """Creates the checkpoint manager: last `keep` steps plus the best by mAP@0.5.

  Args:
    directory: where the step folders live (`checkpoint_dir(workdir)`).
    keep: how many of the latest checkpoints to keep.
    async_save: write in a background thread (the device-to-host copy is still
      done before `save` returns, so a donated state can be reused at once).
    read_only: open an existing directory without creating or deleting anything.

  Returns:
    An `ocp.CheckpointManager` with items `state` and `config`.
  """
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, enable_async_checkpointing=False)
  else:
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        ocp.checkpoint_managers.LatestN(n=max(1, keep)),
        # Steps saved without metrics are covered by LatestN alone.
        ocp.checkpoint_managers.BestN(
          get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False
        ),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      # best_fn makes the manager write the metrics next to each step, so the best
      # checkpoint survives a restart.
      best_fn=_best_metric,
      best_mode='max',
      create=True,
      # A run killed during a save leaves a temporary folder; drop it on restart.
      cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save,
    )
  return ocp.CheckpointManager(directory, options=options, item_names=(STATE, CONFIG))


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  config: ml_collections.ConfigDict,
  *,
  metrics: dict[str, Any] | None = None,
) -> None:
  """Saves `state` at `step` (with the run's config and optional validation metrics).

  Args:
    manager: from `create_manager`.
    step: the number of optimizer steps done.
    state: the `TrainState`.
    config: the run's config, written as JSON.
    metrics: validation metrics for best-checkpoint tracking (JSON-able floats).
  """
  if step in manager.all_steps():
    return
  config_json = json.loads(config.to_json_best_effort())
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)
    ),
    metrics=_jsonable(metrics) if metrics is not None else None,
    force=True,
  )


def _jsonable(tree: dict[str, Any]) -> dict[str, Any]:
  """Keeps JSON-able scalars (floats, ints, None) of a flat metrics dict."""
  out = {}
  for key, value in tree.items():
    if value is None or isinstance(value, int | float | str):
      out[key] = value
    elif isinstance(value, np.generic | np.ndarray) and np.size(value) == 1:
      out[key] = float(value)
  return out


def restore_state(
  manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> Any:
  """Restores the whole train state into an abstract (sharded) target.

  Args:
    manager: from `create_manager`.
    abstract_state: `jax.eval_shape` of the state, each leaf a
      `jax.ShapeDtypeStruct` with its target sharding.
    step: which step; the latest by default.

  Returns:
    The restored state, with the structure and shardings of `abstract_state`.
  """
  step = manager.latest_step() if step is None else step
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
  )
  return restored[STATE]


def missing_file(step_dir: str | epath.Path) -> str | None:
  """The first of `REQUIRED_FILES` missing from a step folder, or None when complete."""
  step_dir = epath.Path(step_dir)
  return next((f for f in REQUIRED_FILES if not (step_dir / f).exists()), None)


def _step_folders(directory: epath.Path) -> list[int]:
  """Every step folder name of a checkpoint folder, newest first (complete or not)."""
  if not directory.is_dir():
    return []
  return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def resolve_checkpoint(path: str | epath.Path) -> tuple[epath.Path, int]:
  """Finds the checkpoint folder and step that a user-given path names.

  Step folders with a file missing (half deleted, or an interrupted save) are
  skipped when listing.

  Args:
    path: a workdir (uses its latest checkpoint), a `checkpoints` folder (its
      latest step) or one step folder (`.../checkpoints/<step>`).

  Returns:
    (the manager directory, the step).

  Raises:
    FileNotFoundError: when no checkpoint is found there.
    CheckpointError: a step folder named explicitly is incomplete.
  """
  directory, steps, _ = _candidate_steps(path)
  return directory, steps[0]


def _candidate_steps(path: str | epath.Path) -> tuple[epath.Path, list[int], bool]:
  """(manager directory, complete steps newest first, whether `path` named one step)."""
  # Orbax rejects relative paths: a relative one is taken from the current directory.
  path = epath.Path(path if '://' in str(path) else os.path.abspath(path))
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  if path.name.isdigit() and (path / STATE).is_dir():
    missing = missing_file(path)
    if missing:
      raise CheckpointError(
        f'{path}: incomplete checkpoint (no {missing}; an interrupted save or a half-deleted '
        'folder)'
      )
    return path.parent, [int(path.name)], True
  steps = [s for s in _step_folders(path) if missing_file(path / str(s)) is None]
  if not steps:
    raise FileNotFoundError(f'No Orbax checkpoint found at {path}.')
  return path, steps, False


def short_reason(error: BaseException) -> str:
  """One line out of a restore error (TensorStore's JSON spec and tracebacks dropped)."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  text = text.split(' [tensorstore_spec=', 1)[0].split(' [source locations=', 1)[0]
  return text if len(text) <= 300 else text[:297] + '...'


def count_nonfinite(tree: Any) -> tuple[int, int]:
  """(non-finite values, all values) over the floating-point leaves of a pytree."""
  bad = total = 0
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, 'dtype') and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact):
      bad += int(jax.device_get(jax.numpy.sum(~jax.numpy.isfinite(leaf))))
      total += math.prod(leaf.shape)
  return bad, total


def _warn_skipped(directory: epath.Path, step: int, reason: str, where: str) -> None:
  logging.warning('Skipping checkpoint step %d in %s: %s; %s.', step, directory, reason, where)


def best_step(directory: str | epath.Path) -> int | None:
  """The step with the best validation mAP@0.5 in a checkpoints folder (None: no metrics).

  Args:
    directory: a manager directory (`resolve_checkpoint(...)[0]`).
  """
  manager = ocp.CheckpointManager(
    epath.Path(directory),
    options=ocp.CheckpointManagerOptions(
      read_only=True, enable_async_checkpointing=False, best_fn=_best_metric, best_mode='max'
    ),
  )
  try:
    # Orbax writes `<step>/metrics` only for steps saved with validation metrics.
    with_metrics = [
      s for s in manager.all_steps() if (manager.directory / str(s) / 'metrics').exists()
    ]
    return manager.best_step() if with_metrics else None
  finally:
    manager.close()


def select_checkpoint(
  path: str | epath.Path, *, latest: bool = False
) -> tuple[epath.Path, int, str]:
  """The checkpoint a user-given path means for inference: best on validation by default.

  Args:
    path: a workdir, its `checkpoints` folder (the best step on validation when
      metrics were saved, else the latest) or one step folder (that step).
    latest: take the latest step instead of the best one.

  Returns:
    (the manager directory, the step, 'best', 'latest' or 'given').
  """
  directory, step = resolve_checkpoint(path)
  given = epath.Path(path if '://' in str(path) else os.path.abspath(path))
  if given.name.isdigit() and given.parent == directory:
    return directory, step, 'given'
  if not latest:
    best = best_step(directory)
    if best is not None:
      return directory, best, 'best'
  return directory, step, 'latest'


def load_config(path: str | epath.Path) -> ml_collections.ConfigDict:
  """Reads the config saved with a checkpoint (see `resolve_checkpoint` for `path`).

  The newest step whose config reads cleanly is used (see `load_checkpoint`).
  """
  directory, steps, explicit = _candidate_steps(path)
  for step in steps:
    try:
      return _read_config(directory, step)
    except Exception as e:  # noqa: BLE001 - any read failure means a damaged step.
      if explicit:
        raise CheckpointError(f'{directory / str(step)}: cannot read: {short_reason(e)}') from e
      _warn_skipped(directory, step, short_reason(e), 'left in place')
  raise CheckpointError(f'{directory}: no checkpoint step can be read')


def _read_config(directory: epath.Path, step: int) -> ml_collections.ConfigDict:
  manager = _read_only_manager(directory, {CONFIG: ocp.JsonCheckpointHandler()})
  try:
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return ml_collections.ConfigDict(restored[CONFIG])


def _read_only_manager(
  directory: epath.Path, handlers: dict[str, ocp.CheckpointHandler]
) -> ocp.CheckpointManager:
  """Opens a checkpoint folder read-only with the given item handlers."""
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(read_only=True, enable_async_checkpointing=False),
    item_handlers=handlers,
  )


def load_variables(path: str | epath.Path) -> dict[str, Any]:
  """Loads `{'params', 'batch_stats'}` of a checkpoint as host numpy arrays.

  Only those two entries of the saved state are read (the optimizer state is
  skipped), so a checkpoint of a model with a different structure loads too.

  Args:
    path: see `resolve_checkpoint`.

  Returns:
    The variables, as nested dicts of numpy arrays.
  """
  return load_checkpoint(path)[2]


def load_checkpoint(path: str | epath.Path) -> tuple[epath.Path, int, dict[str, Any]]:
  """Loads the variables of the newest step at `path` that restores cleanly.

  A step that fails to read (missing or truncated files) or holds non-finite
  values is skipped with one warning line and left in place. A step folder named
  explicitly is not replaced by another: it loads or raises.

  Args:
    path: see `resolve_checkpoint`.

  Returns:
    (the manager directory, the step, `{'params', 'batch_stats'}` as numpy).

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    CheckpointError: no step restores cleanly (or the named one does not).
  """
  directory, steps, explicit = _candidate_steps(path)
  for step in steps:
    try:
      variables = _read_variables(directory, step)
      bad, total = count_nonfinite(variables)
      if bad:
        raise CheckpointError(f'{bad} of {total} values are not finite')
    except Exception as e:  # noqa: BLE001 - any read failure means a damaged step.
      if explicit:
        raise CheckpointError(f'{directory / str(step)}: cannot restore: {short_reason(e)}') from e
      _warn_skipped(directory, step, short_reason(e), 'left in place')
      continue
    logging.info('Loaded params/batch_stats of %s (step %d).', directory, step)
    return directory, step, variables
  raise CheckpointError(f'{directory}: no checkpoint step restores cleanly')


def _read_variables(directory: epath.Path, step: int) -> dict[str, Any]:
  """`{'params', 'batch_stats'}` of one step, as numpy.

  The PyTree handler reads what StandardSave wrote and supports partial restores.
  """
  manager = _read_only_manager(
    directory, {STATE: ocp.PyTreeCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}
  )
  try:
    metadata = manager.item_metadata(step)[STATE]
    tree = metadata.tree if hasattr(metadata, 'tree') else metadata
    wanted = {k: tree[k] for k in ('params', 'batch_stats') if k in tree}
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
      ),
    )[STATE]
  finally:
    manager.close()
  return dict(restored)


def _leaf_name(path: tuple[Any, ...]) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _saved_shapes(directory: epath.Path, step: int) -> dict[str, tuple[int, ...]]:
  """Leaf name -> shape of a step's saved state, from its metadata (no data read)."""
  manager = _read_only_manager(directory, {STATE: ocp.PyTreeCheckpointHandler()})
  try:
    metadata = manager.item_metadata(step)[STATE]
  finally:
    manager.close()
  tree = metadata.tree if hasattr(metadata, 'tree') else metadata
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(p): tuple(getattr(m, 'shape', ())) for p, m in flat}


def check_fits(saved: dict[str, tuple[int, ...]], abstract_state: Any, where: str) -> None:
  """Raises `CheckpointError` naming the first leaf whose shape (or presence) differs.

  Parameters come first, then BatchNorm statistics, then the rest, so that the
  leaf named is the one the changed config field made.
  """
  flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  order = {'params': 0, 'batch_stats': 1}
  flat = sorted(flat, key=lambda item: order.get(_leaf_name(item[0][:1]), 2))
  model = {_leaf_name(p): tuple(x.shape) for p, x in flat}
  for name, shape in model.items():
    if name not in saved:
      problem = f'{name} is in the model but not in the checkpoint'
    elif saved[name] != shape:
      problem = f'{name} has shape {saved[name]} in the checkpoint, {shape} in the model'
    else:
      continue
    raise CheckpointError(
      f'{where} was saved for another model ({problem}); the config changed the model '
      '(width, classes, variant or tasks?): use a new workdir, or init_from to fine-tune'
    )
  extra = next((n for n in saved if n not in model), None)
  if extra is not None:
    raise CheckpointError(
      f'{where} was saved for another model ({extra} is in the checkpoint but not in the '
      'model): use a new workdir, or init_from to fine-tune'
    )


def changed_fields(
  saved: ml_collections.ConfigDict | dict[str, Any], config: ml_collections.ConfigDict
) -> list[str]:
  """`field: saved -> now` for each config field that differs from the saved config.

  Fields in `RESUME_SAFE_FIELDS` (step counts, logging, paths) and fields present
  in only one of the two (added or removed by a code change) are not listed.
  """
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(
    json.loads(json.dumps(dict(saved) if not hasattr(saved, 'to_dict') else saved.to_dict()))
  )
  out = []
  for name, value in now.items():
    if name not in before or before[name] == value:
      continue
    dotted = name.replace('/', '.')
    if any(dotted == f or (f.endswith('.') and dotted.startswith(f)) for f in RESUME_SAFE_FIELDS):
      continue
    out.append(f'{dotted}: {before[name]!r} -> {value!r}')
  return out


def set_aside(directory: epath.Path, step: int) -> epath.Path:
  """Moves a damaged step folder to `<workdir>/checkpoints.damaged/<step>[.k]`."""
  target_dir = directory.parent / DAMAGED
  target_dir.mkdir(parents=True, exist_ok=True)
  target = target_dir / str(step)
  k = 1
  while target.exists():
    target, k = target_dir / f'{step}.{k}', k + 1
  (directory / str(step)).rename(target)
  return target


def restore_latest_good(
  manager: ocp.CheckpointManager,
  abstract_state: Any,
  *,
  config: ml_collections.ConfigDict | None = None,
  accept_config_changes: bool = False,
) -> tuple[Any, int] | tuple[None, None]:
  """Restores the newest step of a run's own workdir that restores cleanly.

  Each step that cannot be restored (a missing or truncated file) or holds
  non-finite values is moved aside (`set_aside`) with one warning line; steps
  whose shapes do not fit `abstract_state` raise at once, and so does a changed
  config (see `changed_fields`) unless `accept_config_changes`.

  Args:
    manager: the run's own manager.
    abstract_state: the target state (shapes and shardings).
    config: the run's config, compared with the one saved in the checkpoint.
    accept_config_changes: resume despite changed fields (they are logged).

  Returns:
    (state, step), or (None, None) when no step restores.

  Raises:
    CheckpointError: a checkpoint for another model, or an unaccepted config change.
  """
  directory = epath.Path(manager.directory)
  moved = False
  for step in _step_folders(directory):
    where = f'checkpoint step {step} in {directory}'
    state = None
    try:
      missing = missing_file(directory / str(step))
      if missing:
        raise CheckpointError(f'incomplete (no {missing})')
      saved = _saved_shapes(directory, step)
    except Exception as e:  # noqa: BLE001 - any read failure means a damaged step.
      reason = short_reason(e)
    else:
      check_fits(saved, abstract_state, where)
      if config is not None:
        _check_config(directory, step, config, accept_config_changes)
      try:
        state = restore_state(manager, abstract_state, step)
        bad, total = count_nonfinite(state)
        reason = f'{bad} of {total} values are not finite' if bad else None
      except Exception as e:  # noqa: BLE001
        reason = short_reason(e)
    if reason is None:
      if moved:
        manager.reload()
      return state, step
    if jax.process_index() == 0:
      target = set_aside(directory, step)
      _warn_skipped(directory, step, reason, f'moved to {target}')
    moved = True
    _sync('rock_jax_checkpoint_set_aside')
  if moved:
    manager.reload()
  return None, None


def _check_config(
  directory: epath.Path, step: int, config: ml_collections.ConfigDict, accept: bool
) -> None:
  """Fails (or, when accepted, warns) on config fields changed since the checkpoint."""
  try:
    saved = _read_config(directory, step)
  except Exception:  # noqa: BLE001 - no readable config: only the shapes can be checked.
    return
  changes = changed_fields(saved, config)
  if not changes:
    return
  listed = '; '.join(changes)
  if accept:
    logging.warning('Resuming step %d with changed config fields: %s.', step, listed)
    return
  raise CheckpointError(
    f'the config differs from the one saved with checkpoint step {step} in {directory}: '
    f'{listed}. Rerun with --accept_config_changes to resume with them, or use a new workdir'
  )


def _sync(name: str) -> None:
  """Waits for every process (after process 0 moved folders), on several hosts only."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(name)


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """Flattens nested dicts into `{'a/b/c': leaf}`."""
  out = {}
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}/'))
  else:
    out[prefix[:-1]] = tree
  return out


def merge_variables(
  fresh: dict[str, Any], loaded: dict[str, Any], exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
  """Merges loaded variables into a fresh init, leaf by leaf.

  A fresh leaf whose path (`params/ssd/...`) matches a regex of `exclude` keeps
  its fresh value; every other fresh leaf takes the loaded value, which must
  exist with the same shape. A loaded leaf with no counterpart must be excluded
  too. Each kept-fresh or dropped leaf is logged.

  Args:
    fresh: `{'params': ..., 'batch_stats': ...}` of the new model.
    loaded: the same from a checkpoint (`load_variables`).
    exclude: regexes (`re.search`) of paths that must not load.

  Returns:
    The merged variables, with the structure of `fresh`.

  Raises:
    ValueError: naming every path that neither loads nor is excluded.
  """
  patterns = [re.compile(p) for p in exclude]
  is_excluded = lambda path: any(p.search(path) for p in patterns)
  fresh_flat = _flatten(fresh)
  loaded_flat = _flatten(loaded)
  errors: list[str] = []
  kept: list[str] = []
  dropped: list[str] = []
  for path, value in fresh_flat.items():
    if is_excluded(path):
      kept.append(path)
    elif path not in loaded_flat:
      errors.append(f'{path}: missing from the checkpoint')
    elif tuple(np.shape(loaded_flat[path])) != tuple(value.shape):
      errors.append(
        f'{path}: checkpoint shape {tuple(np.shape(loaded_flat[path]))} != model shape '
        f'{tuple(value.shape)}'
      )
  for path in loaded_flat:
    if path not in fresh_flat:
      if is_excluded(path):
        dropped.append(path)
      else:
        errors.append(f'{path}: in the checkpoint but not in the model')
  if errors:
    raise ValueError(
      'Cannot initialise from the checkpoint; add a regex to config.init_exclude for what '
      'must keep its fresh init:\n  ' + '\n  '.join(errors)
    )
  for path in kept:
    logging.info('init_from: keeping fresh init for %s', path)
  for path in dropped:
    logging.info('init_from: dropping checkpoint leaf %s (not in the model)', path)

  kept_set = set(kept)

  def pick(path, value):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    if name in kept_set:
      return value
    return np.asarray(loaded_flat[name], dtype=value.dtype)

  return jax.tree_util.tree_map_with_path(pick, fresh)


def merge_backbone(fresh: dict[str, Any], backbone: dict[str, Any]) -> dict[str, Any]:
  """Replaces the backbone variables of a fresh init with imported ImageNet weights.

  Args:
    fresh: `{'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}`.
    backbone: the importer's output, either `{'params': ..., 'batch_stats': ...}`
      of the backbone alone or already nested under `'backbone'`.

  Returns:
    The variables with the backbone taken from `backbone`.

  Raises:
    ValueError: if a backbone leaf is missing or has another shape.
  """
  loaded = {}
  for collection in ('params', 'batch_stats'):
    if collection not in fresh or 'backbone' not in fresh[collection]:
      continue
    tree = backbone.get(collection, {})
    tree = tree.get('backbone', tree) if hasattr(tree, 'get') else tree
    loaded[collection] = {'backbone': tree}
  others = {c: {k: v for k, v in fresh[c].items() if k != 'backbone'} for c in fresh if c in loaded}
  # Everything but the backbone keeps its fresh init: only backbone paths may differ.
  merged = merge_variables(
    {c: {'backbone': fresh[c]['backbone']} for c in loaded},
    loaded,
  )
  out = dict(fresh)
  for c in loaded:
    out[c] = {**others[c], 'backbone': merged[c]['backbone']}
  return out


def save_backbone(variables: Mapping[str, Any], directory: str | os.PathLike) -> None:
  """Writes backbone variables as an Orbax checkpoint: what `config.init_backbone` reads.

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` of a `models.resnet.ResNet`.
    directory: Output directory (must not exist yet).
  """
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(directory), dict(variables))
    checkpointer.wait_until_finished()


def load_backbone(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads backbone variables written by `save_backbone` (`config.init_backbone`).

  Returns:
    `{'params': ..., 'batch_stats': ...}` pytree of arrays, to be placed under the
    detector's `backbone` entries (`merge_backbone`).
  """
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.abspath(directory))


def restore_or_initialize(
  config: ml_collections.ConfigDict,
  manager: ocp.CheckpointManager,
  *,
  init_state: Callable[[], Any],
  abstract_state: Any,
  with_variables: Callable[[Any, dict[str, Any]], Any],
  accept_config_changes: bool = False,
) -> tuple[Any, str]:
  """Returns the initial train state following the resume order of the module doc.

  Args:
    config: the experiment config (`init_from`, `init_exclude`, `init_backbone`).
    manager: the run's own checkpoint manager.
    init_state: builds a fresh (sharded) state.
    abstract_state: its `jax.eval_shape`, with shardings, for restoring.
    with_variables: `(state, {'params', 'batch_stats'}) -> state` puts merged
      variables into a fresh state (placing them with the state's shardings).
    accept_config_changes: resume even when config fields changed (see
      `restore_latest_good`).

  Returns:
    (state, a short description of where it came from).
  """
  state, step = restore_latest_good(
    manager, abstract_state, config=config, accept_config_changes=accept_config_changes
  )
  if state is not None:
    logging.info('Resuming from %s, step %d.', manager.directory, step)
    return state, f'resumed at step {step}'
  state = init_state()
  fresh = {'params': state.params, 'batch_stats': state.batch_stats}
  if config.get('init_from'):
    loaded = load_variables(config.init_from)
    merged = merge_variables(jax.device_get(fresh), loaded, tuple(config.get('init_exclude', ())))
    return with_variables(state, merged), f'initialised from {config.init_from}'
  # 'scratch' is the explicit opt-out of ImageNet initialisation (rock_jax.preflight).
  if config.get('init_backbone') and config.init_backbone != 'scratch':
    merged = merge_backbone(jax.device_get(fresh), load_backbone(config.init_backbone))
    return with_variables(state, merged), f'backbone from {config.init_backbone}'
  return state, 'initialised from scratch'
