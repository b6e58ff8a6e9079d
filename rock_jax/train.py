"""Training: a pure, data-parallel train step and the train-and-evaluate loop.

One jitted step `(state, batch, rng) -> (state, metrics)` runs on a 1-D
`('data',)` mesh: the batch is sharded along it, the state is replicated, and XLA
inserts the gradient all-reduce (BatchNorm statistics over a sharded batch are
already global under jit). The same code runs on one CPU, simulated CPU devices,
one GPU or a multi-host pod; each host feeds its own slice of the global batch
through `jax.make_array_from_process_local_data`.

What the run reports (console lines, TensorBoard, `config.json`, `metrics.jsonl`,
`eval/<step>/`) is `rock_jax.reporting`'s; this loop only says when.

Resume is exact: the step's random key is `fold_in(base_key, step)` and the input
pipeline restarts at the restored step, so an interrupted and resumed run ends
with the same parameters as an uninterrupted one.
"""

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rock_jax import (
  checkpoints,
  eval_loop,
  inference,
  input_pipeline,
  losses,
  optim,
  preflight,
  reporting,
  validate,
  weighting,
)
from rock_jax import tasks as tasks_lib
from rock_jax.models import detector

# Batch entries the train step needs besides the per-task ones.
_TRAIN_KEYS = ('image', 'box_targets', 'cls_targets')


class TrainState(train_state.TrainState):
  """Flax train state plus the BatchNorm statistics and the loss weighting's state."""

  batch_stats: Any = None
  weighting: Any = None  # `rock_jax.weighting.init_state`: {} for the fixed weights.

  @property
  def variables(self) -> dict[str, Any]:
    """The model's variables `{'params', 'batch_stats'}` (what `model.apply` takes)."""
    return {'params': self.params, 'batch_stats': self.batch_stats}


class NonFiniteLossError(FloatingPointError):
  """Raised when a step produces a non-finite loss or gradient."""


def create_mesh(global_batch_size: int) -> jax.sharding.Mesh:
  """Creates the 1-D `('data',)` mesh over the devices.

  On a single host, when the global batch does not divide over all devices,
  the mesh uses the largest device count that divides it (and says so): this
  keeps the CPU smoke configs (batch 2) runnable on machines with more devices.

  Args:
    global_batch_size: `config.train.batch_size`.

  Returns:
    The mesh (axis type Auto, set explicitly).

  Raises:
    ValueError: on several hosts when the batch does not divide over the devices.
  """
  count = jax.device_count()
  if global_batch_size % count:
    if jax.process_count() > 1:
      raise ValueError(
        f'The global batch {global_batch_size} must be a multiple of the {count} devices.'
      )
    count = max(n for n in range(1, count + 1) if global_batch_size % n == 0)
    logging.warning(
      'Batch %d does not divide over %d devices: using %d of them.',
      global_batch_size,
      jax.device_count(),
      count,
    )
  # Auto (named explicitly): the compiler propagates the batch sharding through the
  # model, so model and loss code stay free of sharding annotations (Explicit mode
  # would need an `out_sharding` on every reshape that merges axes, as the SSD head's).
  return jax.make_mesh(
    (count,),
    ('data',),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.devices()[:count],
  )


def create_train_state(
  config: ml_collections.ConfigDict, model: detector.Detector, rng: jax.Array
) -> TrainState:
  """Initialises the model variables and the optimizer.

  Args:
    config: the experiment config (`data.image_size`, `train`).
    model: from `detector.build_model(config)`.
    rng: the initialisation key.

  Returns:
    A fresh `TrainState` at step 0.
  """
  height, width = config.data.image_size
  variables = model.init(rng, jnp.zeros((1, height, width, 3), jnp.float32), train=False)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=optim.create_optimizer(config),
    batch_stats=variables.get('batch_stats', {}),
    weighting=weighting.init_state(config),
  )


