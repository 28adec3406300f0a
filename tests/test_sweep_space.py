"""Search spaces: every sample is a valid config, conditional keys behave, keys and the base point are derived
exactly from the space, and the bound space survives pickling into a fresh process whatever defined it."""

import pickle
import subprocess
import sys
from collections import Counter

import pytest
import ray

import spklip.runtime.tune.sweep
from spklip.cli import main as spklip_main
from spklip.commands.sweep import available_sweeps, load_sweep
from spklip.config import ConfigError, load_config
from spklip.runtime.tune.space import BoundSpace, base_point, config_params, sample_space, space_keys, trial_config
from spklip.runtime.tune.sweep import first_points, main, sweep_config

HSFE = load_sweep("hsfe-ablation")


def _base(preset):
    return load_config(None, {"model_preset": preset})


@pytest.mark.parametrize("preset", ["spklip-tiny", "spklip-paper"])
def test_hsfe_space_only_samples_valid_layouts(preset):
    base = _base(preset)
    samples = sample_space(HSFE.space, base, 200, seed=1)
    ks = Counter(p["model.hsfe.num_subblocks"] for p in samples)
    assert set(ks) == {1, 2, 3, 4, 5, 6, 7, 8, 9, "auto"}  # every K choice, "auto" included, is reachable
    for p in samples:
        cfg = trial_config(base, p)  # raises ConfigError for an invalid layout
        k, step, _ = cfg.model.hsfe.layout(cfg.model.num_planes)
        assert 1 <= k <= 9 and step >= 1
        if p["model.hsfe.num_subblocks"] == 1:
            assert p["model.hsfe.step"] == "auto"  # the step of a single window is not swept
        assert "_step_mode" not in config_params(p)


def test_hsfe_space_covers_the_issue_keys_and_switches():
    base = _base("spklip-tiny")
    keys = set(space_keys(HSFE.space, base))
    assert keys == {"model.hsfe.num_subblocks", "model.hsfe.radius", "model.hsfe.step", "model.hsfe.num_branches",
                    "model.hsfe.channel_step", "model.hsfe.spatial_attention", "model.hsfe.photon_conservation",
                    "model.temporal.pos_embed", "model.temporal.pool"}
    samples = sample_space(HSFE.space, base, 200, seed=2)
    assert {p["model.temporal.pool"] for p in samples} == {"mean", "concat", "cls"}
    for key in ("model.hsfe.spatial_attention", "model.hsfe.photon_conservation", "model.temporal.pos_embed"):
        assert {p[key] for p in samples} == {True, False}


def test_invalid_combination_is_reported_not_trained():
    base = _base("spklip-tiny")  # 32 planes
    with pytest.raises(ConfigError, match="planes"):
        trial_config(base, {"model.hsfe.num_subblocks": 9, "model.hsfe.radius": 15, "model.hsfe.step": 1})


def _rare_space(trial, base):
    """A key that only one of 40 x 2 categorical branches reaches: random sampling would often miss it."""
    if trial.suggest_categorical("_family", [f"f{i}" for i in range(40)]) == "f39":
        if trial.suggest_categorical("model.hsfe.spatial_attention", [True, False]):
            trial.suggest_int("model.hsfe.radius", 1, 3)


def test_space_keys_walks_every_branch_exactly():
    base = _base("spklip-tiny")
    assert space_keys(_rare_space, base) == ["model.hsfe.spatial_attention", "model.hsfe.radius"]

    def fixed(trial, base):
        if trial.suggest_categorical("model.hsfe.num_subblocks", [1, 3]) == 1:
            return {"model.hsfe.step": "auto"}

    assert space_keys(fixed, base) == ["model.hsfe.num_subblocks", "model.hsfe.step"]  # returned constants count


def test_base_point_reproduces_the_base_config():
    base = _base("spklip-tiny")
    point = base_point(HSFE.space, base)
    hs = base.model.hsfe
    assert point["model.hsfe.num_subblocks"] == hs.num_subblocks and point["model.hsfe.radius"] == hs.radius
    assert point["_step_mode"] == ("auto" if hs.step == "auto" else "fixed")
    assert trial_config(base, point) == base  # the point *is* the base config
    fixed_step = load_config(None, {"model.hsfe.step": 4})
    point = base_point(HSFE.space, fixed_step)
    assert point["_step_mode"] == "fixed" and point["model.hsfe.step"] == 4
    assert trial_config(fixed_step, point) == fixed_step
    variant = base_point(load_sweep("baselines").space, base)
    assert variant == {"_variant": "hsfe"}  # the one variant that leaves the base as it is

    def never_the_base(trial, base):
        trial.suggest_categorical("_x", ["a", "b"])
        return {"model.hsfe.num_subblocks": base.model.hsfe.num_subblocks + 1}

    with pytest.raises(ValueError, match="not a point"):
        base_point(never_the_base, base)


