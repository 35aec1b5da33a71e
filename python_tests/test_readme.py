"""The README's Python API example runs as written (with its undefined inputs supplied)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    H, B = 3, 4  # the config's horizon and a small batch
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(H + 1, B, 39, generator=g), "action": torch.rand(H, B, 4, generator=g) * 2 - 1}
    inputs = {
        "obs": torch.zeros(39),
        "behavioral_batch": batch,
        "expert_batch": batch,
        "z": torch.zeros(64),  # one latent; `a` is then the action the example's act returned
    }
    monkeypatch.chdir(tmp_path)  # the example saves agent.pt in the working directory
    scope: dict = dict(inputs)
    exec(compile(code, str(README), "exec"), scope)
    assert scope["r"].shape == () and torch.isfinite(scope["r"]).all()
    assert scope["a"].shape == (4,) and set(scope["stats"]) >= {"consistency_loss", "grad_norm"}
    assert (tmp_path / "agent.pt").is_file()
