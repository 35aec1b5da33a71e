"""The RND ensemble ops refuse bad inputs with errors that name the argument, on both implementations."""

import math

import pytest
import torch
from test_rnd_ops import TOL, _case, _params, _rows
from testing_utils import needs_cuda

from cdred_fast import ops


# ----------------------------------------------------------------------------- bad inputs
def _good():
    x, ws, bs, lws, lbs, _ = _case(3, 4, [5, 6, 2], "shared-rows", "none", torch.float32, "cpu")
    return dict(x=x, weights=ws, biases=bs, ln_weights=lws, ln_biases=lbs, ln_eps=1e-5, x_shared=None)


def _set(key, fn):
    return lambda a: a.update({key: fn(a)})


def _set_item(key, i, fn):
    def mutate(a):
        lst = list(a[key])
        lst[i] = fn(lst[i])
        a[key] = lst

    return mutate


BAD_CASES = [
    # (description, mutator, exception type, message fragment)
    ("x 1-D", _set("x", lambda a: a["x"][0]), ValueError, "'?x'? must have shape"),
    ("x 4-D", _set("x", lambda a: a["x"][None, None]), ValueError, "'?x'? must have shape"),
    ("x int", _set("x", lambda a: a["x"].long()), TypeError, "'?x'? must be float32"),
    ("x half", _set("x", lambda a: a["x"].half()), TypeError, "'?x'? must be float32"),
    ("x features", _set("x", lambda a: a["x"][:, :4]), ValueError, "'?x'? has 4 features"),
    ("x per-member E", _set("x", lambda a: a["x"].expand(2, -1, -1)), ValueError, "'?x'? has shape"),
    ("weights empty", _set("weights", lambda a: []), ValueError, "'?weights'? must hold at least one layer"),
    ("weights[1] 2-D", _set_item("weights", 1, lambda w: w[0]), ValueError, r"weights\[1\]'? must have shape"),
    ("weights[1] in", _set_item("weights", 1, lambda w: w[:, :, :5]), ValueError, r"weights\[1\]'? has shape"),
    ("weights[1] E", _set_item("weights", 1, lambda w: w[:2]), ValueError, r"weights\[1\]'? has E = 2"),
    ("weights[0] E=0", lambda a: a.update(weights=[w[:0] for w in a["weights"]]), ValueError, r"E >= 1"),
    ("weights[0] dtype", _set_item("weights", 0, lambda w: w.double()), TypeError, r"weights\[0\]'? has dtype"),
    (
        "biases count",
        _set("biases", lambda a: a["biases"][:1]),
        ValueError,
        "'?biases'? must hold one tensor per layer",
    ),
    ("biases[0] shape", _set_item("biases", 0, lambda b: b[:, :3]), ValueError, r"biases\[0\]'? must have shape"),
    ("biases[1] dtype", _set_item("biases", 1, lambda b: b.double()), TypeError, r"biases\[1\]'? has dtype"),
    (
        "ln_weights count",
        _set("ln_weights", lambda a: []),
        ValueError,
        "'?ln_weights'? must hold one tensor per hidden",
    ),
    ("ln_biases count", _set("ln_biases", lambda a: a["ln_biases"] * 2), ValueError, "'?ln_biases'? must hold one"),
    (
        "ln_weights[0] shape",
        _set_item("ln_weights", 0, lambda t: t[:1]),
        ValueError,
        r"ln_weights\[0\]'? must have shape",
    ),
    ("ln_biases[0] dtype", _set_item("ln_biases", 0, lambda t: t.double()), TypeError, r"ln_biases\[0\]'? has dtype"),
    ("ln_eps negative", _set("ln_eps", lambda a: -1.0), ValueError, "'?ln_eps'? must be finite"),
    ("ln_eps nan", _set("ln_eps", lambda a: math.nan), ValueError, "'?ln_eps'? must be finite"),
    ("x_shared 2-D", _set("x_shared", lambda a: torch.zeros(1, 2)), ValueError, "'?x_shared'? must have shape"),
    ("x_shared too long", _set("x_shared", lambda a: torch.zeros(5)), ValueError, "'?x_shared'? has 5 features"),
    (
        "x_shared dtype",
        _set("x_shared", lambda a: torch.zeros(2, dtype=torch.float64)),
        TypeError,
        "'?x_shared'? has dtype",
    ),
    ("x_shared + full x", _set("x_shared", lambda a: torch.zeros(2)), ValueError, "'?x'? has 5 features"),
]


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("desc,mutate,exc,fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_inputs_raise_named_errors_in_wrapper(desc, mutate, exc, fragment, impl):
    args = _good()
    mutate(args)
    with pytest.raises(exc, match=fragment):
        ops.ensemble_mlp(**args, impl=impl)


@pytest.mark.parametrize("desc,mutate,exc,fragment", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_inputs_raise_named_errors_in_kernel(desc, mutate, exc, fragment):
    """The C++ kernel checks its inputs itself (direct torch.ops calls skip the wrapper)."""
    args = _good()
    mutate(args)
    with pytest.raises(exc, match="cdred_fast::ensemble_mlp: argument .*" + fragment.replace("'?", "'")):
        torch.ops.cdred_fast.ensemble_mlp.default(*args.values())


def test_bad_wrapper_only_arguments():
    a = _good()
    with pytest.raises(ValueError, match="impl"):
        ops.ensemble_mlp(**a, impl="cuda")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.ensemble_mlp(**{**a, "x": a["x"].numpy()})
    with pytest.raises(TypeError, match="weights must be a list or tuple"):
        ops.ensemble_mlp(**{**a, "weights": a["weights"][0]})
    with pytest.raises(TypeError, match="targets_params"):
        ops.rnd_reward(a["x"], a["weights"], (a["weights"], a["biases"], a["ln_weights"], a["ln_biases"]))
    t = (a["weights"], a["biases"], a["ln_weights"], a["ln_biases"])  # E = 3
    with pytest.raises(ValueError, match="predictors_params must stack exactly 2"):
        ops.rnd_reward(a["x"], t, t)
    with pytest.raises(ValueError, match=r"predictors_params\[0\] must hold ONE predictor"):
        ops.rnd_reward(a["x"], t, (t, t))


def test_ensemble_params_bundle():
    """EnsembleParams unpacks into ensemble_mlp, takes a plain 4- or 5-tuple (ln_eps 1e-5 by default),
    and rnd_reward gives the same reward for bundles and plain tuples."""
    targets = ops.EnsembleParams.of(_params(3, [6, 8, 4], seed=2), "targets")
    assert targets.ln_eps == 1e-5 and targets.members() == 3 and len(targets.tensors()) == 2 + 2 + 1 + 1
    assert ops.EnsembleParams.of((*targets[:4], 1e-3)).ln_eps == 1e-3
    with pytest.raises(TypeError, match=r"targets must be a tuple .* of length 3"):
        ops.EnsembleParams.of(targets[:3], "targets")
    x = _rows(11, 6)
    torch.testing.assert_close(ops.ensemble_mlp(x, *targets), ops.ensemble_mlp(x, *targets[:4], 1e-5))
    preds = [ops.EnsembleParams.of(_params(1, [6, 8, 4], seed=s)) for s in (3, 4)]
    want = ops.rnd_reward(x, tuple(targets), [tuple(p) for p in preds])
    torch.testing.assert_close(ops.rnd_reward(x, targets, tuple(preds)), want)


@pytest.mark.cuda
@needs_cuda
def test_mixed_devices_rejected():
    a = _good()
    a["weights"] = [a["weights"][0].cuda(), a["weights"][1]]
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        ops.ensemble_mlp(**a)
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        torch.ops.cdred_fast.ensemble_mlp.default(*a.values())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("x_mode", ["shared-rows", "per-member"])
def test_cuda_past_the_grid_cap(x_mode):
    """Sizes past the launch caps of the shared row kernel (csrc/common/ln_mish_cuda.cu), so the grid-stride loops run more than once:
    the LayerNorm-Mish epilogue (one warp per (member, row), at most 65535 blocks of 8 warps)
    over E * N = 600000 segments, in place for per-member rows."""
    E, N, dims = 2, 300_000, [3, 4, 2]
    assert E * N > 65535 * 8
    x, ws, bs, lws, lbs, _ = _case(E, N, dims, x_mode, "none", torch.float64, "cuda")
    fused = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5)
    ref = ops.ensemble_mlp(x, ws, bs, lws, lbs, 1e-5, impl="reference")
    torch.testing.assert_close(fused, ref, **TOL[torch.float64])
