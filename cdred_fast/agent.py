"""CDREDAgent: acting (SPEC.md section 4) and one update (SPEC.md section 3, steps 1-9).

A batch is ``{"obs": [H+1, B, *obs_shape], "action": [H, B, A]}`` (``obs_shape``
is ``(obs_dim,)`` for state, ``(3 * frame_stack, S, S)`` uint8 pixels for
``obs="rgb"``); one update takes a behavioural and an expert batch and
concatenates them along the batch axis, behavioural first (``2B`` samples).
Rewards stored in the buffers are never used by CDRED.

With ``cfg.method == "tdmpc2"`` (training RL experts) the same update runs
TD-MPC2 instead: only a behavioural batch, which must carry the environment
reward ``"reward": [H, B]``; the TD targets use that reward and the reward loss
is the reward head's ``rho^t``-weighted two-hot soft cross-entropy
``(1/H) sum_t rho^t mean_i CE(R(z_t, a_t), twohot(r_t))`` (coefficient
``reward_coef = 0.1``), in place of the CDRED predictor loss.

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

from .config import CDREDConfig, matmul_precision
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
        self.model = WorldModel(cfg, obs_dim if obs_shape is None else obs_shape, action_dim).to(self.device)
        m = self.model
        self.obs_shape: tuple[int, ...] = m.obs_shape
        self.obs_dim = m.obs_dim  # int for state observations, None for pixels
        self.action_dim = int(action_dim)
        self.discount = cfg.discount_for()
        # Step 7: Adam over encoder (lr x enc_lr_scale), dynamics, Q heads and both predictors
        # (TD-MPC2 mode: the reward head instead of the predictors).
        reward_params = m.reward_model.predictor_parameters() if m.reward_head is None else m.reward_head.parameters()
        self.optim = torch.optim.Adam(
            [
                {"params": list(m.encoder.parameters()), "lr": cfg.lr * cfg.enc_lr_scale},
                {"params": list(m.dynamics.parameters())},
                {"params": list(m.Qs.parameters())},
                {"params": list(reward_params)},
            ],
            lr=cfg.lr,
        )
        self.pi_optim = torch.optim.Adam(m.pi_net.parameters(), lr=cfg.pi_lr, eps=cfg.pi_eps)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optim, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.pi_scheduler = torch.optim.lr_scheduler.StepLR(self.pi_optim, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self._wm_params = [p for group in self.optim.param_groups for p in group["params"]]
        self.scale = RunningScale(cfg.tau, self.device)
        self.planner = MPPIPlanner(cfg, m, action_dim, self.device, discount=self.discount,
                                   capture_graph=cfg.capture_graph)
        self.step = 0  # number of updates done

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs, t0: bool = False, eval_mode: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """Action ``[A]`` (on CPU) for one observation ``[obs_dim]`` (pixels: ``[C, H, W]`` uint8).

        MPPI when ``cfg.mpc`` (SPEC section 4); otherwise the policy prior: its mean
        ``tanh(mu)`` when ``eval_mode``, a sample otherwise.
        """
        obs = self._obs_tensor(obs).reshape(1, *self.obs_shape)
        with self.model.planning(), matmul_precision(self.cfg.matmul_precision):
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
        return obs, action, behavioral_batch["obs"].shape[1]

    def _env_reward(self, batch: dict) -> Tensor:
        """TD-MPC2 mode: the batch's environment reward ``[H, B]`` on ``device``."""
        H, B = self.cfg.horizon, batch["action"].shape[1]
        if "reward" not in batch:
            raise ValueError(
                "method='tdmpc2' trains on the environment reward: behavioral_batch needs 'reward' [H, B] "
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
        """Steps 1-7 of SPEC section 3 on concatenated ``obs [H+1, N, *obs_shape]``, ``action [H, N, A]``.

        The first ``n_behavioral`` samples are behavioural, the rest expert. Returns the
        loss tensors (``consistency, value, reward, total``) and, detached, ``zs [H+1, N, L]``,
        ``rewards [H, N]``, ``td_targets [H, N]``, ``q_logits [num_q, H, N, bins]``.

        TD-MPC2 mode (``cfg.method == "tdmpc2"``): ``reward [H, N]`` is the environment
        reward; it replaces the CDRED reward in the TD target, and ``reward`` (the loss)
        is the reward head's two-hot soft cross-entropy on it.
        """
        cfg, m = self.cfg, self.model
        tdmpc2 = cfg.method == "tdmpc2"
        if tdmpc2 and reward is None:
            raise ValueError("method='tdmpc2' needs the environment reward [H, N]")
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

        if not tdmpc2:
            # Steps 3 and 6 share one evaluation of the K targets: the rewards R(z_t, a_t)
            # (no gradient) and the per-sample predictor losses on x = [z_t ; a_t].
            x = torch.cat([zs[:-1], action], dim=-1)  # [H, N, L+A]
            cdred_rewards, loss_exp, loss_beh = m.reward_model.reward_and_predictor_loss(
                x, nb, idx_expert=noise.target_idx[:, nb:], idx_behavioral=noise.target_idx[:, :nb]
            )

        with torch.no_grad():
            # 3. rewards r_t = R(z_t, a_t) on the roll-out latents (TD-MPC2: the environment reward)
            rewards = reward.detach() if tdmpc2 else cdred_rewards  # [H, N]
            # 4. TD target y_t = r_t + gamma * Q_bar_min(z'_t, pi(z'_t)), sampled policy action
            next_a = m.pi(next_z, eps=noise.td_eps)[1]
            td_targets = rewards + self.discount * m.Q(next_z, next_a, "min", target=True, heads=noise.td_heads)

        # 5. value = (1/(H num_q)) sum_t rho^t sum_q mean_i CE(Q_q(z_t, a_t), twohot(y_t))
        q_logits = m.Q(zs[:-1], action, "all")  # [num_q, H, N, bins]
        ce = soft_ce(q_logits, td_targets.unsqueeze(0), cfg.vmin, cfg.vmax)  # [num_q, H, N]
        value = (ce.mean(dim=2) * rho_t).sum() / (H * cfg.num_q)

        extra = {}
        if tdmpc2:
            # 6'. TD-MPC2 reward loss: (1/H) sum_t rho^t mean_i CE(R(z_t, a_t), twohot(r_t))
            reward_ce = soft_ce(m.reward_logits(zs[:-1], action), rewards, cfg.vmin, cfg.vmax)  # [H, N]
            reward = (reward_ce.mean(dim=1) * rho_t).sum() / H
        else:
            # 6. predictor loss (SPEC section 2) on the roll-out latents: sum_t rho^t (l_phi + l_psi) / H
            # (computed with the rewards of step 3 above, from one evaluation of the targets)
            loss_exp_t = (loss_exp.view(H, -1).mean(dim=1) * rho_t).sum() / H
            loss_beh_t = (loss_beh.view(H, -1).mean(dim=1) * rho_t).sum() / H
            reward = loss_exp_t + loss_beh_t
            extra = {"reward_loss_expert": loss_exp_t.detach(), "reward_loss_behavioral": loss_beh_t.detach()}

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
            **extra,
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
        self, behavioral_batch: dict, expert_batch: Optional[dict] = None, generator: Optional[torch.Generator] = None
    ) -> dict[str, float]:
        """One update, SPEC section 3 steps 1-9. Returns the statistics as floats.

        CDRED: a behavioural and an expert batch. TD-MPC2 mode: the behavioural batch
        alone, with ``"reward" [H, B]``; ``expert_batch`` must be None.
        """
        cfg, m = self.cfg, self.model
        tdmpc2 = cfg.method == "tdmpc2"
        if tdmpc2 and expert_batch is not None:
            raise ValueError("method='tdmpc2' trains on the environment reward alone: pass no expert_batch")
        if not tdmpc2 and expert_batch is None:
            raise ValueError("CDRED needs an expert_batch (demonstrations) besides the behavioral_batch")
        obs, action, nb = self._concat(behavioral_batch, expert_batch)
        env_reward = self._env_reward(behavioral_batch) if tdmpc2 else None
        noise = self.draw_noise(obs.shape[1], generator)
        m.train(True)  # Q dropout on (and the pixel encoder's random shift) for the losses (as released)
        try:
            with matmul_precision(cfg.matmul_precision):  # cfg.matmul_precision for every product
                # steps 1-7: world model, Q ensemble and predictors (TD-MPC2: reward head)
                losses = self.compute_losses(obs, action, nb, noise, reward=env_reward)
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
        stats = {
            "consistency_loss": float(losses["consistency"].detach()),
            "value_loss": float(losses["value"].detach()),
            "reward_loss": float(losses["reward"].detach()),
            "pi_loss": float(pi_loss.detach()),
            "total_loss": float(losses["total"].detach()),
            "grad_norm": float(grad_norm),
            "pi_grad_norm": float(pi_grad_norm),
            "reward_behavioral": float(rewards[:, :nb].mean()),
            "td_target": float(losses["td_targets"].mean()),
            "pi_scale": float(self.scale.value),
            "lr": float(self.optim.param_groups[1]["lr"]),
            "pi_lr": float(self.pi_optim.param_groups[0]["lr"]),
        }
        if not tdmpc2:
            stats.update(
                reward_loss_expert=float(losses["reward_loss_expert"]),
                reward_loss_behavioral=float(losses["reward_loss_behavioral"]),
                reward_expert=float(rewards[:, nb:].mean()),
                q_gap=float(q_scalar[:, nb:].mean() - q_scalar[:, :nb].mean()),
            )
        else:
            stats["q_value"] = float(q_scalar.mean())
        return stats

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