def train_batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch entries the train step reads (image, targets, per-task data)."""
  return (*_TRAIN_KEYS, *tasks_lib.batch_keys(config))


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """The trainer's jitted functions on a `('data',)` mesh (call them under `jax.set_mesh`).

  Attributes:
    init: `rng -> TrainState`, replicated.
    step: `(state, batch, rng) -> (state, metrics)`: `train_step` with the state
      replicated (and donated on accelerators), the batch sharded over 'data' (`shard_batch`).
    abstract_state: the state's shapes, dtypes and shardings (for restoring).
    replicated: the sharding of the state.
    data: the sharding of a batch.
  """

  init: Callable[[jax.Array], TrainState]
  step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  abstract_state: Any
  replicated: NamedSharding
  data: NamedSharding


def step_functions(
  config: ml_collections.ConfigDict,
  model: detector.Detector,
  mesh: jax.sharding.Mesh,
  *,
  loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]] = losses.multi_loss,
  donate: bool | None = None,
) -> StepFunctions:
  """Jits `create_train_state` and `train_step` for `config` on `mesh`: the one place.

  Args:
    config: the experiment config.
    model: `detector.build_model(config)`.
    mesh: the `('data',)` mesh.
    loss_fn: replaces `losses.multi_loss` (e.g. wrapped in a named scope for a profile).
    donate: donate the state to the step (False keeps the input state alive). By
      default on accelerators, where it saves a copy of the state in device memory,
      and not on a CPU: there XLA copies the donated parameters before updating them
      in place: the ROCK step at 480x640 ran 8 % slower donated on one 2-core machine and
      no faster on another (BENCHMARKS.md).
  """
  if donate is None:
    donate = jax.default_backend() != 'cpu'
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P('data'))
  init = jax.jit(functools.partial(create_train_state, config, model), out_shardings=replicated)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    jax.eval_shape(init, jax.random.key(0)),
  )
  step = jax.jit(
    functools.partial(train_step, model=model, config=config, loss_fn=loss_fn),
    in_shardings=(replicated, data, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,) if donate else (),
  )
  return StepFunctions(init, step, abstract, replicated, data)


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  model: detector.Detector,
  config: ml_collections.ConfigDict,
  loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]] = losses.multi_loss,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch.

  Args:
    state: the replicated train state.
    batch: the sharded batch (`train_batch_keys`).
    rng: this step's key (`fold_in(base, step)`), for stochastic layers.
    model: the detector.
    config: the experiment config.
    loss_fn: `(outputs, batch, *, config) -> (total, parts)`.

  Returns:
    (the new state, scalar metrics: `loss`, `loss/<part>`, `weight/<part>` (the
    weights in force, `rock_jax.weighting`), `grad_norm`, `learning_rate`, and
    `finite` (1 when the loss, every part and the gradient are finite)).
  """
  with_aux = bool(tasks_lib.active(config))

  def compute_loss(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    outputs, updates = model.apply(
      variables,
      batch['image'],
      train=True,
      with_aux=with_aux,
      mutable=['batch_stats'],
      rngs={'dropout': rng},
    )
    total, parts = loss_fn(outputs, batch, config=config)
    return total, (parts, updates['batch_stats'])

  if weighting.method(config) == 'fixed':
    (total, (parts, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params
    )
    weighting_state, extra = state.weighting, weighting.fixed_weight_metrics(config)
  else:
    total, parts, batch_stats, grads, weighting_state, extra = weighting.value_and_grad(
      compute_loss, state.params, state.weighting, rng, config=config
    )
  grad_norm = optax.tree.norm(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats, weighting=weighting_state)
  metrics = {'loss': total, 'grad_norm': grad_norm}
  metrics.update({f'loss/{name}': value for name, value in parts.items()})
  metrics.update(extra)
  finite = jnp.all(jnp.isfinite(jnp.stack([jnp.asarray(v) for v in metrics.values()])))
  metrics['finite'] = finite.astype(jnp.float32)
  metrics['learning_rate'] = optim.create_learning_rate_schedule(config)(state.step)
  return new_state, metrics


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raises `NonFiniteLossError` naming the step and the non-finite loss parts.

  Args:
    step: the step number (state.step after the update).
    metrics: host values of one step's metrics.
  """
  if metrics['finite']:
    return
  bad = [
    k.removeprefix('loss/')
    for k, v in metrics.items()
    if k.startswith('loss') and not np.isfinite(v)
  ]
  what = ', '.join(bad) if bad else 'gradient'
  raise NonFiniteLossError(
    f'Non-finite loss at step {step} in: {what} ('
    + ', '.join(f'{k}={float(v):.4g}' for k, v in metrics.items() if k != 'finite')
    + ').'
  )


@jax.jit
def _nonfinite(tree: Any) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return sum(jnp.sum(~jnp.isfinite(x)) for x in leaves)


def count_nonfinite(state: Any) -> tuple[int, int]:
  """(non-finite values, all values) of the floating-point leaves of a state."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return int(_nonfinite(leaves)), sum(int(np.prod(x.shape)) for x in leaves)


def shard_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from this host's slice of it."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def _is_final_or_every(step: int, every: int, num_steps: int) -> bool:
  return step == num_steps or (every > 0 and step % every == 0)


def _mean_metrics(history: list[dict[str, float]]) -> dict[str, float]:
  keys = [k for k in history[0] if k != 'finite']
  return {k: float(np.mean([h[k] for h in history])) for k in keys}


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  mesh: jax.sharding.Mesh | None = None,
  accept_config_changes: bool = False,
) -> dict[str, Any]:
  """Trains with periodic evaluation and checkpoints, or evaluates (`config.mode`).

  Args:
    config: the experiment config.
    workdir: where checkpoints, TensorBoard events and `results.json` go; a
      workdir with checkpoints is resumed.
    mesh: the `('data',)` mesh to run on; by default `create_mesh` over all devices.
    accept_config_changes: resume a workdir whose checkpoint was saved with other
      config values (learning rate, image size, seed, ...); without it that fails.

  Returns:
    The final evaluation results (also in `workdir/results.json`).
  """
  # Names (mode, variant, tasks, datasets, splits) are checked before any work, then
  # ImageNet weights, paths and data, before anything is built.
  validate.check_config(config)
  config = preflight.run(config, workdir)
  workdir = epath.Path(workdir)
  before = _snapshot(workdir)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
  batch_size = config.train.batch_size if config.mode == 'train' else config.eval.batch_size
  try:
    mesh = create_mesh(batch_size) if mesh is None else mesh
    with jax.set_mesh(mesh):
      if config.mode == 'eval':
        return _evaluate_checkpoint(config, workdir, mesh)
      return _train(config, workdir, mesh, accept_config_changes=accept_config_changes)
  except BaseException:
    _remove_litter(workdir, before)
    raise


def _snapshot(workdir: epath.Path) -> set[str] | None:
  """Names in the workdir before the run (None: the workdir does not exist)."""
  return {p.name for p in workdir.iterdir()} if workdir.is_dir() else None


def _remove_litter(workdir: epath.Path, before: set[str] | None) -> None:
  """After a failed start, removes what the run created when it saved no checkpoint.

  Events files, an empty `checkpoints` folder (and the workdir itself when the run
  made it) go; anything that was there before, and any saved step, stays.
  """
  if jax.process_index() != 0 or not workdir.is_dir():
    return
  if any(p.name.isdigit() for p in checkpoints.checkpoint_dir(workdir).glob('*')):
    return
  for path in workdir.iterdir():
    if before is None or path.name not in before:
      path.rmtree() if path.is_dir() else path.unlink()
  if before is None and not any(workdir.iterdir()):
    workdir.rmdir()


def _evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: epath.Path, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
  """`mode=eval`: evaluates `config.init_from` on `config.data.eval_split`.

  The checkpoint's parameters and BatchNorm statistics must match the model of
  `config` exactly (no `init_exclude`).
  """
  if not config.get('init_from'):
    raise ValueError('config.mode=eval needs config.init_from (a workdir or checkpoint).')
  # The newest step that restores cleanly (a damaged one is skipped and named).
  loaded = inference.load_model(config.init_from, config, latest=True)
  model, step = loaded.model, loaded.step
  replicated = NamedSharding(mesh, P())
  variables = jax.tree.map(lambda x: jax.device_put(x, replicated), loaded.variables)
  evaluator = eval_loop.Evaluator(config, model, mesh)

  logging.info('Evaluating %s on %s.', loaded.path, config.data.eval_split)
  is_writer = jax.process_index() == 0
  if is_writer:
    print(f'config:  {reporting.write_config(config, workdir)}', flush=True)
  writer = reporting.create_writer(workdir, is_writer=is_writer)
  begin = time.perf_counter()
  results = evaluator.run(
    variables, config.data.eval_split, step=step, panels_dir=workdir / 'panels'
  )
  results['checkpoint'] = loaded.path
  _publish_eval(
    results,
    evaluator,
    step=step,
    kind='eval',
    workdir=workdir,
    writer=writer,
    metrics_log=reporting.MetricsLog(workdir, enabled=is_writer),
    seconds=time.perf_counter() - begin,
  )
  writer.close()
  reporting.write_final(results, workdir, evaluator.class_names, config)
  return results


def _publish_eval(
  results: dict[str, Any],
  evaluator: eval_loop.Evaluator,
  *,
  step: int,
  kind: str,
  workdir: epath.Path,
  writer: metric_writers.MetricWriter,
  metrics_log: reporting.MetricsLog,
  seconds: float,
) -> None:
  """Process 0 reports one evaluation: TensorBoard, metrics.jsonl, eval/<step>/, console.

  `kind` is 'eval' for the periodic (validation) evaluations and 'test' for the one
  test-split evaluation at the end: its scalars go under `test/` and its files under
  `eval/test_<step>/`, beside (never over) the validation files of the same step.
  """
  if jax.process_index() != 0:
    return
  writer.write_scalars(step, reporting.scalar_results(results, prefix=f'{kind}/'))
  if evaluator.panels and kind == 'eval':
    writer.write_images(step, reporting.panel_images(evaluator.panels))
  writer.flush()
  metrics_log.write(kind, step, reporting.metric_values(results))
  if evaluator.coco is not None:
    name = str(step) if kind == 'eval' else f'{kind}_{step}'
    reporting.write_eval_files(workdir, name, evaluator.coco, results)
  print(reporting.format_eval(results, seconds), flush=True)


def _train(
  config: ml_collections.ConfigDict,
  workdir: epath.Path,
  mesh: jax.sharding.Mesh,
  *,
  accept_config_changes: bool = False,
) -> dict[str, Any]:
  """The training loop (inside `jax.set_mesh(mesh)`)."""
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P('data'))
  is_writer = jax.process_index() == 0
  writer = reporting.create_writer(workdir, is_writer=is_writer)
  writer.write_hparams(_flat_hparams(config))
  metrics_log = reporting.MetricsLog(workdir, enabled=is_writer)
  if is_writer:
    print(f'config:  {reporting.write_config(config, workdir)}', flush=True)

  model = detector.build_model(config)
  init_rng, step_base_rng = jax.random.split(jax.random.key(config.seed))
  functions = step_functions(config, model, mesh)
  manager = checkpoints.create_manager(
    checkpoints.checkpoint_dir(workdir),
    keep=config.train.keep_checkpoints,
    async_save=config.train.get('async_checkpoints', True),
  )

  def with_variables(state, variables):
    place = lambda x: jax.device_put(x, replicated)
    return state.replace(
      params=jax.tree.map(place, variables['params']),
      batch_stats=jax.tree.map(place, variables.get('batch_stats', {})),
    )

  state, source = checkpoints.restore_or_initialize(
    config,
    manager,
    init_state=lambda: functions.init(init_rng),
    abstract_state=functions.abstract_state,
    with_variables=with_variables,
    accept_config_changes=accept_config_changes,
  )
  start_step = int(jax.device_get(state.step))
  num_steps = int(config.train.num_steps)
  logging.info('Train state %s; steps %d -> %d.', source, start_step, num_steps)
  progress = reporting.Progress(num_steps)

  step_fn = functions.step
  keys = train_batch_keys(config)
  batches: Iterator[dict[str, np.ndarray]] = iter(())
  if start_step < num_steps:
    dataset = input_pipeline.create_train_dataset(
      config,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      start_step=start_step,
    )
    batches = dataset.as_numpy_iterator()

  hooks = []
  if is_writer:
    hooks.append(
      periodic_actions.ReportProgress(
        num_train_steps=num_steps,
        writer=writer,
        every_secs=30.0,
        every_steps=config.train.log_every,
      )
    )
  history: list[dict[str, float]] = []
  # Warns once when a task has no valid target in the first (up to 20) batches.
  coverage = validate.TaskCoverage(tasks_lib.names(config), min(20, num_steps - start_step))
  pending: tuple[int, dict[str, jax.Array]] | None = None
  results: dict[str, Any] = {}
  evaluators: list[eval_loop.Evaluator] = []
  validation: dict[int, dict[str, Any]] = {}  # eval_split results by step.

  # Periodic evaluation and checkpoint selection: on the validation split, never test.
  eval_split = config.data.get('eval_split') or ''
  test_split = config.data.get('test_split') or ''
  if eval_split and eval_split == test_split:
    raise ValueError(
      f'config.data.eval_split and test_split are both {eval_split!r}: the checkpoint must '
      'be chosen without the split it is tested on.'
    )

  def evaluate(
    step: int, panels_dir: epath.Path | None, split: str = eval_split, variables: Any = None
  ) -> dict[str, Any]:
    # Built on first use: it reads the dataset's class names.
    if not evaluators:
      evaluators.append(eval_loop.Evaluator(config, model, mesh))
    target = state.variables if variables is None else variables
    begin = time.perf_counter()
    results = evaluators[0].run(target, split, step=step, panels_dir=panels_dir)
    _publish_eval(
      results,
      evaluators[0],
      step=step,
      kind='eval' if split == eval_split else 'test',
      workdir=workdir,
      writer=writer,
      metrics_log=metrics_log,
      seconds=time.perf_counter() - begin,
    )
    return results

  def settle() -> None:
    """Fetches the previous step's metrics and stops on a non-finite value."""
    nonlocal pending
    if pending is None:
      return
    done_step, device_metrics = pending
    pending = None
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    try:
      check_finite(done_step, host)
    except NonFiniteLossError as error:
      raise NonFiniteLossError(f'{error} Stopped; {last_good()}.') from None
    history.append(host)

  def last_good() -> str:
    """Names the latest checkpoint (every saved state is checked finite first)."""
    manager.wait_until_finished()
    last = manager.latest_step()
    if last is None:
      return f'no checkpoint was saved yet in {manager.directory}'
    return f'the last good checkpoint is step {last} in {manager.directory}'

  def save(step: int, metrics: dict[str, Any] | None) -> None:
    """Saves the state, after checking that every value is finite."""
    bad, total = count_nonfinite(state)
    if bad:
      raise NonFiniteLossError(
        f'The state after step {step} has {bad} of {total} non-finite values (learning '
        f'rate too high?); not saved. Stopped; {last_good()}.'
      )
    checkpoints.save(manager, step, state, config, metrics=metrics)

  try:
    for step in range(start_step + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        waiting = time.perf_counter()
        batch = {k: v for k, v in next(batches).items() if k in keys}
        progress.data(time.perf_counter() - waiting)
        coverage.update(batch)
        rng = jax.random.fold_in(step_base_rng, step - 1)
        state, metrics = step_fn(state, shard_batch(batch, data_sharding), rng)
      # Check the previous step while this one runs: one host sync per step, no stall.
      settle()
      pending = (step, metrics)
      if step == start_step + 1:
        progress.start(step)  # The first step compiled: speed counts from here.
      for hook in hooks:
        hook(step)
      log_now = _is_final_or_every(step, config.train.log_every, num_steps)
      eval_now = bool(eval_split) and _is_final_or_every(step, config.train.eval_every, num_steps)
      save_now = eval_now or _is_final_or_every(step, config.train.checkpoint_every, num_steps)
      if log_now or eval_now or save_now:
        settle()
      if log_now and history:
        means = _mean_metrics(history)
        writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
        metrics_log.write('train', step, means)
        if is_writer:
          print(progress.line(step, means), flush=True)
        history = []
      if eval_now:
        with metric_writers.ensure_flushes(writer), progress.paused():
          panels_dir = workdir / 'panels' if step == num_steps and not test_split else None
          results = evaluate(step, panels_dir)
          validation[step] = results
      if save_now:
        with progress.paused():
          save(step, results if eval_now else None)
    settle()
    if start_step >= num_steps and eval_split and not test_split:
      # Already trained (e.g. a rerun after the end): evaluate the final state again.
      results = evaluate(start_step, workdir / 'panels')
    manager.wait_until_finished()
    if test_split:
      # Once, at the end: the best checkpoint by validation mAP@0.5 (or the final one
      # without a validation split), chosen before the test split is read.
      best = manager.best_step() if eval_split else None
      chosen = best if best is not None else manager.latest_step()
      variables = jax.tree.map(
        lambda x: jax.device_put(x, replicated),
        checkpoints.load_variables(manager.directory / str(chosen)),
      )
      logging.info(
        'Testing step %d (%s) on %s.', chosen, 'best' if best is not None else 'final', test_split
      )
      results = evaluate(chosen, workdir / 'panels', split=test_split, variables=variables)
      results.update(
        checkpoint=str(manager.directory / str(chosen)),
        checkpoint_step=int(chosen),
        checkpoint_kind='best' if best is not None else 'final',
        selected_by=f'{checkpoints.BEST_METRIC} on {eval_split}'
        if best is not None
        else 'last step',
      )
      if chosen in validation:  # The chosen checkpoint's validation metrics (this run's).
        chosen_results = validation[chosen]
        results['validation'] = {
          'step': int(chosen),
          'num_images': chosen_results.get('num_images'),
          **reporting.scalar_results(chosen_results, prefix=''),
        }
    elif results:
      # No test split: the result is the final evaluation on eval_split, of the last step.
      results.update(checkpoint_step=int(results.get('step') or num_steps))
      results.update(checkpoint_kind='final', selected_by='last step')
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  if evaluators:
    reporting.write_final(results, workdir, evaluators[0].class_names, config)
  return results


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Flattens the config into scalar hyperparameters for TensorBoard."""
  flat = {}

  def visit(prefix: str, value: Any) -> None:
    if isinstance(value, Mapping):
      for k, v in value.items():
        visit(f'{prefix}{k}.', v)
    elif isinstance(value, bool | int | float | str) or value is None:
      flat[prefix[:-1]] = value if value is not None else 'None'
    else:
      flat[prefix[:-1]] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

  visit('', config.to_dict())
  return flat
