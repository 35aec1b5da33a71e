"""Environments: the task registry, suite adapters and shared wrappers.

>>> env = make("mw-reach-wall", seed=0)        # doctest: +SKIP
>>> obs, info = env.reset()
>>> env.max_episode_steps                        # 100 agent steps (action repeat 2)

* :mod:`.registry` - :class:`TaskSpec`, :func:`known_tasks`, :func:`make`.
* :mod:`.dmcontrol` - DeepMind Control Suite (500 agent steps per episode).
* :mod:`.metaworld` - Meta-World v3 (100 agent steps) and :func:`scripted_policy`.
* :mod:`.wrappers` - action repeat, time limit, float32 cast, trembling hand.

The simulators are imported only when a task of their suite is built.
"""

from .registry import PAPER_TASKS, TASKS, TaskSpec, known_tasks, make, task_spec

__all__ = ["PAPER_TASKS", "TASKS", "TaskSpec", "known_tasks", "make", "task_spec", "scripted_policy"]


def scripted_policy(task: str):
    """Meta-World's scripted expert for ``task`` (see :func:`.metaworld.scripted_policy`)."""
    from .metaworld import scripted_policy as _scripted_policy

    return _scripted_policy(task)
