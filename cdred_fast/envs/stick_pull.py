"""A scripted expert for Meta-World's stick-pull (``mw-stick-pull``).

Meta-World's own ``SawyerStickPullV3Policy`` succeeds at some step in 0.72 and at the
last step in only 0.32 of episodes (reset seeds 1000-1049, action repeat 2, 100 agent
steps). Success needs the stick's end past the handle (x) and within 4 cm (y) / 6 cm (z)
of it, and the handle within 0.12 m of the goal. What its failing episodes show:

* **What moves the thermos.** The stick slides freely through the handle's loop (7 cm by
  12 cm in y-z). The thermos is pushed in +x by the robot's hand (``right_hand``) running
  into the thermos' body, and dragged in -y by the stick pressing on the loop's outer bar.
  When the hand meets the body, the stick's end is only ~0.3 cm past the handle, so
  whether it counts as inserted hangs on where along the stick the fingers closed: a grasp
  a few millimetres further forward shoves the thermos away before the stick is in the loop.
* **The pull aims at the wrong place.** The handle is 0.112 m above the goal (z 0.132
  against 0.02), so it must end within 4.3 cm of the goal in x-y; the thermos slides in
  x only up to 0.40 (its joint range; 0.406 pressed) while goals reach x = 0.45.
  Meta-World's expert sends the hand to ``goal - (0.05, 0, 0)`` at the goal's height:
  down, and back in -x once the thermos is at its x stop, drawing the stick back out of
  the loop (25 of its 34 unsolved episodes end with the stick's end behind the handle).
  Its waypoint test (stick within 4 cm of the thermos in x) then fails and it returns to
  its first waypoint, 10 cm above the stick, which it is still holding: the hand climbs
  with the stick (8 end with it 0.17-0.49 m high). 28 end with the handle more than
  0.12 m from the goal.
* **The grasp opens mid-carry** whenever the hand drifts 2 cm (x-y) from its grasp point
  on the stick, dropping it (2 episodes).

This expert keeps an episode phase (:meth:`StickPullExpert.reset` at every episode start,
as :func:`cdred_fast.collect.collect` does; without it, it starts over by itself once the
stick is not in the hand) and otherwise acts on the 39-d observation alone: grasp the
stick 2.5 cm behind its centre (its end is then ~2 cm past the handle when the hand meets
the thermos), wait for the fingers to close, lift it to the handle's height, line its end
up with the handle 4 cm before it, slide it in along x, then steer the handle (not the
hand) to the goal at the handle's height: an x-y action proportional to the handle's
error (gently: the thermos coasts on after a push, and cannot be pulled back in x), a
dead band that holds it still at the goal, the x target capped at the thermos' stop and
the thermos pressed against it when the goal lies beyond, the stick's end kept past the
handle. It falls back to an earlier phase when the stick leaves the hand or the loop.
Measured (docs/environments.md): 0.98 at the last step on seeds 1000-1049 and 2000-2049.
"""

from __future__ import annotations

import numpy as np

__all__ = ["StickPullExpert", "scripted_policy"]

OBS_DIM = 39
# An action of 1 moves the hand 1 cm per simulator step; 25 * (target - hand) heads for a target.
_HALF_STICK = 0.05  # the stick's end site is 5 cm from its centre along its own x axis
_GRASP_BACK = 0.025  # hold the stick this far behind its centre
_THERMOS_X_MAX = 0.40  # the thermos slides in x up to 0.2 + 0.2 (its joint range)
_PULL_GAIN = 6.0  # action per metre of handle error while pulling (the thermos coasts)
_DEADBAND = 0.006  # handle errors below this are left alone
_LIMIT_PUSH = 0.2  # x action pressing the thermos against its stop, for goals beyond it
_TIP_PAST = 0.012  # keep the stick's end this far past the handle (the hand meets the thermos at ~0.02)


def _stick_end(stick: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    """The stick's end: its centre plus 5 cm along its own x axis (quaternion x, y, z, w)."""
    x, y, z, w = quat_xyzw
    axis = np.array([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)])
    return stick + _HALF_STICK * axis


