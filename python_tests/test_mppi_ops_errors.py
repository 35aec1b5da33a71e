"""The MPPI ops refuse bad inputs (shapes, dtypes, devices, generators, parameters) with errors that name the argument, on both implementations."""

import pytest
import torch
from test_mppi_ops import _elites, _gen, _good
from testing_utils import cpu_path_only

from cdred_fast import ops

# ============================================================================ bad inputs


BAD_CASES = [
    # (op, description, mutate(args), exception type, message fragment)
    ("sample", "mean 1-D", lambda a: a.update(mean=a["mean"][0, 0]), ValueError, "mean"),
    ("sample", "std shape", lambda a: a.update(std=a["std"][:, :2]), ValueError, "std"),
    ("sample", "int dtype", lambda a: a.update(mean=a["mean"].long()), TypeError, "mean"),
    ("sample", "mixed dtype", lambda a: a.update(std=a["std"].double()), TypeError, "std"),
    ("sample", "num_samples < 0", lambda a: a.update(num_samples=-1), ValueError, "num_samples"),
    ("elite", "values 3-D", lambda a: a.update(values=a["values"][None]), ValueError, "values"),
    ("elite", "actions 3-D", lambda a: a.update(actions=a["actions"][0]), ValueError, "actions"),
    ("elite", "N mismatch", lambda a: a.update(actions=a["actions"][:, :, :5]), ValueError, "actions"),
    ("elite", "B mismatch", lambda a: a.update(actions=a["actions"][:1]), ValueError, "actions"),
    ("elite", "half dtype", lambda a: a.update(values=a["values"].half()), TypeError, "values"),
    ("elite", "mixed dtype", lambda a: a.update(actions=a["actions"].double()), TypeError, "actions"),
    ("elite", "k = 0", lambda a: a.update(num_elites=0), ValueError, "num_elites"),
    ("elite", "k > N", lambda a: a.update(num_elites=7), ValueError, "num_elites"),
    ("elite", "temperature 0", lambda a: a.update(temperature=0.0), ValueError, "temperature"),
    ("elite", "temperature nan", lambda a: a.update(temperature=float("nan")), ValueError, "temperature"),
    ("elite", "temperature inf", lambda a: a.update(temperature=float("inf")), ValueError, "temperature"),
    ("elite", "temperature > f32", lambda a: a.update(temperature=1e39), ValueError, "temperature"),
    ("elite", "min_std 0", lambda a: a.update(min_std=0.0), ValueError, "min_std"),
    ("elite", "max_std < min", lambda a: a.update(max_std=0.01), ValueError, "max_std"),
    ("elite", "max_std inf", lambda a: a.update(max_std=float("inf")), ValueError, "max_std"),
    (
        "select",
        "weights shape",
        lambda a: a.update(elite_weights=a["elite_weights"][:, :3]),
        ValueError,
        "elite_weights",
    ),
    ("select", "std shape", lambda a: a.update(std=a["std"][:, :, :2]), ValueError, "std"),
    (
        "select",
        "H = 0",
        lambda a: a.update(elite_actions=a["elite_actions"][:, :0], std=a["std"][:, :0]),
        ValueError,
        "H >= 1",
    ),
    ("select", "mixed dtype", lambda a: a.update(std=a["std"].double()), TypeError, "std"),
    ("select", "int actions", lambda a: a.update(elite_actions=a["elite_actions"].int()), TypeError, "elite_actions"),
    ("select", "weights 1-D", lambda a: a.update(elite_weights=a["elite_weights"][0]), ValueError, "elite_weights"),
]
WRAPPERS = {"sample": ops.mppi_sample, "elite": ops.mppi_elite_update, "select": ops.mppi_select}
KERNELS = {
    "sample": lambda: torch.ops.cdred_fast.mppi_sample.default,
    "elite": lambda: torch.ops.cdred_fast.mppi_elite_update.default,
    "select": lambda: torch.ops.cdred_fast.mppi_select.default,
}


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("op,desc,mutate,exc,fragment", BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES])
def test_bad_inputs_raise_named_errors_in_wrapper(op, desc, mutate, exc, fragment, impl):
    args = _good()[op]
    mutate(args)
    with pytest.raises(exc, match=fragment):
        WRAPPERS[op](**args, impl=impl)


@pytest.mark.parametrize("op,desc,mutate,exc,fragment", BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES])
def test_bad_inputs_raise_named_errors_in_kernel(op, desc, mutate, exc, fragment):
    """The C++ kernels check their inputs themselves (direct torch.ops calls skip the wrapper)."""
    args = _good()[op]
    mutate(args)
    with pytest.raises(exc, match=fragment):
        KERNELS[op]()(*args.values())


def test_bad_impl_and_non_tensor_and_types():
    good = _good()
    with pytest.raises(ValueError, match="impl"):
        ops.mppi_sample(**good["sample"], impl="cuda")
    with pytest.raises(TypeError, match="mean"):
        ops.mppi_sample(good["sample"]["mean"].numpy(), good["sample"]["std"], 3)
    with pytest.raises(ValueError, match="num_elites"):
        ops.mppi_elite_update(**{**good["elite"], "num_elites": 2.0})
    with pytest.raises(TypeError, match="eval_mode"):
        ops.mppi_select(**{**good["select"], "eval_mode": 1})
    with pytest.raises(TypeError, match="generator"):
        ops.mppi_sample(**{**good["sample"], "generator": 3})


@cpu_path_only
def test_invalid_weights_are_rejected_on_cpu():
    """torch.multinomial's checks (finite, >= 0, positive row sum), made by the CPU kernel itself,
    before anything is drawn."""
    ea, w, std = _elites(2, 3, 4, 5, torch.float32, "cpu", 1)
    one_bad_entry = [w.clone() for _ in range(3)]
    one_bad_entry[0][1, 2] = float("nan")
    one_bad_entry[1][1, 0] = -1e-30
    one_bad_entry[2][0, 3] = float("inf")
    one_zero_row = w.clone()
    one_zero_row[1] = 0
    for bad in (torch.zeros_like(w), -w, w.masked_fill(w > 0, float("nan")), *one_bad_entry, one_zero_row):
        for impl in ("fused", "reference"):
            g = _gen("cpu", 0)
            with pytest.raises(RuntimeError, match="probability|multinomial"):
                ops.mppi_select(ea, bad, std, generator=g, impl=impl)
            assert torch.equal(g.get_state(), _gen("cpu", 0).get_state())  # nothing was drawn
    with pytest.raises(RuntimeError, match="row 1 has the weight nan"):
        ops.mppi_select(ea, one_bad_entry[0], std)
    with pytest.raises(RuntimeError, match="row 1 sums to 0"):
        ops.mppi_select(ea, one_zero_row, std)
