"""The CDRED paper's published numbers, as plain data (SPEC section 5).

Source: the CDRED paper (``seeds/002`` of the project; SPEC section 5 restates them).

* Table 1 -- Meta-World success rates, 100 demonstrations, 3 seeds: BC, IQL+SAC,
  CFIL+SAC, IQ-MPC, CDRED.
* Table 5 (appendix D.1) -- ManiSkill2 success rates, 3 seeds: IQL+SAC, CFIL+SAC,
  IQ-MPC, CDRED.
* Table 6 (appendix D.6) -- gradient norms of IQ-MPC and CDRED on DMControl, mean and
  maximum over training, each release's own norm (CDRED: world model plus the policy's
  stale gradient; IQ-MPC: all model parameters), i.e. this package's ``grad_norm_release``.

Success entries are ``(mean, spread)`` as printed (``0.96 ± 0.03``); the paper does not
say whether the spread is a standard deviation or a standard error over its 3 seeds.
Tasks are keyed by this package's task names (``cdred-fast tasks``). Methods are keyed by
this package's ``method`` where one exists (``bc``, ``iqmpc``, ``cdred``); the paper's
other baselines keep their paper names.
"""

from __future__ import annotations

__all__ = ["METHOD_NAMES", "PAPER_METHODS", "TABLE1", "TABLE5", "TABLE6", "TABLE6_LABELS"]

# method key -> the paper's column name
METHOD_NAMES = {
    "bc": "BC",
    "iql+sac": "IQL+SAC",
    "cfil+sac": "CFIL+SAC",
    "iqmpc": "IQ-MPC",
    "cdred": "CDRED",
    "tdmpc2": "TD-MPC2 (expert)",
}

# Table 1 (section 4.1): Meta-World success rate, task -> method -> (mean, spread)
TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    "mw-box-close": {
        "bc": (0.58, 0.12),
        "iql+sac": (0.61, 0.09),
        "cfil+sac": (0.00, 0.00),
        "iqmpc": (0.53, 0.18),
        "cdred": (0.96, 0.03),
    },
    "mw-bin-picking": {
        "bc": (0.43, 0.18),
        "iql+sac": (0.75, 0.11),
        "cfil+sac": (0.01, 0.01),
        "iqmpc": (0.79, 0.05),
        "cdred": (0.99, 0.01),
    },
    "mw-reach-wall": {
        "bc": (0.10, 0.08),
        "iql+sac": (0.90, 0.04),
        "cfil+sac": (0.01, 0.01),
        "iqmpc": (0.31, 0.14),
        "cdred": (0.98, 0.01),
    },
    "mw-stick-pull": {
        "bc": (0.02, 0.02),
        "iql+sac": (0.34, 0.11),
        "cfil+sac": (0.00, 0.00),
        "iqmpc": (0.13, 0.08),
        "cdred": (0.92, 0.05),
    },
    "mw-stick-push": {
        "bc": (0.42, 0.14),
        "iql+sac": (0.76, 0.14),
        "cfil+sac": (0.00, 0.00),
        "iqmpc": (0.23, 0.10),
        "cdred": (0.94, 0.03),
    },
    "mw-soccer": {
        "bc": (0.04, 0.03),
        "iql+sac": (0.73, 0.09),
        "cfil+sac": (0.01, 0.01),
        "iqmpc": (0.12, 0.07),
        "cdred": (0.81, 0.05),
    },
}

# Table 5 (appendix D.1): ManiSkill2 success rate, task -> method -> (mean, spread)
TABLE5: dict[str, dict[str, tuple[float, float]]] = {
    "ms2-pick-cube": {"iql+sac": (0.61, 0.13), "cfil+sac": (0.00, 0.00), "iqmpc": (0.79, 0.05), "cdred": (0.87, 0.04)},
    "ms2-lift-cube": {"iql+sac": (0.85, 0.04), "cfil+sac": (0.01, 0.01), "iqmpc": (0.89, 0.02), "cdred": (0.93, 0.03)},
    "ms2-turn-faucet": {
        "iql+sac": (0.82, 0.04),
        "cfil+sac": (0.00, 0.00),
        "iqmpc": (0.73, 0.08),
        "cdred": (0.84, 0.08),
    },
}

# Table 6 (appendix D.6): gradient norm over training, task -> method -> (mean, max)
TABLE6: dict[str, dict[str, tuple[float, float]]] = {
    "humanoid-walk": {"iqmpc": (12.6, 198.3), "cdred": (0.073, 0.32)},
    "hopper-hop": {"iqmpc": (324.8, 8538.6), "cdred": (1.3, 4.6)},
    "cheetah-run": {"iqmpc": (131.7, 2342.6), "cdred": (0.34, 3.1)},
    "walker-run": {"iqmpc": (344.6, 1534.7), "cdred": (0.26, 1.8)},
    "reacher-hard": {"iqmpc": (11.3, 65.8), "cdred": (0.012, 0.083)},
    # the paper's table names this row "Dog Walk"; its task list (and SPEC section 5) has
    # dog-stand, the only dog task registered here
    "dog-stand": {"iqmpc": (989.7, 6824.3), "cdred": (0.059, 0.13)},
}

# Table 6 row label as printed, where it differs from the task name
TABLE6_LABELS = {"dog-stand": "Dog Walk (paper) / dog-stand"}

# the columns of each success table, in the paper's order
PAPER_METHODS = {
    "table1": ("bc", "iql+sac", "cfil+sac", "iqmpc", "cdred"),
    "table5": ("iql+sac", "cfil+sac", "iqmpc", "cdred"),
    "table6": ("iqmpc", "cdred"),
}
