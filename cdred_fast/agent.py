"""CDREDAgent: acting (SPEC.md section 4) and one update (SPEC.md section 3, steps 1-9),
dispatching to the method chosen by ``cfg.method`` (:mod:`cdred_fast.methods`) for the losses
and the planning return.

A batch is ``{"obs": [H+1, B, *obs_shape], "action": [H, B, A]}`` (``obs_shape``
is ``(obs_dim,)`` for state, ``(3 * frame_stack, S, S)`` uint8 pixels for
``obs="rgb"``); one update takes a behavioural and an expert batch and
concatenates them along the batch axis, behavioural first (``2B`` samples).
Rewards stored in the buffers are never used by CDRED.

With ``cfg.method == "tdmpc2"`` (training RL experts) the same update runs
TD-MPC2 instead (:mod:`cdred_fast.methods.tdmpc2`): only a behavioural batch,
which must carry the environment reward ``"reward": [H, B]``. With ``"iqmpc"``
(:mod:`cdred_fast.methods.iqmpc_method`, SPEC section 6) it runs IQ-MPC's critic and
policy losses, clips over all model parameters and has no StepLR.

Every update reports ``grad_norm`` (world-model optimiser's parameters, before the clip)
and ``grad_norm_release``, the norm each release's ``clip_grad_norm_(model.parameters())``
measured: those parameters plus the gradient the policy holds at that moment (its stale
gradient from the previous policy step; for IQ-MPC also the gradient of ``v0``).

All randomness of an update (policy noise for the TD target and the policy loss,
the Q-head pairs, the target index of each predictor-loss sample) is drawn up
front into an :class:`UpdateNoise`, so the loss computation is a deterministic
function of ``(batches, noise)`` that tests can check by hand. Q dropout uses
torch's global RNG.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import methods
from .config import CDREDConfig
from .methods.common import UpdateNoise
from .planner import MPPIPlanner, MPPISettings, RolloutFunctions, module_tensors
from .precision import matmul_precision, matmul_precisions, update_dtype, update_parts, update_products
from .world_model import WorldModel


def _grad_norm(params, device) -> Tensor:
    """The 2-norm of the gradients the parameters hold (0 when none has one)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class RunningScale:
    """Running scale ``S`` of the policy loss (SPEC section 3, step 8).

    ``S <- lerp(S, max(P95(Q) - P5(Q), 1), tau)``, starting at 1; percentiles by
    linear interpolation. Applied to the Q values of the first horizon step, as in
    the released code.
    """

    def __init__(self, tau: float, device="cpu"):
        self.tau = float(tau)
        self.value = torch.ones((), device=device)

    @torch.no_grad()
    def update(self, q: Tensor) -> None:
        q = q.detach().float().flatten()
        p5, p95 = torch.quantile(q, torch.tensor([0.05, 0.95], device=q.device))
        self.value.lerp_(torch.clamp(p95 - p5, min=1.0).to(self.value.device), self.tau)

    def __call__(self, q: Tensor) -> Tensor:
        return q / self.value


