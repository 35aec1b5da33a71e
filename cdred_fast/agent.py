"""CDREDAgent: acting (SPEC.md section 4) and one update (SPEC.md section 3, steps 1-9).

A batch is ``{"obs": [H+1, B, obs_dim], "action": [H, B, A]}``; one update takes a
behavioural and an expert batch and concatenates them along the batch axis,
behavioural first (``2B`` samples). Rewards stored in the buffers are never used.

All randomness of an update (policy noise for the TD target and the policy loss,
the Q-head pairs, the target index of each predictor-loss sample) is drawn up
front into an :class:`UpdateNoise`, so the loss computation is a deterministic
function of ``(batches, noise)`` that tests can check by hand. Q dropout uses
torch's global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import CDREDConfig
from .layers import soft_ce
from .planner import MPPIPlanner
from .world_model import WorldModel, choose_two_heads, randn


@dataclass
class UpdateNoise:
    """The random draws of one update (``N = B_behavioural + B_expert``)."""

    td_eps: Tensor  # [H, N, A]    policy noise for the action in the TD target
    td_heads: Tensor  # [2]        target-Q heads whose min forms the TD target
    target_idx: Tensor  # [H, N]   target index k_i of each predictor-loss sample (behavioural first)
    pi_eps: Tensor  # [H+1, N, A]  policy noise in the policy loss
    pi_heads: Tensor  # [2]        Q heads whose min the policy maximises


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
    """The CDRED agent: world model + CDRED reward, MPPI or policy-prior acting, and updates.

    Args:
        cfg: the config; ``cfg.discount_for()`` must be defined (set ``episode_length`` or ``discount``).
        obs_dim, action_dim: environment sizes (state observations).
        device: torch device for the model and all computation.
    """

    def __init__(self, cfg: CDREDConfig, obs_dim: int, action_dim: int, device="cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.discount = cfg.discount_for()
        self.model = WorldModel(cfg, obs_dim, action_dim).to(self.device)
        m = self.model
        # Step 7: Adam over encoder (lr x enc_lr_scale), dynamics, Q heads and both predictors.
        self.optim = torch.optim.Adam(
            [
                {"params": list(m.encoder.parameters()), "lr": cfg.lr * cfg.enc_lr_scale},
                {"params": list(m.dynamics.parameters())},
                {"params": list(m.Qs.parameters())},
                {"params": list(m.reward_model.predictor_parameters())},
            ],
            lr=cfg.lr,
        )
        self.pi_optim = torch.optim.Adam(m.pi_net.parameters(), lr=cfg.pi_lr, eps=cfg.pi_eps)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optim, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.pi_scheduler = torch.optim.lr_scheduler.StepLR(self.pi_optim, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self._wm_params = [p for group in self.optim.param_groups for p in group["params"]]
        self.scale = RunningScale(cfg.tau, self.device)
        self.planner = MPPIPlanner(cfg, m, action_dim, self.device, discount=self.discount)
        self.step = 0  # number of updates done

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs, t0: bool = False, eval_mode: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """Action ``[A]`` (on CPU) for one observation ``[obs_dim]``.

        MPPI when ``cfg.mpc`` (SPEC section 4); otherwise the policy prior: its mean
        ``tanh(mu)`` when ``eval_mode``, a sample otherwise.
        """
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        with self.model.planning():
            z = self.model.encode(obs)
            if self.cfg.mpc:
                a = self.planner.plan(z, t0=t0, eval_mode=eval_mode, generator=generator)
            else:
                mu, sample, _, _ = self.model.pi(z, generator=generator)
                a = (mu if eval_mode else sample)[0]
        return a.cpu()

    # ------------------------------------------------------------------ update
    def draw_noise(self, n: int, generator: Optional[torch.Generator] = None) -> UpdateNoise:
        """Draw every random number one update needs, for ``n`` concatenated samples."""
        H, A, dev = self.cfg.horizon, self.action_dim, self.device
        gen_dev = generator.device if generator is not None else dev
        return UpdateNoise(
            td_eps=randn((H, n, A), generator, dev),
            td_heads=choose_two_heads(self.cfg.num_q, generator, dev),
            target_idx=torch.randint(self.cfg.num_targets, (H, n), generator=generator, device=gen_dev).to(dev),
            pi_eps=randn((H + 1, n, A), generator, dev),
            pi_heads=choose_two_heads(self.cfg.num_q, generator, dev),
        )

    def _concat(self, behavioral_batch: dict, expert_batch: dict) -> tuple[Tensor, Tensor, int]:
        """Concatenate behavioural then expert along the batch axis (SPEC section 3)."""
        H = self.cfg.horizon
        for name, batch in (("behavioral_batch", behavioral_batch), ("expert_batch", expert_batch)):
            o, a = batch["obs"], batch["action"]
            if o.dim() != 3 or o.shape[0] != H + 1 or o.shape[2] != self.obs_dim:
                raise ValueError(f"{name}['obs'] must be [H+1={H + 1}, B, {self.obs_dim}], got {tuple(o.shape)}")
            if a.dim() != 3 or a.shape[0] != H or a.shape[2] != self.action_dim or a.shape[1] != o.shape[1]:
                raise ValueError(
                    f"{name}['action'] must be [H={H}, B={o.shape[1]}, {self.action_dim}], got {tuple(a.shape)}"
                )
        to = dict(device=self.device, dtype=torch.float32)
        obs = torch.cat([behavioral_batch["obs"].to(**to), expert_batch["obs"].to(**to)], dim=1)
        action = torch.cat([behavioral_batch["action"].to(**to), expert_batch["action"].to(**to)], dim=1)
        return obs, action, behavioral_batch["obs"].shape[1]

    def compute_losses(self, obs: Tensor, action: Tensor, n_behavioral: int, noise: UpdateNoise) -> dict[str, Tensor]:
        """Steps 1-7 of SPEC section 3 on concatenated ``obs [H+1, N, O]``, ``action [H, N, A]``.

        The first ``n_behavioral`` samples are behavioural, the rest expert. Returns the
        loss tensors (``consistency, value, reward, total``) and, detached, ``zs [H+1, N, L]``,
        ``rewards [H, N]``, ``td_targets [H, N]``, ``q_logits [num_q, H, N, bins]``.
        """
        cfg, m = self.cfg, self.model
        H = cfg.horizon
        nb = n_behavioral
        rho_t = cfg.rho ** torch.arange(H, device=self.device, dtype=torch.float32)

        # 1. z'_t = h(s_{t+1}), no gradient
        with torch.no_grad():
            next_z = m.encode(obs[1:])

        # 2. latent roll-out and consistency = (1/H) sum_t rho^t MSE(z_{t+1}, z'_t)
        z = m.encode(obs[0])
        zs = [z]
        consistency = 0.0
        for t in range(H):
            z = m.next(z, action[t])
            consistency = consistency + cfg.rho**t * F.mse_loss(z, next_z[t])
            zs.append(z)
        consistency = consistency / H
        zs = torch.stack(zs)  # [H+1, N, L]

        with torch.no_grad():
            # 3. rewards r_t = R(z_t, a_t) on the roll-out latents
            rewards = m.reward(zs[:-1].detach(), action)  # [H, N]
            # 4. TD target y_t = r_t + gamma * Q_bar_min(z'_t, pi(z'_t)), sampled policy action
            next_a = m.pi(next_z, eps=noise.td_eps)[1]
            td_targets = rewards + self.discount * m.Q(next_z, next_a, "min", target=True, heads=noise.td_heads)

        # 5. value = (1/(H num_q)) sum_t rho^t sum_q mean_i CE(Q_q(z_t, a_t), twohot(y_t))
        q_logits = m.Q(zs[:-1], action, "all")  # [num_q, H, N, bins]
        ce = soft_ce(q_logits, td_targets.unsqueeze(0), cfg.vmin, cfg.vmax)  # [num_q, H, N]
        value = (ce.mean(dim=2) * rho_t).sum() / (H * cfg.num_q)

        # 6. predictor loss (SPEC section 2) on the roll-out latents: sum_t rho^t (l_phi + l_psi) / H
        x = torch.cat([zs[:-1], action], dim=-1)  # [H, N, L+A]
        x_beh, x_exp = x[:, :nb], x[:, nb:]
        loss_exp, loss_beh = m.reward_model.predictor_loss(
            x_exp.reshape(-1, x.shape[-1]),
            x_beh.reshape(-1, x.shape[-1]),
            idx_expert=noise.target_idx[:, nb:].reshape(-1),
            idx_behavioral=noise.target_idx[:, :nb].reshape(-1),
        )
        per_step = loss_exp.view(H, -1).mean(dim=1) + loss_beh.view(H, -1).mean(dim=1)
        reward = (per_step * rho_t).sum() / H

        # 7. total loss
        total = cfg.consistency_coef * consistency + cfg.value_coef * value + cfg.reward_coef * reward
        return {
            "consistency": consistency,
            "value": value,
            "reward": reward,
            "total": total,
            "zs": zs.detach(),
            "rewards": rewards,
            "td_targets": td_targets,
            "q_logits": q_logits.detach(),
            "reward_loss_expert": (loss_exp.view(H, -1).mean(dim=1) * rho_t).sum().detach() / H,
            "reward_loss_behavioral": (loss_beh.view(H, -1).mean(dim=1) * rho_t).sum().detach() / H,
        }

    def policy_loss(self, zs: Tensor, noise: UpdateNoise, update_scale: bool = True) -> Tensor:
        """Step 8 loss: ``mean_t rho^t mean_i(entropy_coef log pi(a|z) - Q_min(z, a) / S)``, ``a ~ pi(z)``.

        ``zs [H+1, N, L]`` are detached latents. ``S`` is updated first from the Q values
        of step 0 (when ``update_scale``).
        """
        cfg = self.cfg
        _, a, log_prob, _ = self.model.pi(zs, eps=noise.pi_eps)
        q = self.model.Q(zs, a, "min", heads=noise.pi_heads)  # [H+1, N]
        if update_scale:
            self.scale.update(q[0])
        q = self.scale(q)
        rho_t = cfg.rho ** torch.arange(zs.shape[0], device=zs.device, dtype=torch.float32)
        return ((cfg.entropy_coef * log_prob - q).mean(dim=1) * rho_t).mean()

    def update(
        self, behavioral_batch: dict, expert_batch: dict, generator: Optional[torch.Generator] = None
    ) -> dict[str, float]:
        """One update, SPEC section 3 steps 1-9. Returns the statistics as floats."""
        cfg, m = self.cfg, self.model
        obs, action, nb = self._concat(behavioral_batch, expert_batch)
        noise = self.draw_noise(obs.shape[1], generator)
        m.train(True)  # Q dropout on for the value and policy losses (as released)
        try:
            # steps 1-7: world model, Q ensemble and predictors
            losses = self.compute_losses(obs, action, nb, noise)
            self.optim.zero_grad(set_to_none=True)
            losses["total"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self._wm_params, cfg.grad_clip_norm)
            self.optim.step()
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
            self.pi_scheduler.step()

            # step 9: Polyak-update the target Qs
            m.soft_update_target_Q()
        finally:
            m.train(False)
        self.step += 1

        rewards = losses["rewards"]
        q_scalar = m.q_value(losses["q_logits"]).mean(dim=0)  # mean over heads: [H, N]
        return {
            "consistency_loss": float(losses["consistency"].detach()),
            "value_loss": float(losses["value"].detach()),
            "reward_loss": float(losses["reward"].detach()),
            "reward_loss_expert": float(losses["reward_loss_expert"]),
            "reward_loss_behavioral": float(losses["reward_loss_behavioral"]),
            "pi_loss": float(pi_loss.detach()),
            "total_loss": float(losses["total"].detach()),
            "grad_norm": float(grad_norm),
            "pi_grad_norm": float(pi_grad_norm),
            "reward_expert": float(rewards[:, nb:].mean()),
            "reward_behavioral": float(rewards[:, :nb].mean()),
            "q_gap": float(q_scalar[:, nb:].mean() - q_scalar[:, :nb].mean()),
            "td_target": float(losses["td_targets"].mean()),
            "pi_scale": float(self.scale.value),
            "lr": float(self.optim.param_groups[1]["lr"]),
            "pi_lr": float(self.pi_optim.param_groups[0]["lr"]),
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume; only tensors, containers and primitives (``weights_only`` safe)."""
        return {
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pi_scheduler": self.pi_scheduler.state_dict(),
            "scale": self.scale.value.detach().clone(),
            "step": int(self.step),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict` (the stored ``config`` is informational and not applied)."""
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pi_scheduler.load_state_dict(state["pi_scheduler"])
        self.scale.value.copy_(state["scale"])
        self.step = int(state["step"])
        self.planner.reset()


__all__ = ["CDREDAgent", "RunningScale", "UpdateNoise"]
