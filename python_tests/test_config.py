"""CDREDConfig: defaults, validation, (de)serialisation, derived quantities."""

import json

import pytest

from cdred_fast.config import PRESETS, CDREDConfig, discount_heuristic


def test_defaults_are_the_released_values():
    c = CDREDConfig()
    expected = dict(
        latent_dim=512,
        enc_dim=256,
        mlp_dim=512,
        num_q=5,
        num_bins=101,
        vmin=-10.0,
        vmax=10.0,
        dropout=0.01,
        simnorm_dim=8,
        log_std_min=-10.0,
        log_std_max=2.0,
        num_targets=5,
        rnd_dim=256,
        rnd_target_hidden=(512, 512),
        rnd_predictor_hidden=(1024, 1024, 1024),
        alpha=0.9,
        zeta=0.8,
        sigma=1.0,
        g="linear",
        reward_eps=1e-6,
        batch_size=256,
        horizon=3,
        rho=0.5,
        consistency_coef=20.0,
        value_coef=0.1,
        reward_coef=0.1,
        lr=3e-4,
        enc_lr_scale=0.3,
        grad_clip_norm=20.0,
        lr_step=500_000,
        lr_gamma=0.1,
        pi_lr=3e-4,
        pi_eps=1e-5,
        entropy_coef=1e-4,
        tau=0.01,
        discount_denom=5.0,
        discount_min=0.95,
        discount_max=0.995,
        episode_length=None,
        discount=None,
        mpc=True,
        iterations=6,
        num_samples=512,
        num_elites=64,
        num_pi_trajs=24,
        temperature=0.5,
        min_std=0.05,
        max_std=2.0,
        task="mw-reach-wall",
        obs="state",
        seed_steps=None,
        buffer_size=None,  # the method's default: buffer_capacity
        eval_freq=50_000,
        eval_episodes=10,
        seed=1,
        num_demos=None,
        reward_input="latent",
        method="cdred",
        kernels="fused",
        capture_graph=False,
        save_video=False,
    )
    for name, value in expected.items():
        assert getattr(c, name) == value, name
    for name in ("steps", "save_freq", "work_dir"):
        assert hasattr(c, name)


@pytest.mark.parametrize(
    "T, gamma",
    [(500, 0.99), (100, 0.95), (250, 0.98), (1000, 0.995), (50, 0.95), (2000, 0.995), (200, 0.975)],
)
def test_discount_heuristic(T, gamma):
    # gamma = clip((T/5 - 1) / (T/5), 0.95, 0.995), computed by hand above
    assert discount_heuristic(T) == pytest.approx(gamma, abs=1e-12)
    assert CDREDConfig(episode_length=T).discount_for() == pytest.approx(gamma, abs=1e-12)
    assert CDREDConfig().discount_for(T) == pytest.approx(gamma, abs=1e-12)


def test_discount_override_and_unknown():
    assert CDREDConfig(episode_length=500, discount=0.9).discount_for() == 0.9
    with pytest.raises(ValueError, match="episode_length"):
        CDREDConfig().discount_for()


def test_derived_quantities():
    c = CDREDConfig()
    assert c.iterations_for(19) == 6 and c.iterations_for(20) == 8 and c.iterations_for(38) == 8
    assert c.seed_steps_for(100) == 1000 and c.seed_steps_for(500) == 2500
    assert CDREDConfig(seed_steps=7).seed_steps_for(500) == 7
    assert CDREDConfig(steps=5000).buffer_capacity == 5000
    assert CDREDConfig(steps=10**6).buffer_capacity == 200_000
    # IQ-MPC's released replay holds 1M transitions (SPEC section 6); an explicit size is kept
    assert CDREDConfig(method="iqmpc", steps=10**7).buffer_capacity == 1_000_000
    assert CDREDConfig(method="iqmpc", steps=5000).buffer_capacity == 5000
    assert CDREDConfig(method="iqmpc", buffer_size=200_000, steps=10**7).buffer_capacity == 200_000
    assert CDREDConfig(buffer_size=300_000, steps=10**7).buffer_capacity == 300_000


@pytest.mark.parametrize(
    "field, value",
    [
        ("latent_dim", 0),
        ("latent_dim", 20),  # not a multiple of simnorm_dim = 8
        ("num_elites", 600),  # > num_samples
        ("num_pi_trajs", 512),  # == num_samples
        ("min_std", 3.0),  # > max_std
        ("g", "relu"),
        ("obs", "pixels"),
        ("kernels", "cuda"),
        ("alpha", 1.5),
        ("zeta", -0.1),
        ("sigma", -1.0),
        ("reward_eps", 0.0),  # eps = 0 disables the variance guard
        ("num_threads", 0),
        ("rho", 0.0),
        ("lr", 0.0),
        ("tau", 2.0),
        ("dropout", 1.0),
        ("num_q", 1),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("horizon", "3"),
        ("mpc", "yes"),
        ("capture_graph", 1),
        ("capture_graph", "true"),
        ("save_video", 1),
        ("save_video", "true"),
        ("rnd_target_hidden", (0, 4)),
        ("rnd_predictor_hidden", "wide"),
        ("discount", 1.0),
        ("episode_length", 0),
        ("vmin", 10.0),  # >= vmax
        ("log_std_min", 3.0),  # >= log_std_max
        ("discount_min", 0.999),  # > discount_max
        ("task", ""),
        ("temperature", 0.0),
        ("lr_gamma", float("nan")),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises((TypeError, ValueError), match=field):
        CDREDConfig(**{field: value})


def test_unknown_keyword_lists_close_matches():
    with pytest.raises(TypeError, match="num_elites"):
        CDREDConfig(num_elite=4)
    with pytest.raises(TypeError, match="unknown"):
        CDREDConfig.from_dict({"totally_unrelated_key": 1})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_configs(name):
    cfg = CDREDConfig(**PRESETS[name])
    assert all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v) for k, v in PRESETS[name].items())


def test_coercion_of_numbers():
    c = CDREDConfig(steps=1e6, lr=1, rnd_target_hidden=[8, 8])
    assert c.steps == 1_000_000 and isinstance(c.steps, int)
    assert isinstance(c.lr, float) and c.lr == 1.0
    assert c.rnd_target_hidden == (8, 8)


def test_dict_round_trip_is_json_safe():
    c = CDREDConfig(latent_dim=16, rnd_target_hidden=(8,), episode_length=100, g="exp", mpc=False)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert CDREDConfig.from_dict(d) == c
    assert CDREDConfig.from_dict(json.loads(json.dumps(d))) == c
