"""Fused vs reference agent updates (issue "fused kernels"): with the same weights, batches
and random draws, ``kernels="fused"`` and ``kernels="reference"`` give the same update.

What differs between the two agents in an update: every Block's LayerNorm -> Mish, forward
and backward (``ops.layernorm_mish``: encoder, dynamics, Q heads, policy, predictors), the K
target networks and the predictors (``ops.ensemble_mlp``) and the CDRED reward of the TD
targets (``ops.cdred_reward``). Their values differ by rounding (the fused kernels block the
GEMMs and sum in another order), so the comparison has a tolerance, not bitwise equality.

The random draws of an update, and how both agents get the same ones:

* ``agent.draw_noise`` (TD-target and policy-loss noise, the two Q-head pairs, the target
  index of every predictor-loss sample): from the ``generator`` passed to ``update``; a
  generator seeded alike in both agents.
* Q dropout (online Q heads in training mode, in the value loss and the policy loss): torch's
  global RNG, but the two kernel settings draw their masks differently (the fused Blocks
  sparsely on the CPU, ``layers.dropout_positions``). The test records the dropped positions
  of every mask the fused agent draws and replays them, in order, in the reference agent's
  ``layers.block_dropout``, applied as ``F.dropout`` applies its mask.
* (the pixel encoder's random shift also uses the global RNG; state observations here.)

The test records the noise of both agents and checks that it is bitwise identical, and the
reference agent drops exactly what the fused one dropped, so what is compared is the
arithmetic alone.

Tolerance, normwise: ``max|fused - reference| <= TOL * scale``. The scale of a recorded tensor
(latents, rewards, TD targets, Q logits) is its largest magnitude; of a statistic, its own
magnitude, or for a mean or difference of signed values the largest magnitude it is made of
(``q_gap``: max |Q|; ``pi_loss``, a mean of ``alpha log pi - Q / S``: max |Q| / S;
``td_target``: max |TD target|; ``reward_*``: max |reward|); parameters
and optimiser moments are compared per network (encoder, dynamics, Qs, target Qs, pi, each
predictor, the targets), the scale being the network's largest entry. Per network, because
Adam turns the rounding of a gradient element near 0 into a step error of up to ~1e-3 lr: large
against a bias that started at 0 and has moved by a few steps of ~lr, small against the weights.

Measured on CPU (TINY model, Q heads perturbed as in ``_agent``, 3 updates): the largest
normwise error is at most 5.6e-5 over 200 seeds (float32) and 1.3e-13 over 100 seeds
(float64): ~1e3 units of roundoff, from Adam's amplification above (measured with the fused
agent's sparse dropout masks, its dropout scale folded into the Q heads' first product and
torch's fused Adam; before those two changes the worst was 4.8e-5 and 1.4e-13, and with
``F.dropout``'s masks 4.7e-5 and 9.7e-14).
``TOL``: 1e-4 in float32 (1.8x the worst seed; the op-level tolerance of ``rnd_reward`` in
test_rnd_ops.py), 1e-12 in float64 (7x). A relative error of 1e-4 in the fused Blocks (3.5e-4
here) or in the fused ensemble forward (2.4e-4), or of 1e-10 in a float64 fused reward, fails
the test (checked below).
The CUDA parameter has not run yet (no GPU so far).

The float64 variant converts the model with ``.double()`` and keeps the observations in
float64 (the agent has no dtype option: ``_obs_tensor`` casts state observations to
float32, and the running policy scale ``S`` stays float32 in both agents).
"""

from __future__ import annotations

import pytest
import torch
from testing_utils import DEVICES, TINY

from cdred_fast import layers, ops
from cdred_fast.agent import CDREDAgent
from cdred_fast.config import CDREDConfig
from cdred_fast.layers import two_hot_inv

OBS, ACT = 6, 2
UPDATES = 3
TOL = {torch.float32: 1e-4, torch.float64: 1e-12}
RECORDED = ("zs", "rewards", "td_targets", "q_logits")
NOISE_FIELDS = ("td_eps", "td_heads", "target_idx", "pi_eps", "pi_heads")