def test_bound_space_of_a_script_function_unpickles_in_a_fresh_process(tmp_path):
    """OptunaSearch saves itself with plain pickle; a space from a user's script (not importable) must still load
    in the process that resumes the sweep."""
    script = tmp_path / "my_sweep.py"
    script.write_text("from spklip.runtime.tune.sweep import SweepSpec\n\n"
                      "def space(trial, base):\n"
                      "    trial.suggest_int('model.hsfe.radius', 1, base.model.num_planes // 8)\n\n"
                      "SPEC = SweepSpec(name='mine', space=space, metrics=(('val/top1', 'max'),))\n")
    base = _base("spklip-tiny")
    blob = tmp_path / "space.pkl"
    blob.write_bytes(pickle.dumps(BoundSpace(load_sweep(str(script)).space, base)))
    code = ("import pickle, sys, optuna\n"
            f"bound = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
            "trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()\n"
            "bound(trial); print(sorted(trial.params))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['model.hsfe.radius']"
    again = pickle.loads(blob.read_bytes())  # and an importable sweep's space round-trips here as well
    assert again.base == base
    bound = BoundSpace(HSFE.space, base)
    first = sample_space(lambda t, b: bound(t), base, 20, seed=3)
    second = sample_space(lambda t, b: pickle.loads(pickle.dumps(bound))(t), base, 20, seed=3)
    assert first == second


def test_named_sweeps_load_and_unknown_names_fail_clearly():
    assert set(available_sweeps()) == {"hsfe-ablation", "fsve-sweep", "baselines"}
    assert load_sweep("fsve-sweep").metrics[1][1] == "min"  # energy is minimised
    with pytest.raises(FileNotFoundError, match="available"):
        load_sweep("no-such-sweep")


def test_fsve_space_is_valid_and_two_objective():
    spec = load_sweep("fsve-sweep")
    base = load_config(None, {"model_preset": "spklip-tiny-snn-backbone"})
    samples = sample_space(spec.space, base, 100, seed=0)
    for p in samples:
        trial_config(base, p)  # raises ConfigError on an invalid sample
    assert {p["model.fsve.variant"] for p in samples} == {"snn-backbone", "full-snn"}
    built = [trial_config(base, p).model.fsve for p in samples]  # the new options reach the model config
    assert {f.residual for f in built} == {"current", "sew", "membrane"} and {f.neuron for f in built} == {"lif", "plif"}
    assert {f.loss_per_step for f in built} == {False, True}
    assert [m for m, _ in spec.metrics] == ["val/top1", "energy/energy_per_clip_mj"] and spec.scheduler == "fifo"


def test_sweep_command_parses_the_shared_flags():
    import argparse

    from spklip.commands import sweep as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["sweep", "hsfe-ablation", "--smoke-test", "--num-samples", "3", "--name", "x",
                              "--resume", "--set", "train.epochs=2", "--set", "data.batch_size=4"])
    assert (args.sweep, args.name, args.num_samples, args.smoke_test, args.resume) == ("hsfe-ablation", "x", 3,
                                                                                        True, True)
    assert args.overrides == ["train.epochs=2", "data.batch_size=4"]


def test_sweep_config_resolves_the_spec_preset_and_keeps_user_overrides_on_top(tmp_path):
    fsve = load_sweep("fsve-sweep")
    cfg = sweep_config(fsve, None, ["train.epochs=7"])
    assert cfg.model.fsve.variant == "snn-backbone" and cfg.model.fsve.v_threshold == 0.5  # the preset's model
    assert cfg.train.epochs == 7 and cfg.tracking.log_model is False  # --set beats the spec base
    smoke = sweep_config(HSFE, None, [], smoke=True)
    assert smoke.train.max_steps == 4 and smoke.eval.energy is False
    (tmp_path / "x.yaml").write_text("train:\n  epochs: 9\n  max_steps: 5\n")
    assert sweep_config(HSFE, tmp_path / "x.yaml", [], smoke=True).train.max_steps == 5  # the YAML beats the spec


