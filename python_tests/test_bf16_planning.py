"""bfloat16 reward networks in planning (``CDREDConfig.planning_precision``, issue 16): the fused
ensemble ops on bfloat16 against their reference and against float32, their input checks, the
reward model's rounded-weight cache, and the agent's planning switch.

Tolerances are bfloat16's, not a CPU's: bfloat16 keeps 8 significant bits, so one rounding moves a
value by at most 2**-9 of it; the networks here round every hidden layer's output and the last
layer's, and the products accumulate in float32. Measured on an AMD EPYC (AVX512-BF16): at most
0.009 x (max |y| + 1) between fused and reference, 0.008 between either and float32, over the shapes
below. The bound 2**-5 x (max |y| + 1) leaves a factor of 3.6; a wrong layout or a lost bias is an
O(1) error.
"""

import pytest
import torch
from test_rnd_ops import _case, _params
from testing_utils import DEVICES, SMALL_MODEL

from cdred_fast import ops
from cdred_fast.agent import CDREDAgent
from cdred_fast.config import CDREDConfig
from cdred_fast.precision import cpu_native_bf16, cuda_native_bf16, planning_dtype
from cdred_fast.reward import CDREDReward

BF16_BOUND = 2.0**-5

# (E, N, dims): K = 1, one plain Linear, hidden size 1, N not a multiple of any tile or width,
# the demo preset's target shape (I = 68, hidden 64, D = 256), an empty batch
SHAPES = [
    (1, 1, [5, 3]),
    (5, 37, [9, 7, 1]),
    (1, 37, [6, 1, 1, 1, 4]),
    (2, 37, [20, 7, 512, 7, 256]),
    (5, 700, [68, 64, 64, 256]),
    (3, 0, [4, 8, 3]),
]


def _bf16(t):
    return None if t is None else t.bfloat16()


def _bf16_case(E, N, dims, x_mode, shared, device="cpu"):
    x, ws, bs, lws, lbs, xs = _case(E, N, dims, x_mode, shared, torch.float32, device)
    as_bf16 = (
        _bf16(x),
        [_bf16(t) for t in ws],
        [_bf16(t) for t in bs],
        [_bf16(t) for t in lws],
        [_bf16(t) for t in lbs],
    )
    return (x, ws, bs, lws, lbs, xs), (*as_bf16, _bf16(xs))


def _close(got, want, what):
    scale = want.abs().max().item() + 1.0 if want.numel() else 1.0
    err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
    assert err <= BF16_BOUND * scale, f"{what}: max |difference| {err:.3g} > {BF16_BOUND} x {scale:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", ["none", "A=1", "A=3"])
@pytest.mark.parametrize("x_mode", ["shared-rows", "per-member"])
@pytest.mark.parametrize("E,N,dims", SHAPES, ids=[f"E{e}-N{n}-{'x'.join(map(str, d))}" for e, n, d in SHAPES])
def test_ensemble_mlp_bf16_matches_reference_and_float32(E, N, dims, x_mode, shared, device):
    f32, b16 = _bf16_case(E, N, dims, x_mode, shared, device)
    x, ws, bs, lws, lbs, xs = b16
    fused = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs)
    ref = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, xs, impl="reference")
    assert fused.shape == (E, N, dims[-1]) and fused.dtype == torch.bfloat16 and fused.device == x.device
    _close(fused, ref, "fused vs reference, bfloat16")
    exact = ops.ensemble_mlp(*f32[:5], 1e-5, f32[5], impl="reference")
    _close(fused, exact, "fused bfloat16 vs float32")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", ["none", "A=3"])
