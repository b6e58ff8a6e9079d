"""The auxiliary tasks: what a config declares, which tasks a variant trains, what each needs.

A task is declared in `config.model.task_specs.<name>` (`kind`, `width` K_t, `components`
for a dense_vector, `source`: the example field its target is made from, default the
name) and switched on by naming it in the comma string `config.model.tasks`. The
detection baseline trains none of them (`active`), whatever `config.model.tasks` says.

The kind decides everything else, through one table per concern keyed by kind:
- how the block predicts it: `rock_jax.models.rock.pool`;
- its target in the batch: `rock_jax.input_pipeline.KIND_TARGETS`;
- its loss: `rock_jax.losses.KIND_LOSSES` (a task may override it by name,
  `losses.TASK_LOSSES`);
- its evaluation metric: `rock_jax.task_metrics.KIND_METRICS`.

So a new task of a known kind is one config entry (plus, if it wants its own loss, one
function in `losses.TASK_LOSSES`): `tests/test_tasks.py` adds a toy dense task that way.
"""

import dataclasses
from typing import Any

# image_class: one label per image (global average pooling -> logits);
# dense_scalar: one positive value per location, predicted in log space (depth, disparity);
# dense_vector: a direction per location, `components` values (surface normals).
KINDS = ('image_class', 'dense_scalar', 'dense_vector')
# The variant that has no auxiliary task.
BASELINE = 'baseline'


@dataclasses.dataclass(frozen=True)
class Task:
  """One auxiliary task.

  Attributes:
    name: Key of its outputs and batch entries ('scene', 'depth', ...).
    kind: One of `KINDS`.
    width: K_t, the width of the task-specific encoding.
    components: Output maps of a dense_vector task (width must be a multiple).
    source: The example field its target comes from (default: `name`).
  """

  name: str
  kind: str
  width: int
  components: int = 1
  source: str = ''

  def __post_init__(self):
    if not self.source:
      object.__setattr__(self, 'source', self.name)

  @property
  def dense(self) -> bool:
    """True for a per-location task (a map at the conv5 grid), False for a per-image one."""
    return self.kind != 'image_class'

  @property
  def batch_keys(self) -> tuple[str, ...]:
    """The batch entries the task's loss reads: target, presence flag, valid mask if dense."""
    keys = (self.name, f'has_{self.name}')
    return (*keys, f'{self.name}_mask') if self.dense else keys


def names_in(tasks: str) -> list[str]:
  """Splits a `config.model.tasks` string ('scene,depth' or '') into names."""
  return [t.strip() for t in tasks.split(',') if t.strip()]


def parse(model_config: Any) -> tuple[Task, ...]:
  """The tasks `config.model.tasks` declares, in order, checked against `task_specs`.

  Args:
    model_config: The `config.model` ConfigDict.

  Returns:
    The declared tasks (empty for `''`), whatever the variant.

  Raises:
    ValueError: a task without a spec, an unknown kind, or a bad width.
  """
  out = []
  for name in names_in(model_config.tasks):
    if name not in model_config.task_specs:
      raise ValueError(f'Task {name!r} has no entry in config.model.task_specs.')
    spec = model_config.task_specs[name]
    task = Task(
      name,
      spec['kind'],
      int(spec['width']),
      int(spec.get('components', 1)),
      str(spec.get('source', '') or ''),
    )
    if task.kind not in KINDS:
      raise ValueError(f'Task {name!r}: kind must be one of {KINDS}, got {task.kind!r}.')
    if task.kind == 'dense_vector' and task.width % task.components:
      raise ValueError(f'Task {name!r}: width {task.width} not a multiple of {task.components}.')
    out.append(task)
  return tuple(out)


def active(config: Any) -> tuple[Task, ...]:
  """The tasks the model predicts and trains: none for the baseline variant.

  Args:
    config: The whole experiment config, or its `model` part.
  """
  model = config.model if 'model' in config else config
  return () if model.variant == BASELINE else parse(model)


def names(config: Any) -> list[str]:
  """The names of the `active` tasks, in order."""
  return [t.name for t in active(config)]


def batch_keys(config: Any) -> tuple[str, ...]:
  """The batch entries of every `active` task (see `Task.batch_keys`)."""
  return tuple(k for t in active(config) for k in t.batch_keys)
