"""`cdred-fast report`: numbers of hand-made run directories checked against hand arithmetic."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import yaml

from cdred_fast import paper
from cdred_fast.report import ReportError, bootstrap_ci, find_runs, learning_curve, paired_bootstrap, write_report


def make_run(directory, task, method, seed, evals=None, train=None, **config):
    """A run directory: config.yaml, eval.csv from ``evals`` rows (step, return, success,
    success_any), train.csv from ``train`` rows (step, grad_norm_release, its max, updates)."""
    directory.mkdir(parents=True)
    cfg = {"task": task, "method": method, "seed": seed, "work_dir": "runs", "steps": 1000, **config}
    (directory / "config.yaml").write_text(yaml.safe_dump(cfg))
    if evals is not None:
        lines = ["step,episode_return,success,success_any"] + [",".join(map(str, row)) for row in evals]
        (directory / "eval.csv").write_text("\n".join(lines) + "\n")
    if train is not None:
        header = "step,episodes,grad_norm,grad_norm_max,grad_norm_release,grad_norm_release_max,updates"
        rows = [f"{s},1,{g / 2},{m / 2},{g},{m},{u}" for s, g, m, u in train]
        (directory / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return directory


def sample_std(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def exact_bootstrap_interval(xs, confidence=0.95):
    """The percentile interval of the exact bootstrap distribution of the mean: every one of
    the n**n equally likely resamples enumerated, the quantiles of that discrete distribution
    (the smallest mean whose cumulative probability reaches the tail)."""
    means = sorted(sum(r) / len(r) for r in itertools.product(xs, repeat=len(xs)))
    tail = (1 - confidence) / 2
    return tuple(float(np.quantile(means, q, method="inverted_cdf")) for q in (tail, 1 - tail))


# three seeds of CDRED on mw-box-close: (step, return, success, success_any); seed 3's rows
# are written out of step order (the report sorts them)
SEEDS = {
    1: [(0, 10, 0, 0), (100, 50, 1, 1), (200, 30, 0, 1)],
    2: [(0, 20, 0, 1), (100, 40, 0, 1), (200, 60, 1, 1)],
    3: [(100, 70, 0, 0), (200, 45, 1, 1), (0, 5, 1, 0)],
}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for seed, rows in SEEDS.items():
        make_run(root / f"method=cdred,seed={seed},task=mw-box-close", "mw-box-close", "cdred", seed, rows)
    # IQ-MPC on cheetah-run: training logs for the gradient-norm table, one seed evaluated
    make_run(
        root / "method=iqmpc,seed=1,task=cheetah-run",
        "cheetah-run",
        "iqmpc",
        1,
        [(0, 1.5, 0, 0), (200, 3.5, 0, 0)],
        train=[(100, 2.0, 5.0, 10), (200, 4.0, 9.0, 30)],
    )
    make_run(
        root / "method=iqmpc,seed=2,task=cheetah-run",
        "cheetah-run",
        "iqmpc",
        2,
        train=[(100, 1.0, 3.0, 20), (200, 1.0, 20.0, 20)],
    )
    (root / "sweep.json").write_text("{}")
    return root


def group(numbers, task, method):
    (found,) = [g for g in numbers["groups"] if g["task"] == task and g["method"] == method]
    return found


def test_report_numbers_match_hand_arithmetic(sweep):
    md = write_report(sweep).read_text()
    numbers = json.loads((sweep / "report.json").read_text())
    g = group(numbers, "mw-box-close", "cdred")
    assert [r["seed"] for r in g["runs"]] == [1, 2, 3]
    # final = the row of the largest step (seed 3's is not its last line), best = the largest
    checks = {
        ("episode_return", "final"): [30, 60, 45],
        ("episode_return", "best"): [50, 60, 70],
        ("success", "final"): [0, 1, 1],
        ("success", "best"): [1, 1, 1],
        ("success_any", "final"): [1, 1, 1],
    }
    for (key, which), values in checks.items():
        stats = g["metrics"][key][which]
        assert stats["n"] == 3
        assert stats["values"] == pytest.approx(values)
        assert stats["mean"] == pytest.approx(sum(values) / 3)
        assert stats["std"] == pytest.approx(sample_std(values))
        low, high = exact_bootstrap_interval(values)
        assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((low, high))
    # by hand: return final 45 +- 15 in [30, 60]; success final 2/3 +- sqrt(1/3) in [0, 1]
    assert "| mw-box-close | CDRED | 3 | 45.00 ± 15.00 | [30.00, 60.00] | 60.00 ± 10.00 | [50.00, 70.00] |" in md
    assert "| mw-box-close | CDRED | 3 | 0.667 ± 0.577 | [0.000, 1.000] | 1.000 ± 0.000 | [1.000, 1.000] |" in md
    # one evaluated IQ-MPC seed: the value and n=1, no interval; the other has no evaluations
    iq = group(numbers, "cheetah-run", "iqmpc")["metrics"]["episode_return"]["final"]
    assert (iq["n"], iq["mean"], iq["std"], iq["ci_low"]) == (1, 3.5, None, None)
    assert "| cheetah-run | IQ-MPC | 1 | 3.50 (n=1) | n=1 | 3.50 (n=1) | n=1 |" in md
    assert "| cheetah-run | IQ-MPC | 2 | no evaluations | — | 2 |" in md  # the runs table


def test_gradient_norm_table(sweep):
    md = write_report(sweep).read_text()
    gn = group(json.loads((sweep / "report.json").read_text()), "cheetah-run", "iqmpc")["grad_norm"]
    # seed 1: (2*10 + 4*30) / 40 = 3.5, max 9; seed 2: 1.0, max 20 -> mean 2.25, max 20
    assert gn["grad_norm_release"] == {"mean": pytest.approx(2.25), "max": 20.0, "n": 2, "nan_rows": 0}
    assert gn["grad_norm"] == {"mean": pytest.approx(1.125), "max": 10.0, "n": 2, "nan_rows": 0}
    assert "| cheetah-run | 2.25 | 20 | 2 |" in md
    # Table 6 next to ours: the paper's 131.7 / 2342.6 beside our 2.25 / 20
    assert "| cheetah-run | 131.7 | 2.25 | 0.34 | — | 2342.6 | 20 | 3.1 | — |" in md


def test_gradient_norm_inf_and_nan(tmp_path):
    """A diverged norm (inf) shows as inf; NaN rows are left out and counted."""
    make_run(tmp_path / "a", "hopper-hop", "iqmpc", 1, train=[(100, 2.0, 4.0, 10), (200, math.nan, math.nan, 10)])
    make_run(tmp_path / "b", "hopper-hop", "iqmpc", 2, train=[(100, 1.0, 3.0, 10), (200, math.inf, math.inf, 10)])
    md = write_report(tmp_path).read_text()
    gn = group(json.loads((tmp_path / "report.json").read_text()), "hopper-hop", "iqmpc")["grad_norm"]
    assert gn["grad_norm_release"]["mean"] == math.inf and gn["grad_norm_release"]["nan_rows"] == 1
    assert "| hopper-hop | inf (1 NaN rows) | inf (1 NaN rows) | 2 |" in md


def test_paper_numbers_appear(sweep):
    md = write_report(sweep).read_text()
    for heading in ("Table 1: Meta-World", "Table 5: ManiSkill2", "Table 6: gradient norm"):
        assert heading in md
    assert "| mw-box-close | 0.58 ± 0.12 | 0.61 ± 0.09 | 0.00 ± 0.00 | 0.53 ± 0.18 | 0.96 ± 0.03 |" in md
    assert "| ms2-turn-faucet | 0.82 ± 0.04 | 0.00 ± 0.00 | 0.73 ± 0.08 | 0.84 ± 0.08 |" in md
    assert "8538.6" in md and "Dog Walk" in md
    # ours beside the paper: final success at the last step / any step
    assert "0.667 ± 0.577 / 1.000 ± 0.000" in md
    assert set(paper.TABLE1) == {f"mw-{t}" for t in ("box-close", "bin-picking", "reach-wall", "stick-pull",
                                                     "stick-push", "soccer")}  # fmt: skip
    assert paper.TABLE6["hopper-hop"] == {"iqmpc": (324.8, 8538.6), "cdred": (1.3, 4.6)}


def test_figures_written(sweep):
    write_report(sweep)
    for task in ("mw-box-close", "cheetah-run"):
        png = sweep / f"curves_{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in (sweep / "report.md").read_text()


def test_learning_curve_aligns_steps(tmp_path):
    make_run(tmp_path / "a", "mw-reach", "cdred", 1, [(0, 0, 0, 0), (100, 10, 1, 1), (200, 30, 1, 1)])
    make_run(tmp_path / "b", "mw-reach", "cdred", 2, [(0, 4, 0, 0), (50, 8, 0, 0), (100, 20, 1, 1)])
    curve = learning_curve(find_runs(tmp_path), "episode_return")
    assert curve["steps"].tolist() == [0, 50, 100, 200]
    assert curve["n"].tolist() == [2, 2, 2, 1]  # run b stops at 100: not extrapolated
    # at 50 run a is interpolated to 5
    assert curve["mean"].tolist() == pytest.approx([2, (5 + 8) / 2, 15, 30])
    assert np.isnan(curve["low"][3]) and curve["low"][0] <= curve["mean"][0] <= curve["high"][0]


def test_bootstrap_interval_against_exact_enumeration():
    values = [0.0, 1.0, 2.0, 3.0, 10.0]
    low, high = bootstrap_ci(values)
    exact_low, exact_high = exact_bootstrap_interval(values)
    # resample means of integers lie on a lattice of step 1/5: 10,000 resamples land within
    # one lattice step of the exact quantiles
    assert low == pytest.approx(exact_low, abs=0.2 + 1e-9) and high == pytest.approx(exact_high, abs=0.2 + 1e-9)
    assert exact_low <= np.mean(values) <= exact_high
    assert bootstrap_ci(values) == (low, high)  # a fixed seed: reproducible
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_paired_bootstrap_against_exact_enumeration():
    """The paired scripts' interval: within one lattice step of the exact bootstrap quantiles,
    reproducible, each column of [n, m] differences resampled with the rows (the same interval
    as the column alone), and a clear error for a shape it cannot read."""
    d = [0.0, 1.0, 2.0, 3.0, 10.0]
    low, high = paired_bootstrap(d)
    exact_low, exact_high = exact_bootstrap_interval(d)
    assert low == pytest.approx(exact_low, abs=0.2 + 1e-9) and high == pytest.approx(exact_high, abs=0.2 + 1e-9)
    assert paired_bootstrap(d) == (low, high)
    assert paired_bootstrap([-0.25] * 4) == (-0.25, -0.25)
    two = np.stack([np.asarray(d), -2 * np.asarray(d)], axis=1)  # [5, 2]
    lows, highs = paired_bootstrap(two)
    assert (lows[0], highs[0]) == pytest.approx((low, high))
    assert (lows[1], highs[1]) == pytest.approx((-2 * high, -2 * low))  # the same resamples, scaled by -2
    with pytest.raises(ValueError, match="paired_bootstrap takes"):
        paired_bootstrap(np.zeros((2, 2, 2)))


def test_config_decides_not_directory_names(tmp_path):
    make_run(tmp_path / "runs" / "method=bc,seed=9,task=mw-soccer", "mw-reach", "cdred", 1, [(0, 1, 0, 0)])
    make_run(tmp_path / "runs" / "other", "mw-reach", "cdred", 2, [(0, 3, 1, 1)])
    (run_a, run_b) = find_runs(tmp_path / "runs")
    assert (run_a.task, run_a.method, run_a.seed, run_a.variant) == ("mw-reach", "cdred", 1, "")
    numbers_md = write_report(tmp_path / "runs").read_text()
    assert "| mw-reach | CDRED | 2 | 2.00 ± 1.41 |" in numbers_md


def test_variants_are_separate_groups(tmp_path):
    for seed, zeta in ((1, 0.5), (2, 1.0)):
        make_run(tmp_path / f"z{seed}", "mw-reach", "cdred", seed, [(0, seed, 0, 0)], zeta=zeta)
    md = write_report(tmp_path).read_text()
    assert "| mw-reach | CDRED [zeta=0.5] | 1 |" in md and "| mw-reach | CDRED [zeta=1.0] | 1 |" in md


def test_runs_without_evaluations(tmp_path):
    make_run(tmp_path / "empty", "mw-reach", "cdred", 1)
    make_run(tmp_path / "header-only", "mw-reach", "cdred", 2)
    (tmp_path / "header-only" / "eval.csv").write_text("step,episode_return,success,success_any\n")
    md = write_report(tmp_path).read_text()
    assert md.count("no evaluations") >= 3
    assert "No evaluations to draw." in md


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("eval.csv", "step,success\n0,1,2\n", "line 2: 3 fields"),
        ("eval.csv", "step,episode_return,success\n0,1.0,yes\n", "column 'success' is not a number"),
        ("eval.csv", "episode_return,success\n1,0\n", "no 'step' column"),
        ("train.csv", "step,grad_norm_release,updates\n0,abc,1\n", "'grad_norm_release' is not a number"),
        ("config.yaml", "method: cdred\n", "no 'task' key"),
        ("config.yaml", "task: [unclosed\n", "cannot read"),
    ],
)
def test_bad_input_names_the_file(tmp_path, name, text, message):
    run = make_run(tmp_path / "run", "mw-reach", "cdred", 1, [(0, 1, 0, 0)])
    (run / name).write_text(text)
    with pytest.raises(ReportError, match=message) as info:
        write_report(tmp_path)
    assert str(run / name) in str(info.value)


def test_no_runs(tmp_path):
    with pytest.raises(ReportError, match="no run directories"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "missing")


def test_cli_report(sweep, tmp_path):
    from click.testing import CliRunner

    from cdred_fast.cli import main

    result = CliRunner().invoke(main, ["report", str(sweep)])
    assert result.exit_code == 0, result.output
    assert str(sweep / "report.md") in result.output and (sweep / "report.md").is_file()
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no run directories" in result.output


def test_trainer_config_files(tmp_path):
    """config.yaml as the trainer writes it (OmegaConf YAML of the full config)."""
    from cdred_fast.config import CDREDConfig
    from cdred_fast.logger import write_config

    for seed in (1, 2):
        run = tmp_path / f"iqmpc-mw-reach-s{seed}"
        write_config(run / "config.yaml", CDREDConfig(task="mw-reach", method="iqmpc", seed=seed))
        (run / "eval.csv").write_text(f"step,episode_return,success,success_any\n0,1,0,0\n500,2,{seed - 1},1\n")
    (a, b) = find_runs(tmp_path)
    assert (a.task, a.method, a.seed, b.seed, a.variant) == ("mw-reach", "iqmpc", 1, 2, "")
    assert "| mw-reach | IQ-MPC | 2 | 0.500 ± 0.707 | [0.000, 1.000] |" in write_report(tmp_path).read_text()