@pytest.mark.parametrize("rows", [1, 130, 1100])  # 1100 rows: several tiles of the CPU reward buffer
def test_rnd_reward_bf16_is_float32_and_close(shared, rows, device):
    f32, b16 = _bf16_case(5, rows, [13, 64, 64, 256], "shared-rows", shared, device)
    preds32 = [_params(1, [13, 32, 256], torch.float32, device, seed=s) for s in (11, 12)]  # f_phi, f_psi
    preds16 = [[[t.bfloat16() for t in group] for group in p] for p in preds32]
    x, ws, bs, lws, lbs, xs = b16
    r_fused = ops.rnd_reward(x, (ws, bs, lws, lbs), preds16, x_shared=xs)
    r_ref = ops.rnd_reward(x, (ws, bs, lws, lbs), preds16, x_shared=xs, impl="reference")
    r_32 = ops.rnd_reward(f32[0], f32[1:5], preds32, x_shared=f32[5])
    assert r_fused.dtype == torch.float32 and r_ref.dtype == torch.float32 and r_fused.shape == (rows,)
    assert r_fused.device == x.device
    assert torch.isfinite(r_fused).all()
    # the reward sums squared differences of D = 256 outputs: compare on its own scale
    _close(r_fused, r_ref, "reward, fused vs reference, bfloat16")
    _close(r_fused, r_32, "reward, bfloat16 vs float32")


def test_bf16_ops_opcheck():
    _, (x, ws, bs, lws, lbs, xs) = _bf16_case(3, 130, [8, 12, 4], "shared-rows", "A=3")
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.cdred_fast.ensemble_mlp.default, (x, ws, bs, lws, lbs, 1e-5, xs), test_utils=tests)
    pe, pb = torch.randn(130, 4).bfloat16(), torch.randn(130, 4).bfloat16()
    args = (x, ws, bs, lws, lbs, 1e-5, pe, pb, 0.9, 0.8, 1.0, "linear", 1e-6, xs)
    torch.library.opcheck(torch.ops.cdred_fast.ensemble_reward.default, args, test_utils=tests)
    assert torch.ops.cdred_fast.ensemble_reward.default(*args).dtype == torch.float32


def test_bf16_bad_inputs_named():
    _, (x, ws, bs, lws, lbs, xs) = _bf16_case(3, 20, [8, 12, 4], "shared-rows", "none")
    # one float32 parameter among bfloat16 ones: the wrapper and the op name it
    mixed = [ws[0].float(), *ws[1:]]
    with pytest.raises(TypeError, match=r"weights\[0\] has dtype torch.float32 but x has torch.bfloat16"):
        ops.ensemble_mlp(x, mixed, bs, lws, lbs)
    with pytest.raises(TypeError, match=r"'weights\[0\]' has dtype Float but 'x' has BFloat16"):
        torch.ops.cdred_fast.ensemble_mlp.default(x, mixed, bs, lws, lbs, 1e-5, None)
    # bfloat16 is the no-gradient planning form
    with pytest.raises(TypeError, match="no-gradient planning form"):
        ops.ensemble_mlp(x, [ws[0].clone().requires_grad_(True), *ws[1:]], bs, lws, lbs)
    # the training op keeps float32 / float64 only
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.cdred_fast.layernorm_mish.default(
            torch.randn(2, 3, 4).bfloat16(), lws[0][:2, :4], lbs[0][:2, :4], 1e-5
        )
    # float16 is not a planning precision
    with pytest.raises(TypeError, match="float32, float64 or bfloat16"):
        torch.ops.cdred_fast.ensemble_mlp.default(x.half(), [w.half() for w in ws], bs, lws, lbs, 1e-5, None)


def _reward_model():
    torch.manual_seed(0)
    cfg = CDREDConfig(**SMALL_MODEL)
    return CDREDReward(cfg, cfg.latent_dim + 3)


