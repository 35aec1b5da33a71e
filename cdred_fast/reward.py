"""The CDRED reward model (SPEC.md section 2).

``K`` random target networks ``f_k`` that are never trained, an expert predictor
``f_phi`` and a behavioural predictor ``f_psi``, all on the same input ``x``.
In the agent ``x = [z ; a]`` is the latent state-action pair; the module itself
does not care what ``x`` is, so the paper's ablation with a reward on raw
observations (``x = [s ; a]``, ``CDREDConfig.reward_input = "obs"``) builds it with
``in_dim = obs_dim + action_dim`` and feeds observations.

The bonus / reward equations (Eq. 7, Eq. 8) live in :mod:`cdred_fast.reference`
and :mod:`cdred_fast.ops`; this module only evaluates the networks and calls
``ops.cdred_reward``. The ablations are config switches:

* ``zeta = 1``: the uncoupled RED-style reward ``g(-sigma * b_phi)``;
* ``g = "exp"``: the exponential shaping;
* ``alpha``, ``sigma``, ``num_targets``: as in the paper's sweeps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import ops
from .config import CDREDConfig
from .layers import Ensemble, mlp, target_init_, trunc_normal_init_


class CDREDReward(nn.Module):
    """Targets, predictors, predictor loss (Eq. 6) and reward (Eq. 7) of SPEC section 2.

    Args:
        cfg: the config (``num_targets, rnd_dim, rnd_target_hidden, rnd_predictor_hidden,
            alpha, zeta, sigma, g, reward_eps, kernels``).
        in_dim: size of the input ``x`` (``latent_dim + action_dim`` in the agent).
    """

    def __init__(self, cfg: CDREDConfig, in_dim: int):
        super().__init__()
        self.cfg = cfg
        self.in_dim = int(in_dim)
        self.num_targets = cfg.num_targets
        self.out_dim = cfg.rnd_dim
        # K fixed random targets, one vectorised module. They are parameters with
        # requires_grad=False, so they are saved in state_dict, move with .to(),
        # and no optimiser ever sees them.
        targets = [target_init_(mlp(in_dim, cfg.rnd_target_hidden, cfg.rnd_dim)) for _ in range(cfg.num_targets)]
        self.target_nets = Ensemble(targets).requires_grad_(False)
        self.expert_predictor = trunc_normal_init_(mlp(in_dim, cfg.rnd_predictor_hidden, cfg.rnd_dim))  # f_phi
        self.behavioral_predictor = trunc_normal_init_(mlp(in_dim, cfg.rnd_predictor_hidden, cfg.rnd_dim))  # f_psi

    def predictor_parameters(self):
        """The trainable parameters (both predictors)."""
        yield from self.expert_predictor.parameters()
        yield from self.behavioral_predictor.parameters()

    def impl(self, device=None) -> str:
        """The ``impl`` the reward ops run with on ``device``: :func:`cdred_fast.ops.resolve_impl`
        of the config's ``kernels``."""
        return ops.resolve_impl(self.cfg.kernels, device)

    # ------------------------------------------------------------------ targets
    # Parameter lists in the layout of ops.ensemble_mlp (views: no copies; gradients reach
    # the Parameters through them).
    def target_params(self) -> ops.EnsembleParams:
        """The K targets as one ensemble."""
        layers = list(self.target_nets.layers)
        hidden = layers[:-1]
        ln_eps = hidden[0].ln_eps if hidden else 1e-5
        return ops.EnsembleParams(
            [l.weight for l in layers],
            [l.bias for l in layers],
            [l.ln_weight for l in hidden],
            [l.ln_bias for l in hidden],
            ln_eps,
        )

    @staticmethod
    def _mlp_params(net: nn.Sequential) -> ops.EnsembleParams:
        """One :func:`cdred_fast.layers.mlp` as an E = 1 ensemble (``unsqueeze(0)`` views)."""
        layers = list(net)
        hidden = layers[:-1]
        return ops.EnsembleParams(
            [m.weight.unsqueeze(0) for m in layers],
            [m.bias.unsqueeze(0) for m in layers],
            [m.ln.weight.unsqueeze(0) for m in hidden],
            [m.ln.bias.unsqueeze(0) for m in hidden],
            hidden[0].ln.eps if hidden else 1e-5,
        )

    def predictor_params(self) -> tuple[ops.EnsembleParams, ops.EnsembleParams]:
        """``(expert, behavioural)`` predictor parameters, each as an E = 1 ensemble."""
        return self._mlp_params(self.expert_predictor), self._mlp_params(self.behavioral_predictor)

    @torch.no_grad()
    def targets(self, x: Tensor) -> Tensor:
        """Outputs of the K targets, constants: ``x [..., in] -> [K, ..., D]`` (``ops.ensemble_mlp``)."""
        flat = x.reshape(-1, x.shape[-1])
        out = ops.ensemble_mlp(flat, *self.target_params(), impl=self.impl(x.device))
        return out.reshape(out.shape[0], *x.shape[:-1], out.shape[-1])

    @torch.no_grad()
    def _predict(self, predictor: nn.Sequential, x: Tensor) -> Tensor:
        """A predictor's output without gradient through ``ops.ensemble_mlp``: ``[..., in] -> [..., D]``."""
        flat = x.reshape(-1, x.shape[-1])
        out = ops.ensemble_mlp(flat, *self._mlp_params(predictor), impl=self.impl(x.device))[0]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    # ------------------------------------------------------------------ Eq. 6
    def predictor_loss(
        self,
        x_expert: Tensor,
        x_behavioral: Tensor,
        generator: Optional[torch.Generator] = None,
        idx_expert: Optional[Tensor] = None,
        idx_behavioral: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sample predictor losses of SPEC section 2 (paper Eq. 6).

        For each sample ``i`` one target index ``k_i ~ Uniform{0..K-1}`` is drawn
        (or taken from ``idx_*``) and ``l_i = (1/D) * ||f(x_i) - f_{k_i}(x_i)||^2``,
        with ``f = f_phi`` on the expert inputs and ``f = f_psi`` on the behavioural
        ones. Targets are constants; the gradient reaches the predictors and, through
        ``x``, whatever produced ``x``.

        Args:
            x_expert: ``[N_e, in]``. x_behavioral: ``[N_b, in]``.
            generator: optional ``torch.Generator`` for the index draws.
            idx_expert, idx_behavioral: explicit target indices ``[N_e]`` / ``[N_b]``.

        Returns: ``(loss_expert [N_e], loss_behavioral [N_b])``; the caller averages
        (and weights by ``rho^t``), then adds the two.
        """
        loss_expert = self._single_loss(self.expert_predictor, x_expert, generator, idx_expert)
        loss_behavioral = self._single_loss(self.behavioral_predictor, x_behavioral, generator, idx_behavioral)
        return loss_expert, loss_behavioral

    def _single_loss(self, predictor: nn.Module, x: Tensor, generator, idx: Optional[Tensor]) -> Tensor:
        n = x.shape[0]
        if idx is None:
            idx = torch.randint(self.num_targets, (n,), generator=generator, device=_gen_device(generator, x))
        return self._loss_against(predictor(x), self.targets(x), idx)

    # ------------------------------------------------------------------ training path
    def reward_and_predictor_loss(
        self, x: Tensor, n_behavioral: int, idx_expert: Tensor, idx_behavioral: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rewards of every sample and both predictor losses from ONE evaluation of the targets.

        ``x [..., M, in]``: along the second-to-last axis the first ``n_behavioral`` samples are
        behavioural, the rest expert (the agent's concatenation order). The result equals
        ``self(x)`` and ``predictor_loss`` on the two halves with the given target
        indices (``idx_expert [..., M - nb]``, ``idx_behavioral [..., nb]``), but the K targets
        run once instead of twice and each predictor runs with gradient only on the half it is
        trained on; its output on the other half only enters the reward, which has no gradient.

        Returns: ``(rewards [..., M], loss_expert [..., M - nb], loss_behavioral [..., nb])``.
        """
        nb = int(n_behavioral)
        cfg = self.cfg
        targets = self.targets(x.detach())  # [K, ..., M, D], constants
        x_beh, x_exp = x[..., :nb, :], x[..., nb:, :]
        f_phi_exp = self.expert_predictor(x_exp)  # f_phi, trained on the expert samples
        f_psi_beh = self.behavioral_predictor(x_beh)  # f_psi, trained on the behavioural samples
        with torch.no_grad():
            f_phi = torch.cat([self._predict(self.expert_predictor, x_beh.detach()), f_phi_exp.detach()], dim=-2)
            f_psi = torch.cat([f_psi_beh.detach(), self._predict(self.behavioral_predictor, x_exp.detach())], dim=-2)
            D = f_phi.shape[-1]
            rewards = ops.cdred_reward(
                f_phi.reshape(-1, D),
                f_psi.reshape(-1, D),
                targets.reshape(targets.shape[0], -1, D),
                cfg.alpha,
                cfg.zeta,
                cfg.sigma,
                cfg.g,
                cfg.reward_eps,
                impl=self.impl(x.device),
            ).reshape(x.shape[:-1])
        loss_expert = self._loss_against(f_phi_exp, targets[..., nb:, :], idx_expert)
        loss_behavioral = self._loss_against(f_psi_beh, targets[..., :nb, :], idx_behavioral)
        return rewards, loss_expert, loss_behavioral

    @staticmethod
    def _loss_against(pred: Tensor, targets: Tensor, idx: Tensor) -> Tensor:
        """``(1/D) ||pred_i - f_{k_i}(x_i)||^2`` with ``targets [K, ..., n, D]`` and ``idx [..., n]``."""
        idx = idx.to(pred.device).long()
        chosen = torch.take_along_dim(targets, idx.unsqueeze(0).unsqueeze(-1), dim=0)[0]  # [..., n, D]
        return (pred - chosen).pow(2).mean(dim=-1)

    # ------------------------------------------------------------------ Eq. 7
    def params_in(self, dtype: torch.dtype) -> tuple[ops.EnsembleParams, tuple[ops.EnsembleParams, ops.EnsembleParams]]:
        """``(targets, (expert, behavioural))`` parameters in ``dtype``: the parameters themselves
        in their own dtype, otherwise rounded copies (bfloat16 planning), made once and kept until
        a parameter changes (an optimiser step or ``load_state_dict`` bumps its version) or moves;
        inside ``torch.compile`` or a CUDA-graph capture, made afresh by the traced graph."""
        targets, predictors = self.target_params(), self.predictor_params()
        if dtype == targets.weights[0].dtype:
            return targets, predictors

        def cast(p: ops.EnsembleParams) -> ops.EnsembleParams:
            return ops.EnsembleParams(*([t.detach().to(dtype) for t in group] for group in p[:4]), p.ln_eps)

        # traced, or recorded in a CUDA graph (capture_graph): the casts become part of the graph, so
        # that every replay rounds the parameters as they are then (a cached copy would go stale)
        capturing = targets.weights[0].is_cuda and torch.cuda.is_current_stream_capturing()
        if torch.compiler.is_compiling() or capturing:
            return cast(targets), (cast(predictors[0]), cast(predictors[1]))
        key = (dtype, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        cached = getattr(self, "_params_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, (cast(targets), (cast(predictors[0]), cast(predictors[1]))))
            self._params_cache = cached
        return cached[1]

    @torch.no_grad()
    def forward(
        self,
        x: Tensor,
        impl: Optional[str] = None,
        x_shared: Optional[Tensor] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        """CDRED reward ``R(x)`` of SPEC Eq. 7 (no gradient): ``x [..., in] -> [...]``.

        Targets, predictors and the reward run through ``ops.rnd_reward``. ``x_shared [I_s]``,
        when given, is the first ``I_s`` input features of every row (``x`` then holds the
        remaining ones): the planning case ``x = [z ; a]`` with one ``z`` for all rows, where
        the ``z`` part of every first layer is computed once. ``impl`` overrides the config's
        kernel choice (``"fused"`` / ``"reference"``). ``dtype=torch.bfloat16`` runs the
        networks in bfloat16 (``CDREDConfig.planning_precision``; weights rounded once per
        change, :meth:`params_in`) and returns the reward in float32; None: the parameters' dtype.
        """
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        cfg = self.cfg
        if dtype is None:
            targets, predictors = self.target_params(), self.predictor_params()
        else:
            targets, predictors = self.params_in(dtype)
            flat = flat.to(dtype)
            x_shared = None if x_shared is None else x_shared.to(dtype)
        r = ops.rnd_reward(
            flat,
            targets,
            predictors,
            cfg.alpha,
            cfg.zeta,
            cfg.sigma,
            cfg.g,
            cfg.reward_eps,
            x_shared=x_shared,
            impl=impl if impl is not None else self.impl(flat.device),
        )
        return r.reshape(lead)


def _gen_device(generator: Optional[torch.Generator], like: Tensor):
    """Random numbers are drawn on the generator's device (moved to ``like``'s afterwards)."""
    return generator.device if generator is not None else like.device


__all__ = ["CDREDReward"]