def _agent(kernels: str, device: str, dtype: torch.dtype, seed: int = 0) -> CDREDAgent:
    torch.manual_seed(seed)
    agent = CDREDAgent(CDREDConfig(kernels=kernels, episode_length=100, **TINY), OBS, ACT, device=device)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # the last Q layer starts at zero: give the Q heads (and targets) some structure
        for p, pt in zip(agent.model.Qs.parameters(), agent.model.target_Qs.parameters()):
            p.add_((torch.randn(p.shape, generator=g) * 0.3).to(device))
            pt.add_((torch.randn(p.shape, generator=g) * 0.3).to(device))
    if dtype == torch.float64:
        agent.model.double()  # in place: the optimisers keep the same Parameter objects
        agent._obs_tensor = lambda obs: torch.as_tensor(obs, device=agent.device, dtype=torch.float64)
    return agent


def _batches(B: int, H: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    beh = {"obs": torch.randn(H + 1, B, OBS, generator=g), "action": torch.rand(H, B, ACT, generator=g) * 2 - 1}
    exp = {"obs": torch.randn(H + 1, B, OBS, generator=g) + 1.0, "action": torch.rand(H, B, ACT, generator=g) * 2 - 1}
    return beh, exp


def _record(agent: CDREDAgent) -> dict:
    """Wrap the agent's draw_noise and compute_losses to keep each update's draws and tensors."""
    log = {"noise": [], "losses": []}
    draw, losses = agent.draw_noise, agent.compute_losses

    def draw_noise(n, generator=None):
        noise = draw(n, generator)
        log["noise"].append(noise)
        return noise

    def compute_losses(*args, **kwargs):
        out = losses(*args, **kwargs)
        log["losses"].append({k: out[k].detach().clone() for k in RECORDED})
        return out

    agent.draw_noise, agent.compute_losses = draw_noise, compute_losses
    return log


def _normwise_error(a, b, scale: float = 0.0) -> float:
    """``max|a - b| / max(max|b|, scale)`` (0 when both are 0); checks shape and dtype first."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    err = float((a - b).abs().max()) if a.numel() else 0.0
    ref = max(float(b.abs().max()) if b.numel() else 0.0, scale)
    return 0.0 if err == 0.0 else err / ref if ref > 0 else float("inf")


def _net(name: str) -> str:
    """The network a parameter belongs to: ``reward_model.expert_predictor.1.bias`` ->
    ``reward_model.expert_predictor``, ``Qs.layers.0.weight`` -> ``Qs``, ``optim exp_avg encoder.0.weight`` ->
    ``optim exp_avg encoder``."""
    head, _, name = name.rpartition(" ")
    parts = name.split(".")
    net = ".".join(parts[:2] if parts[0] == "reward_model" else parts[:1])
    return f"{head} {net}".strip()


def _group(items_f, items_r) -> dict[str, tuple[list, list]]:
    """``{network: ([fused tensors], [reference tensors])}`` from two ``(name, tensor)`` lists."""
    out: dict[str, tuple[list, list]] = {}
    for (n_f, t_f), (n_r, t_r) in zip(items_f, items_r):
        assert n_f == n_r
        out.setdefault(_net(n_f), ([], []))
        out[_net(n_f)][0].append(t_f)
        out[_net(n_f)][1].append(t_r)
    return out


def compare_updates(device: str, dtype: torch.dtype, monkeypatch, seed: int = 0) -> dict[str, float]:
    """Run UPDATES updates of a fused and a reference agent with the same weights, batches and
    draws; check that the draws were the same; return the normwise error of every compared
    quantity (update statistics and recorded tensors per update, then the final parameters,
    the reward predictors, the optimiser moments and the policy scale)."""
    fused, ref = _agent("fused", device, dtype, seed), _agent("reference", device, dtype, seed)
    if fused.model.reward_model.impl(device) != "fused":
        pytest.skip(f"the fused kernels are not available on {device} (resolve_impl fell back to the reference)")
    assert ref.model.reward_model.impl(device) == "reference"
    ref.model.load_state_dict(fused.model.state_dict())

    masks: list = []  # every Q-dropout mask of the fused agent, in draw order: (positions, numel, p)
    replayed: list = []  # the masks the reference agent applied
    block_dropout, dropout_positions = layers.block_dropout, layers.dropout_positions

    def record(numel, p):  # the fused Blocks draw every mask through layers.dropout_positions
        positions = dropout_positions(numel, p)
        masks.append((positions, numel, p))
        return positions

    def record_dense(x, p, training, kernels):  # on CUDA the fused Blocks use F.dropout: draw its mask here
        if not (training and p > 0):
            return block_dropout(x, p, training, kernels)
        drop = torch.rand(x.shape, device=x.device) < p
        masks.append((drop.flatten().nonzero().squeeze(1), x.numel(), p))
        return x * (~drop).to(x.dtype).div_(1 - p)

    def replay(x, p, training, kernels):
        if not (training and p > 0):
            return block_dropout(x, p, training, kernels)
        positions, numel, p_f = masks[len(replayed)]
        assert numel == x.numel() and p == p_f
        # the positions index the fused tensor in the order of the reference's x (row-major [E, N, D])
        mask = torch.zeros(numel, dtype=torch.bool, device=x.device)
        mask[positions.to(x.device)] = True
        replayed.append(positions)
        return x * (~mask.view(x.shape)).to(x.dtype).div_(1 - p)  # F.dropout's arithmetic: x * bernoulli / (1 - p)

    beh, exp = _batches(fused.cfg.batch_size, fused.cfg.horizon, seed + 1)
    logs, stats = {}, {}
    sparse = torch.device(device).type == "cpu"  # where the fused Blocks draw sparse masks (layers._sparse_dropout)
    for name, agent, (attr, wrapper) in (
        ("fused", fused, ("dropout_positions", record) if sparse else ("block_dropout", record_dense)),
        ("reference", ref, ("block_dropout", replay)),
    ):
        monkeypatch.setattr(layers, attr, wrapper)
        logs[name], stats[name] = _record(agent), []
        for step in range(UPDATES):
            torch.manual_seed(1000 * seed + step)  # the global RNG alike (dropout; pixel shifts)
            stats[name].append(agent.update(beh, exp, generator=torch.Generator().manual_seed(10 * seed + step)))
    monkeypatch.setattr(layers, "block_dropout", block_dropout)
    monkeypatch.setattr(layers, "dropout_positions", dropout_positions)

    # the same random draws: update noise bitwise equal; every fused dropout mask (which did
    # drop) replayed in the reference agent
    assert len(masks) == len(replayed) == 2 * UPDATES
    assert sum(len(pos) for pos, _, _ in masks) > 0
    for n_f, n_r in zip(logs["fused"]["noise"], logs["reference"]["noise"]):
        for field in NOISE_FIELDS:
            assert torch.equal(getattr(n_f, field), getattr(n_r, field)), field

    errors: dict[str, float] = {}
    cfg = ref.cfg
    for step in range(UPDATES):
        l_f, l_r = logs["fused"]["losses"][step], logs["reference"]["losses"][step]
        for key in RECORDED:  # latent roll-out, CDRED rewards, TD targets, Q logits of every sample
            errors[f"update {step}: {key}"] = _normwise_error(l_f[key], l_r[key])
        s_f, s_r = stats["fused"][step], stats["reference"][step]
        assert s_f.keys() == s_r.keys()
        q_max = float(two_hot_inv(l_r["q_logits"], cfg.vmin, cfg.vmax).abs().max())
        scales = {
            "q_gap": q_max,
            "pi_loss": q_max / s_r["pi_scale"],  # a mean of alpha log pi - Q / S
            "td_target": float(l_r["td_targets"].abs().max()),
            "reward_expert": float(l_r["rewards"].abs().max()),
            "reward_behavioral": float(l_r["rewards"].abs().max()),
        }
        for key in s_f:
            errors[f"update {step}: stat {key}"] = _normwise_error(s_f[key], s_r[key], scales.get(key, 0.0))

    # every parameter and buffer after the updates (target networks, Polyak targets included),
    # the reward model's predictors (what the CDRED predictor loss trains) and the optimiser
    # moments, normwise per network: a bias that started at 0 has moved by a few Adam steps
    # (~lr each), and Adam turns the rounding of a gradient element near 0 into a step error of
    # up to ~1e-3 lr, large against that bias but not against the network's weights.
    state_f, state_r = fused.model.state_dict(), ref.model.state_dict()
    assert state_f.keys() == state_r.keys()
    by_net = _group(state_f.items(), state_r.items())
    names = {id(p): n for n, p in fused.model.named_parameters()}
    for opt in ("optim", "pi_optim"):
        optim_f, optim_r = getattr(fused, opt), getattr(ref, opt)
        params = [p for g in optim_f.param_groups for p in g["params"]]
        st_f, st_r = optim_f.state_dict()["state"], optim_r.state_dict()["state"]
        assert st_f.keys() == st_r.keys() == set(range(len(params)))
        for moment in ("exp_avg", "exp_avg_sq"):
            by_net.update(
                _group(
                    [(f"{opt} {moment} {names[id(params[i])]}", st_f[i][moment]) for i in st_f],
                    [(f"{opt} {moment} {names[id(params[i])]}", st_r[i][moment]) for i in st_r],
                )
            )
    predictors = [n for n, _ in fused.model.named_parameters() if "_predictor." in n]
    assert len(predictors) > 0 and all(_net(n) in by_net for n in predictors)
    for net, (tensors_f, tensors_r) in by_net.items():
        scale = max(float(t.abs().max()) for t in tensors_r)
        errors[net] = max(_normwise_error(a, b, scale) for a, b in zip(tensors_f, tensors_r))
    errors["policy scale S"] = _normwise_error(fused.scale.value, ref.scale.value)
    assert fused.step == ref.step == UPDATES
    return errors


def _assert_within(errors: dict[str, float], tol: float) -> None:
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"normwise |fused - reference| / |reference| above {tol:g}: " + ", ".join(
        f"{k} {v:.3g}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1])[:8]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_and_reference_updates_agree(device, dtype, monkeypatch):
    errors = compare_updates(device, dtype, monkeypatch)
    networks = {
        "encoder",
        "dynamics",
        "Qs",
        "target_Qs",
        "pi_net",
        "reward_model.target_nets",
        "reward_model.expert_predictor",
        "reward_model.behavioral_predictor",
    }
    moments = {
        f"optim {m} {n}"
        for m in ("exp_avg", "exp_avg_sq")
        for n in ("encoder", "dynamics", "Qs", "reward_model.expert_predictor", "reward_model.behavioral_predictor")
    }
    assert networks | moments | {"pi_optim exp_avg pi_net", "policy scale S"} <= errors.keys()
    assert sum(k.startswith(f"update {UPDATES - 1}: stat ") for k in errors) == 17  # every statistic
    _assert_within(errors, TOL[dtype])


@pytest.mark.parametrize(
    "dtype, op, rel",
    [
        (torch.float32, "layernorm_mish", 1e-4),
        (torch.float32, "ensemble_mlp", 1e-4),
        (torch.float64, "cdred_reward", 1e-10),
    ],
    ids=["float32-layernorm_mish", "float32-ensemble_mlp", "float64-cdred_reward"],
)
def test_update_parity_sees_a_small_error_in_a_fused_op(dtype, op, rel, monkeypatch):
    """The comparison can fail: a small relative error in one fused op's output is caught
    (``layernorm_mish``: every Block of the trained networks, forward and backward;
    ``ensemble_mlp``: the K targets and the predictors; ``cdred_reward``: the TD targets' rewards)."""
    calls = {"n": 0}
    real = getattr(ops, op)

    def off(*args, impl="fused", **kwargs):
        out = real(*args, impl=impl, **kwargs)
        if impl == "fused":
            calls["n"] += 1
            out = out * (1 + rel)
        return out

    monkeypatch.setattr(ops, op, off)
    with pytest.raises(AssertionError, match=f"above {TOL[dtype]:g}"):
        _assert_within(compare_updates("cpu", dtype, monkeypatch), TOL[dtype])
    assert calls["n"] > 0