def test_reward_model_bf16_weights_follow_the_parameters():
    """params_in(bfloat16) rounds the weights once and again after every change (optimiser step,
    load_state_dict); params_in of the parameters' own dtype is the parameters themselves."""
    m = _reward_model()
    targets, _ = m.params_in(torch.float32)
    assert targets.weights[0].data_ptr() == m.target_nets.layers[0].weight.data_ptr()  # no copy
    first = m.params_in(torch.bfloat16)
    assert m.params_in(torch.bfloat16) is first  # cached
    z, a = torch.randn(SMALL_MODEL["latent_dim"]), torch.rand(50, 3) * 2 - 1
    before = m(a, x_shared=z, dtype=torch.bfloat16)
    opt = torch.optim.Adam(m.predictor_parameters(), lr=1e-2)
    loss_e, loss_b = m.predictor_loss(
        torch.randn(64, SMALL_MODEL["latent_dim"] + 3), torch.randn(64, SMALL_MODEL["latent_dim"] + 3)
    )
    (loss_e.mean() + loss_b.mean()).backward()
    opt.step()
    after = m(a, x_shared=z, dtype=torch.bfloat16)
    assert m.params_in(torch.bfloat16) is not first
    fresh = _reward_model()
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(after, fresh(a, x_shared=z, dtype=torch.bfloat16), rtol=0, atol=0)
    assert not torch.equal(before, after)
    _close(after, m(a, x_shared=z), "reward model, bfloat16 vs float32")


def test_planning_precision_config_and_resolution():
    with pytest.raises(ValueError, match="planning_precision"):
        CDREDConfig(planning_precision="float16")
    assert planning_dtype("float32", "cpu") == torch.float32
    assert planning_dtype("bfloat16", "cpu") == torch.bfloat16
    assert planning_dtype("auto", "cpu") == (torch.bfloat16 if cpu_native_bf16() else torch.float32)
    # CUDA: bfloat16 when asked for; "auto" where the GPU has bf16 tensor cores (sm_80 and later),
    # which is False without a visible GPU
    assert planning_dtype("bfloat16", "cuda") == torch.bfloat16
    assert planning_dtype("auto", "cuda") == (torch.bfloat16 if cuda_native_bf16("cuda") else torch.float32)
    assert cuda_native_bf16("cpu") is False
    with pytest.raises(
        ValueError, match="planning_precision='bfloat16' runs on the CPU and CUDA; the model is on meta"
    ):
        planning_dtype("bfloat16", "meta")
    assert planning_dtype("auto", "meta") == torch.float32


def test_agent_plans_with_bf16_reward_networks():
    """The same agent with planning_precision bfloat16: its roll-out reward is float32 and within
    bfloat16's bound of the float32 one, and its plans are actions in [-1, 1]."""
    kw = dict(SMALL_MODEL, num_samples=64, num_elites=8, num_pi_trajs=4, dropout=0.0)
    torch.manual_seed(0)
    exact = CDREDAgent(CDREDConfig(planning_precision="float32", **kw), 6, 2)
    fast = CDREDAgent(CDREDConfig(planning_precision="bfloat16", **kw), 6, 2)
    fast.model.load_state_dict(exact.model.state_dict())
    z = exact.model.encode(torch.randn(6)).detach()
    a = torch.rand(40, 2) * 2 - 1
    fns32 = exact.rollout_functions()
    fns16 = fast.rollout_functions()
    with torch.no_grad():
        r32, r16 = fns32.shared_reward(z, a), fns16.shared_reward(z, a)
        rows32, rows16 = fns32.reward(z.expand(40, -1), a), fns16.reward(z.expand(40, -1), a)
    assert r16.dtype == torch.float32 and rows16.dtype == torch.float32
    _close(r16, r32, "agent's shared-z reward")
    _close(rows16, rows32, "agent's per-row reward")
    assert not torch.equal(r16, r32)  # it did run in bfloat16
    obs = torch.randn(6)
    for step in range(3):
        action = fast.act(obs, t0=step == 0, eval_mode=step == 2, generator=torch.Generator().manual_seed(step))
        assert action.shape == (2,) and torch.isfinite(action).all() and action.abs().max() <= 1
