"""Environments: the task registry, suite adapters and shared wrappers.

>>> env = make("mw-reach-wall", seed=0)        # doctest: +SKIP
>>> obs, info = env.reset()
>>> env.max_episode_steps                        # 100 agent steps (action repeat 2)

>>> env = make("cheetah-run", obs="rgb")          # doctest: +SKIP
>>> env.observation_space.shape                   # 3 stacked 64x64 RGB frames, uint8
(9, 64, 64)

* :mod:`.registry` - :class:`TaskSpec`, :func:`known_tasks`, :func:`make`, and each task's
  scripted expert (:func:`scripted_policy`, :func:`has_scripted_policy`).
* :mod:`.dmcontrol` - DeepMind Control Suite (500 agent steps per episode); headless
  rendering for pixel observations (sets ``MUJOCO_GL=egl`` unless already set).
* :mod:`.metaworld` - Meta-World v3 (100 agent steps) and :func:`scripted_policy`.
* :mod:`.stick_pull` - our scripted expert for ``mw-stick-pull`` (Meta-World's rarely ends solved).
* :mod:`.maniskill2` - ManiSkill2 0.5.3 (100 agent steps), run in a worker process in its
  own Python environment (it needs numpy<1.24); state-only mode without a renderer.
* :mod:`.wrappers` - action repeat, time limit, float32 cast, pixel observations and
  frame stacking, trembling hand.

The simulators are imported only when a task of their suite is built (ManiSkill2 is
never imported into this process).
"""

from .registry import PAPER_TASKS, TASKS, TaskSpec, has_scripted_policy, known_tasks, make, scripted_policy, task_spec

__all__ = [
    "PAPER_TASKS",
    "TASKS",
    "TaskSpec",
    "known_tasks",
    "make",
    "task_spec",
    "scripted_policy",
    "has_scripted_policy",
]