class StickPullExpert:
    """The stick-pull expert: ``obs -> action`` with an episode phase (see the module).

    Phases: ``reach`` (above the grasp point, open), ``descend``, ``close`` (until the
    fingers stop), ``lift`` (to the handle's height), ``align`` (the stick's end 4 cm before
    the handle, level with it), ``insert`` (along x until the end is 1 cm past the handle),
    ``pull`` (the handle to the goal). :meth:`reset` starts an episode.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.phase = "reach"
        self._closing = 0  # agent steps spent closing
        self._opening = 1.0  # the gripper opening one step earlier

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (OBS_DIM,):
            raise ValueError(f"expected a ({OBS_DIM},) Meta-World observation, got shape {obs.shape}")
        hand, opening, stick, quat, handle, goal = obs[:3], obs[3], obs[4:7], obs[7:11], obs[11:14], obs[-3:]
        end = _stick_end(stick, quat)
        grasp_point = stick - (_GRASP_BACK / _HALF_STICK) * (end - stick)

        # fall back when the stick has left the hand, or the handle's loop
        held = np.linalg.norm(stick[:2] - hand[:2]) < 0.05 and hand[2] - stick[2] < 0.06 and opening > 0.2
        if self.phase in ("lift", "align", "insert", "pull") and not held:
            self.phase, self._closing = "reach", 0
        in_loop = abs(end[1] - handle[1]) < 0.035 and abs(end[2] - handle[2]) < 0.05
        if self.phase == "pull" and not (in_loop and end[0] > handle[0] - 0.02):
            self.phase = "align"

        grip, target, velocity = 1.0, hand, None  # a target for the hand, or an xyz action
        if self.phase == "reach":
            grip, target = -1.0, np.array([grasp_point[0], grasp_point[1], 0.15])
            if np.linalg.norm(hand[:2] - grasp_point[:2]) < 0.01:
                self.phase = "descend"
        if self.phase == "descend":
            grip, target = -1.0, np.array([grasp_point[0], grasp_point[1], max(stick[2] + 0.03, 0.05)])
            if np.linalg.norm(hand[:2] - grasp_point[:2]) > 0.02:
                self.phase = "reach"
            elif abs(hand[2] - target[2]) < 0.01:
                self.phase = "close"
        if self.phase == "close":
            target = hand
            self._closing += 1
            if self._closing >= 12 or (self._closing >= 4 and abs(opening - self._opening) < 0.01):
                self._closing = 0
                self.phase = "lift" if opening > 0.2 else "reach"
        if self.phase == "lift":
            target = np.array([hand[0], hand[1], hand[2] + handle[2] - stick[2]])
            if abs(stick[2] - handle[2]) < 0.015:
                self.phase = "align"
        if self.phase == "align":
            want_end = handle + np.array([-0.04, 0.0, 0.0])
            target = hand + want_end - end
            if np.all(np.abs(end[1:] - handle[1:]) < 0.01) and abs(end[0] - want_end[0]) < 0.015:
                self.phase = "insert"
        if self.phase == "insert":
            target = hand + handle + np.array([0.04, 0.0, 0.0]) - end
            if end[0] > handle[0] + 0.01:
                self.phase = "pull"
            elif not in_loop:
                self.phase = "align"
        if self.phase == "pull":
            error = np.array([min(goal[0], _THERMOS_X_MAX), goal[1]]) - handle[:2]
            error[np.abs(error) < _DEADBAND] = 0.0
            velocity = np.append(_PULL_GAIN * error, 25.0 * (handle[2] - stick[2]))
            if goal[0] > _THERMOS_X_MAX and handle[0] > _THERMOS_X_MAX - 0.003:
                velocity[0] = _LIMIT_PUSH
            velocity[0] = max(velocity[0], 25.0 * (handle[0] + _TIP_PAST - end[0]))
        self._opening = opening
        if velocity is None:
            velocity = 25.0 * (target - hand)
        return np.append(np.clip(velocity, -1.0, 1.0), grip).astype(np.float32)


def scripted_policy(task: str) -> StickPullExpert:
    """The registry's scripted expert for ``mw-stick-pull``: a fresh :class:`StickPullExpert`.

    Raises:
        ValueError: ``task`` is not stick-pull.
    """
    if task not in ("mw-stick-pull", "stick-pull", "stick-pull-v3"):
        raise ValueError(f"the stick-pull expert is for mw-stick-pull, not {task!r}")
    return StickPullExpert()
