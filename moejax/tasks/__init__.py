"""Fine-tuning tasks: GLUE, SuperGLUE and an offline task, text-to-text.

`tasks_of(name)` resolves a task or mixture name ('glue_sst2',
'glue_mixture', 'embedded_topics', ...); `known_names()` lists them.
Register a task with `moejax.tasks.base.register(Task(...))`.
"""
from moejax.data.sources import DatasetNotPrepared

# Importing these registers the tasks and the 'task' data source.
from moejax.tasks import embedded, glue, source
from moejax.tasks.base import MIXTURES, TASKS, EvalSet, Task, get_task, known_names, tasks_of

__all__ = ["DatasetNotPrepared", "EvalSet", "MIXTURES", "TASKS", "Task", "embedded", "get_task",
           "glue", "known_names", "source", "tasks_of"]