class CDREDAgent:
    """The CDRED agent: world model, MPPI or policy-prior acting, and updates; the losses and the
    planning return are those of the method ``cfg.method`` (``self.method``).

    Args:
        cfg: the config; ``cfg.discount_for()`` must be defined (set ``episode_length`` or ``discount``).
        obs_dim, action_dim: environment sizes (``obs_dim`` for state observations).
        device: torch device for the model and all computation.
        obs_shape: the observation shape instead of ``obs_dim``, e.g. ``(9, 64, 64)`` for
            ``cfg.obs == "rgb"`` (``env.observation_space.shape`` works for both kinds).
    """

    def __init__(self, cfg: CDREDConfig, obs_dim=None, action_dim: int = None, device="cpu", *, obs_shape=None):
        if (obs_dim is None) == (obs_shape is None):
            raise TypeError("give exactly one of obs_dim (state) and obs_shape")
        if action_dim is None:
            raise TypeError("action_dim is required")
        self.cfg = cfg
        self.device = torch.device(device)
        self.method = methods.get(cfg.method)
        self.model = WorldModel(
            cfg,
            obs_dim if obs_shape is None else obs_shape,
            action_dim,
            reward_part=self.method.reward_part,
            critic=self.method.critic,
        ).to(self.device)
        m = self.model
        self.obs_shape: tuple[int, ...] = m.obs_shape
        self.obs_dim = m.obs_dim  # int for state observations, None for pixels
        self.action_dim = int(action_dim)
        self.discount = cfg.discount_for()
        # Step 7: Adam over encoder (lr x enc_lr_scale), dynamics, Q heads and the method's reward
        # part (CDRED: both predictors; TD-MPC2: the reward head). With kernels="fused", torch's
        # fused Adam (one vectorised pass per parameter instead of ~10 elementwise ops: ~10 ms of
        # a SPEC-size update on a 2-core CPU); the same update rule, rounded differently.
        fused_adam = {"fused": True} if cfg.kernels == "fused" and self.device.type in ("cpu", "cuda") else {}
        self.optim = torch.optim.Adam(
            [
                {"params": list(m.encoder.parameters()), "lr": cfg.lr * cfg.enc_lr_scale},
                {"params": list(m.dynamics.parameters())},
                {"params": m.q_parameters()},
                {"params": list(self.method.reward_parameters(m))},
            ],
            lr=cfg.lr,
            **fused_adam,
        )
        self.pi_optim = torch.optim.Adam(m.pi_net.parameters(), lr=cfg.pi_lr, eps=cfg.pi_eps, **fused_adam)
        # StepLR on both optimisers unless the method has none (IQ-MPC: None)
        self.scheduler, self.pi_scheduler = None, None
        if self.method.use_step_lr:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optim, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
            self.pi_scheduler = torch.optim.lr_scheduler.StepLR(
                self.pi_optim, step_size=cfg.lr_step, gamma=cfg.lr_gamma
            )
        self._wm_params = [p for group in self.optim.param_groups for p in group["params"]]
        # The world-model update's clip: the optimiser's parameters, or every parameter of the model
        # that can have a gradient (the policy's included) when the method clips them all (IQ-MPC).
        self._clip_params = (
            [p for p in m.parameters() if p.requires_grad] if self.method.clip_all_parameters else self._wm_params
        )
        self.scale = RunningScale(cfg.tau, self.device)
        # the dtype of the update's matrix products (cfg.update_precision; bfloat16 on the CPU only),
        # and the parts of the model it applies to when not to all ("bfloat16-q-rnd")
        self._update_dtype = update_dtype(cfg.update_precision, self.device)
        self._update_parts = update_parts(cfg.update_precision)
        # the float32 matmul precisions of act and of update (cfg.matmul_precision, "auto" resolved
        # for each: on an AMX CPU "medium" acting for models at least AUTO_ACT_MIN_WIDTH wide,
        # "highest" in the update)
        self._act_matmul_precision, self._update_matmul_precision = matmul_precisions(cfg, self.device)
        self.planner = MPPIPlanner(
            MPPISettings.from_config(cfg, self.action_dim),
            self.discount,
            kernels=cfg.kernels,
            capture_graph=cfg.capture_graph,
            device=self.device,
        )
        self.step = 0  # number of updates done

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(
        self, obs, t0: bool = False, eval_mode: bool = False, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Action ``[A]`` (on CPU) for one observation ``[obs_dim]`` (pixels: ``[C, H, W]`` uint8).

        MPPI when ``cfg.mpc`` (SPEC section 4); otherwise the policy prior: its mean
        ``tanh(mu)`` when ``eval_mode``, a sample otherwise. A method with an action of its own
        (:meth:`cdred_fast.methods.Method.act`; BC: ``tanh(mu)`` always) acts with it instead.
        A state observation with NaN or inf raises ``ValueError`` (checked with one ``isfinite``
        reduction: a host sync on CUDA).
        """
        obs = self._obs_tensor(obs).reshape(1, *self.obs_shape)
        if obs.is_floating_point() and not bool(torch.isfinite(obs).all()):  # one sync on CUDA, per act
            raise ValueError(f"act: obs contains NaN or inf: {obs.reshape(-1)[:8].tolist()}...")
        with self.model.planning(), matmul_precision(self._act_matmul_precision):
            z = self.model.encode(obs)
            a = self.method.act(self, z, bool(t0), bool(eval_mode), generator)
            if a is None and self.cfg.mpc:
                a = self.plan(z, t0=t0, eval_mode=eval_mode, generator=generator)
            elif a is None:
                mu, sample, _, _ = self.model.pi(z, generator=generator)
                a = (mu if eval_mode else sample)[0]
        return a.cpu()

    def rollout_functions(self, generator: Optional[torch.Generator] = None) -> RolloutFunctions:
        """The world model as the MPPI loop sees it: the method's planning return, with the policy's
        noise and the Q heads drawn from ``generator``."""
        return self.method.rollout_functions(self.model, generator)

    @torch.no_grad()
    def plan(
        self, z: Tensor, t0: bool = False, eval_mode: bool = False, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """MPPI (SPEC section 4) from the latent ``z`` (``[L]`` or ``[1, L]``): the action ``[A]``.

        The model is in eval mode (Q dropout off) while planning. Draws, all from ``generator`` (on
        the agent's device type; the default generator when None): the policy's noise for the N_pi
        sequences, then per iteration the sampled sequences, the policy noise and Q heads of the
        value, then the elite choice and (unless ``eval_mode``) the exploration noise.
        """
        with self.model.planning():
            z = z.reshape(1, -1).to(self.device)
            return self.planner.plan(
                self.rollout_functions(generator),
                z,
                bool(t0),
                eval_mode=bool(eval_mode),
                generator=generator,
                graph_tensors=module_tensors(self.model),
            )[0]

    @contextlib.contextmanager
    def preserve_plan_state(self):
        """Context after which the planner's warm start is what it was on entry (evaluating in the
        middle of a training episode leaves the next training plan as it would have been)."""
        with self.planner.preserved():
            yield self

    # ------------------------------------------------------------------ update
    def draw_noise(self, n: int, generator: Optional[torch.Generator] = None):
        """Draw every random number one update needs, for ``n`` concatenated samples (the method's
        :meth:`cdred_fast.methods.Method.draw_noise`; CDRED and TD-MPC2: an :class:`UpdateNoise`)."""
        return self.method.draw_noise(self, n, generator)

    def _obs_tensor(self, obs) -> Tensor:
        """Observations on ``device``: float32 for state, uint8 kept for pixels (the encoder scales them)."""
        obs = torch.as_tensor(obs, device=self.device)
        if self.cfg.obs == "rgb" and obs.dtype == torch.uint8:
            return obs
        return obs.to(torch.float32)

    def _concat(self, behavioral_batch: dict, expert_batch: Optional[dict] = None) -> tuple[Tensor, Tensor, int]:
        """Concatenate behavioural then expert along the batch axis (SPEC section 3).

        Without ``expert_batch`` (TD-MPC2 mode) the behavioural batch alone. Returns
        ``(obs [H+1, N, *obs_shape], action [H, N, A], n_behavioral)``.
        """
        H = self.cfg.horizon
        batches = [("behavioral_batch", behavioral_batch)]
        if expert_batch is not None:
            batches.append(("expert_batch", expert_batch))
        shape = ", ".join(str(d) for d in self.obs_shape)
        for name, batch in batches:
            o, a = batch["obs"], batch["action"]
            if o.dim() != 2 + len(self.obs_shape) or o.shape[0] != H + 1 or tuple(o.shape[2:]) != self.obs_shape:
                raise ValueError(f"{name}['obs'] must be [H+1={H + 1}, B, {shape}], got {tuple(o.shape)}")
            if a.dim() != 3 or a.shape[0] != H or a.shape[2] != self.action_dim or a.shape[1] != o.shape[1]:
                raise ValueError(
                    f"{name}['action'] must be [H={H}, B={o.shape[1]}, {self.action_dim}], got {tuple(a.shape)}"
                )
        obs = torch.cat([self._obs_tensor(b["obs"]) for _, b in batches], dim=1)
        action = torch.cat([b["action"].to(device=self.device, dtype=torch.float32) for _, b in batches], dim=1)
        for what, t in (("obs", obs), ("action", action)):  # a NaN would poison every parameter
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"update: the batches' {what} contains NaN or inf")
        return obs, action, behavioral_batch["obs"].shape[1]

    def _env_reward(self, batch: dict) -> Tensor:
        """The batch's environment reward ``[H, B]`` on ``device`` (methods that use it)."""
        H, B = self.cfg.horizon, batch["action"].shape[1]
        if "reward" not in batch:
            raise ValueError(
                f"method={self.cfg.method!r} trains on the environment reward: behavioral_batch needs 'reward' [H, B] "
                "(an EpisodeBuffer returns it when its episodes were added with rewards)"
            )
        r = batch["reward"].to(device=self.device, dtype=torch.float32)
        if tuple(r.shape) != (H, B):
            raise ValueError(f"behavioral_batch['reward'] must be [H={H}, B={B}], got {tuple(r.shape)}")
        if not torch.isfinite(r).all():
            raise ValueError("behavioral_batch['reward'] contains NaN or inf")
        return r

    def compute_losses(
        self, obs: Tensor, action: Tensor, n_behavioral: int, noise: UpdateNoise, reward: Optional[Tensor] = None
    ) -> dict[str, Tensor]:
        """Steps 1-7 of SPEC section 3 on concatenated ``obs [H+1, N, *obs_shape]``, ``action [H, N, A]``,
        the method's (:meth:`cdred_fast.methods.Method.compute_losses`).

        The first ``n_behavioral`` samples are behavioural, the rest expert. Returns the loss
        tensors (``consistency, value, reward, total``) and, detached, ``zs [H+1, N, L]``,
        ``rewards [H, N]``, ``td_targets [H, N]``, ``q_logits [num_q, H, N, bins]``; ``reward [H, N]``
        is the environment reward, for the methods that use it (TD-MPC2).
        """
        return self.method.compute_losses(self, obs, action, n_behavioral, noise, reward)

    def policy_loss(self, zs: Tensor, noise: UpdateNoise, update_scale: bool = True) -> Tensor:
        """Step 8 loss on the detached latents ``zs [H+1, N, L]`` (the method's; CDRED and TD-MPC2:
        ``mean_t rho^t mean_i(entropy_coef log pi(a|z) - Q_min(z, a) / S)``, ``a ~ pi(z)``, ``S``
        updated first from the Q values of step 0 when ``update_scale``)."""
        return self.method.policy_loss(self, zs, noise, update_scale)

    def update_products(self):
        """The context of an update's matrix products for ``cfg.update_precision``
        (:func:`cdred_fast.precision.update_products`)."""
        return update_products(self.model, self._update_dtype, self._update_parts)

    def update(
        self,
        behavioral_batch: Optional[dict],
        expert_batch: Optional[dict] = None,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, float]:
        """One update, SPEC section 3 steps 1-9. Returns the statistics as floats.

        CDRED: a behavioural and an expert batch. TD-MPC2 mode: the behavioural batch
        alone, with ``"reward" [H, B]``; ``expert_batch`` must be None. BC: the expert batch
        alone (``behavioral_batch=None``), the method's own update
        (:meth:`cdred_fast.methods.Method.update`).
        """
        cfg, m, method = self.cfg, self.model, self.method
        if not method.uses_expert and expert_batch is not None:
            raise ValueError(f"method={method.name!r} learns without demonstrations: pass no expert_batch")
        if method.uses_expert and expert_batch is None:
            raise ValueError(
                f"method={method.name!r} needs an expert_batch (demonstrations) besides the behavioral_batch"
            )
        own = method.update(self, behavioral_batch, expert_batch, generator)
        if own is not None:
            self.step += 1
            return own
        obs, action, nb = self._concat(behavioral_batch, expert_batch)
        env_reward = self._env_reward(behavioral_batch) if method.uses_env_reward else None
        noise = self.draw_noise(obs.shape[1], generator)
        m.train(True)  # Q dropout on (and the pixel encoder's random shift) for the losses (as released)
        try:
            # cfg.matmul_precision (resolved for the update) for every product; with update_precision bfloat16
            # every product's operands rounded to bfloat16 (precision.bf16_products), float32 everywhere else;
            # with "bfloat16-q-rnd" those of the Q ensemble and the reward networks only (WorldModel.products)
            with matmul_precision(self._update_matmul_precision), self.update_products():
                # steps 1-7: world model, Q ensemble and the method's reward part
                losses = self.compute_losses(obs, action, nb, noise, reward=env_reward)
                self.optim.zero_grad(set_to_none=True)
                losses["total"].backward()
                # The gradient norm as each release measured it (clip_grad_norm_(model.parameters())):
                # the world model's together with whatever the policy holds at this point - its stale
                # gradient from the previous policy step (the policy optimiser zeroes it only before
                # its own step), plus, for IQ-MPC, the gradient of the world-model loss (v0).
                if method.clip_all_parameters:
                    grad_norm = _grad_norm(self._wm_params, self.device)  # before the clip
                    grad_norm_release = torch.nn.utils.clip_grad_norm_(self._clip_params, cfg.grad_clip_norm)
                else:
                    pi_norm = _grad_norm(m.pi_net.parameters(), self.device)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self._wm_params, cfg.grad_clip_norm)
                    grad_norm_release = torch.sqrt(grad_norm.square() + pi_norm.square())
                self.optim.step()
                if self.scheduler is not None:
                    self.scheduler.step()

                # step 8: policy on the detached latents, Q parameters frozen
                self.pi_optim.zero_grad(set_to_none=True)
                m.track_q_grad(False)
                try:
                    pi_loss = self.policy_loss(losses["zs"], noise)
                    pi_loss.backward()
                finally:
                    m.track_q_grad(True)
                pi_grad_norm = torch.nn.utils.clip_grad_norm_(m.pi_net.parameters(), cfg.grad_clip_norm)
                self.pi_optim.step()
                if self.pi_scheduler is not None:
                    self.pi_scheduler.step()

                # step 9: Polyak-update the target Qs
                m.soft_update_target_Q()
        finally:
            m.train(False)
        self.step += 1

        q_scalar = m.q_value(losses["q_logits"]).mean(dim=0)  # mean over heads: [H, N]
        stats = {
            "consistency_loss": float(losses["consistency"].detach()),
            "value_loss": float(losses["value"].detach()),
            "reward_loss": float(losses["reward"].detach()),
            "pi_loss": float(pi_loss.detach()),
            "total_loss": float(losses["total"].detach()),
            "grad_norm": float(grad_norm),
            "grad_norm_release": float(grad_norm_release),
            "pi_grad_norm": float(pi_grad_norm),
            "reward_behavioral": float(losses["rewards"][:, :nb].mean()),
            "td_target": float(losses["td_targets"].mean()),
            "pi_scale": float(self.scale.value),
            "lr": float(self.optim.param_groups[1]["lr"]),
            "pi_lr": float(self.pi_optim.param_groups[0]["lr"]),
            **method.stats(losses, nb, q_scalar),
        }
        return stats

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume; only tensors, containers and primitives (``weights_only`` safe)."""
        return {
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "pi_scheduler": None if self.pi_scheduler is None else self.pi_scheduler.state_dict(),
            "scale": self.scale.value.detach().clone(),
            # the policy's stale gradient, part of the next update's clip for IQ-MPC (exact resume)
            "pi_grad": [None if p.grad is None else p.grad.detach().clone() for p in self.model.pi_net.parameters()],
            "step": int(self.step),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict` (the stored ``config`` is informational and not applied)."""
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        for scheduler, saved in ((self.scheduler, state["scheduler"]), (self.pi_scheduler, state["pi_scheduler"])):
            if (scheduler is None) != (saved is None):
                raise ValueError(
                    f"method={self.method.name!r} {'has no' if scheduler is None else 'needs a'} StepLR state; the "
                    "checkpoint was written by an agent of another method"
                )
            if scheduler is not None:
                scheduler.load_state_dict(saved)
        self.scale.value.copy_(state["scale"])
        for p, g in zip(self.model.pi_net.parameters(), state.get("pi_grad") or []):
            p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()
        self.step = int(state["step"])
        self.planner.reset()


__all__ = ["CDREDAgent", "RunningScale", "UpdateNoise"]