def test_first_points_are_suggested_first_and_vary_only_their_key():
    """``--first model.hsfe.num_subblocks=1,3,5``: the searcher's first three trials are the base HSFE with K set
    to each value (a one-factor comparison), then it samples on its own."""
    from spklip.runtime.tune.cli import parse_first
    from spklip.runtime.tune.space import build_searcher

    base = _base("spklip-tiny")
    key, values = parse_first("model.hsfe.num_subblocks=1, 3,5")
    assert (key, values) == ("model.hsfe.num_subblocks", [1, 3, 5])
    assert parse_first("model.hsfe.num_subblocks=auto,2")[1] == ["auto", 2]
    points = first_points(HSFE, base, key, values)
    searcher = build_searcher(HSFE.space, base, list(HSFE.metrics), seed=0, max_concurrent=1, points=points)
    configs = []
    for i in range(4):
        configs.append(config_params(searcher.suggest(f"t{i}")))
        searcher.on_trial_complete(f"t{i}", {"val/top1": 0.1 * i, "training_iteration": 1})
    hs = base.model.hsfe
    for cfg, k in zip(configs, values):
        assert cfg["model.hsfe.num_subblocks"] == k
        built = trial_config(base, cfg)
        assert built.model.hsfe.radius == hs.radius and built.model.hsfe.step == "auto"
        assert built.model.hsfe.num_branches == hs.num_branches
        assert built.model.hsfe.spatial_attention == hs.spatial_attention
        assert built.model.temporal.pos_embed == base.model.temporal.pos_embed
        assert built.model.temporal.pool == base.model.temporal.pool
    assert configs[3] not in configs[:3]  # then the searcher samples
    with pytest.raises(ValueError, match="not a parameter"):
        first_points(HSFE, base, "optim.lr", [1e-3])
    with pytest.raises(ConfigError, match="KEY=V1"):
        parse_first("model.hsfe.num_subblocks")


@pytest.mark.parametrize("argv, message", [
    (["--first", "model.hsfe.num_subblocks=1,3,5", "--num-samples", "2"], "fewer than the 3 --first trials"),
    (["--first", "model.hsfe.num_subblocks=1,3", "--resume"], "resumed sweep keeps"),
    (["--first", "optim.lr=0.1"], "not a parameter of this sweep"),
    (["--first", "model.hsfe.num_subblocks"], "KEY=V1"),
    (["--first", "model.hsfe.num_subblock=1,3"], "(did you mean 'model.hsfe.num_subblocks'?)"),
])
def test_bad_first_flags_fail_before_ray_starts(argv, message, tmp_path, capsys):
    assert main(HSFE, [*argv, "--set", f"train.run_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_fsve_sweep_first_points_vary_one_key_around_the_base():
    fsve = load_sweep("fsve-sweep")
    base = sweep_config(fsve)
    points = first_points(fsve, base, "model.fsve.time_steps", [1, 2])
    assert [p["model.fsve.time_steps"] for p in points] == [1, 2]
    for p in points:
        built = trial_config(base, p)
        assert built.model.fsve.tau == base.model.fsve.tau and built.model.fsve.variant == base.model.fsve.variant


@pytest.fixture
def sweep_starts_no_ray(monkeypatch):
    """Fail the test if the sweep gets as far as starting Ray."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(spklip.runtime.tune.sweep, "ensure_ray", refuse)
    was_up = ray.is_initialized()  # the session's shared Ray (conftest) may already run when the whole suite does
    yield
    assert ray.is_initialized() == was_up


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spklip: error: "), err
    return err


def test_a_misspelled_first_key_is_one_line_naming_the_closest_before_anything_starts(tmp_path, capsys,
                                                                                       sweep_starts_no_ray):
    assert spklip_main(["sweep", "hsfe-ablation", "--smoke-test", "--first", "model.hsfe.num_subblock=1,3",
                        "--set", f"train.run_dir={tmp_path}"]) == 2
    err = _one_error_line(capsys)
    assert "'model.hsfe.num_subblock'" in err and "did you mean 'model.hsfe.num_subblocks'?" in err
    assert list(tmp_path.iterdir()) == []  # no smoke data, no sweep folder, no MLflow store


def test_a_space_key_the_config_lacks_stops_the_sweep_before_its_first_trial(tmp_path, capsys, sweep_starts_no_ray):
    script = tmp_path / "typo_sweep.py"
    script.write_text("from spklip.runtime.tune.sweep import SweepSpec\n\n"
                      "def space(trial, base):\n"
                      "    trial.suggest_int('model.hsfe.radius', 1, 3)\n"
                      "    trial.suggest_categorical('model.hsfe.spatial_atention', [True, False])\n\n"
                      "SPEC = SweepSpec(name='typo', space=space, metrics=(('val/top1', 'max'),))\n")
    runs = tmp_path / "runs"
    assert spklip_main(["sweep", str(script), "--set", f"train.run_dir={runs}"]) == 2
    err = _one_error_line(capsys)
    assert "'model.hsfe.spatial_atention' is not a config key" in err
    assert "did you mean 'model.hsfe.spatial_attention'?" in err
    assert not runs.exists()


def test_a_sweep_of_local_mode_trials_refuses_an_object_store_before_ray(tmp_path, capsys, sweep_starts_no_ray):
    # the specs' trials train in local mode, which keeps checkpoints in a local folder: one line, nothing made
    runs = tmp_path / "runs"
    assert spklip_main(["sweep", "hsfe-ablation", "--storage", "s3://bucket/sweeps", "--set",
                        f"train.run_dir={runs}"]) == 2
    err = _one_error_line(capsys)
    assert "local mode (scale.num_workers=0) keeps checkpoints in a local folder" in err
    assert "--set scale.num_workers=1" in err and not (runs / "sweeps").exists()
