"""method="bc" (SPEC.md section 7) in the agent, the trainer and the CLI: encoder and policy prior
trained by maximum likelihood of the expert actions from the demonstrations alone, acting with
tanh(mu); `steps` counts updates."""

import json

import pytest
import torch
from testing_utils import TINY, csv_rows, run_cli, tiny_overrides

from cdred_fast import CDREDConfig, methods
from cdred_fast.agent import CDREDAgent
from cdred_fast.checkpoint import load_checkpoint
from cdred_fast.methods.bc import bc_act, bc_loss
from cdred_fast.trainer import Trainer

OBS, ACT, B = 6, 2, 8


def bc_agent(**over):
    torch.manual_seed(0)
    return CDREDAgent(CDREDConfig(**{**TINY, "method": "bc", "episode_length": 100, **over}), OBS, ACT)


def expert_batch(T=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(T + 1, B, OBS, generator=g), "action": torch.rand(T, B, ACT, generator=g) * 1.8 - 0.9}


def test_registered_without_reward_part_or_interaction():
    method = methods.get("bc")
    assert isinstance(method, methods.BC) and not method.interacts and method.uses_expert
    agent = bc_agent()
    assert agent.model.reward_model is None and agent.model.reward_head is None
    with pytest.raises(ValueError, match="does not plan"):
        agent.plan(torch.zeros(TINY["latent_dim"]))


def test_update_is_one_likelihood_step_of_encoder_and_policy():
    agent = bc_agent()
    m = agent.model
    batch = expert_batch(T=2)
    with torch.no_grad():
        want, _ = bc_loss(m, m.encode(batch["obs"][:-1]), batch["action"])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    stats = agent.update(None, batch)
    assert agent.step == 1
    assert stats["bc_loss"] == pytest.approx(float(want), rel=1e-6) and stats["total_loss"] == stats["bc_loss"]
    for key in ("bc_log_likelihood", "bc_mse", "bc_log_std", "grad_norm", "pi_grad_norm", "lr", "pi_lr"):
        assert key in stats
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("pi_net.") for k in changed)
    assert all(k.startswith(("encoder.", "pi_net.")) for k in changed), sorted(changed)
    with pytest.raises(ValueError, match="demonstrations alone"):
        agent.update(expert_batch(), batch)
    with pytest.raises(ValueError, match="needs an expert_batch"):
        agent.update(None)
    with pytest.raises(ValueError, match="expert_batch\\['action'\\]"):
        agent.update(None, {"obs": batch["obs"], "action": batch["action"][:1]})


def test_updates_raise_the_likelihood():
    agent = bc_agent()
    batch = expert_batch(T=1, seed=3)
    first = agent.update(None, batch)["bc_loss"]
    for _ in range(30):
        last = agent.update(None, batch)["bc_loss"]
    assert last < first


@pytest.mark.parametrize("mpc", [True, False])
def test_acts_with_tanh_mu_and_draws_nothing(mpc):
    agent = bc_agent(mpc=mpc)
    obs = torch.randn(OBS)
    want = bc_act(agent.model, agent.model.encode(obs.reshape(1, OBS)))[0]
    rng = torch.get_rng_state()
    for eval_mode in (True, False):
        torch.testing.assert_close(agent.act(obs, t0=True, eval_mode=eval_mode), want, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert agent.planner.prev_mean is None


def bc_cfg(**over):
    base = dict(TINY, task="mw-reach", method="bc", steps=40, eval_freq=20, eval_episodes=1, num_demos=2, save_freq=20)
    return CDREDConfig(**{**base, **over})


def test_trainer_learns_from_the_demonstrations_alone(tmp_path):
    tr = Trainer(bc_cfg(), tmp_path / "run", progress=False, tensorboard=False, log_freq=10)

    def no_interaction(*args, **kwargs):
        raise AssertionError("BC must not act in the training environment")

    tr.env.step = tr.env.reset = no_interaction
    result = tr.train()
    assert result["steps"] == 40 and tr.agent.step == 40 and tr.buffer.num_episodes == 0
    train = csv_rows(tmp_path / "run" / "train.csv")
    assert [int(r["step"]) for r in train] == [10, 20, 30, 40]
    assert all(int(r["updates"]) == 10 for r in train) and all(int(r["episodes"]) == 0 for r in train)
    assert [int(float(r["step"])) for r in csv_rows(tmp_path / "run" / "eval.csv")] == [0, 20, 40]
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 40 and state["agent"]["step"] == 40 and state["config"]["method"] == "bc"


def test_resume_continues_exactly(tmp_path):
    full = Trainer(bc_cfg(), tmp_path / "full", progress=False, tensorboard=False)
    full.train()
    Trainer(bc_cfg(steps=20), tmp_path / "part", progress=False, tensorboard=False).train()
    resumed = Trainer(bc_cfg(), tmp_path / "part", resume=True, progress=False, tensorboard=False)
    assert resumed.step == 20
    resumed.train()
    a, b = full.agent.model.state_dict(), resumed.agent.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_cli_train_resume_eval(tmp_path):
    proc = run_cli("collect", "mw-reach", "--episodes", "2", "--out", str(tmp_path / "d.npz"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tiny = tiny_overrides()
    run = str(tmp_path / "run")
    common = ["--no-progress", "--demos", str(tmp_path / "d.npz"), "--work-dir", run]
    proc = run_cli(
        "train",
        *common,
        "task=mw-reach",
        "method=bc",
        "steps=30",
        "eval_freq=30",
        "eval_episodes=1",
        *tiny,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "BC on mw-reach (state): 30 updates (no environment interaction), 2 expert episodes" in proc.stdout
    assert "\nprecision: update products " in proc.stdout  # BC plans nothing: no planning part
    assert "after training (step 30)" in proc.stdout
    proc = run_cli("train", "--no-progress", "--resume", "--work-dir", run, "steps=60", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed at step 30" in proc.stdout and "after training (step 60)" in proc.stdout
    proc = run_cli("eval", str(tmp_path / "run" / "checkpoint.pt"), "--episodes", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["step"] == 60 and 0.0 <= out["success"] <= 1.0
