import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_diffusion.cli import main

FAST = ["--steps", "20", "--timesteps", "6", "--hidden-dim", "16", "--no-progress"]


def run_cli(*args):
    return main([str(a) for a in args])


def test_train_swiss_roll_writes_run(tmp_path):
    out = tmp_path / "run"
    status = run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST)

    assert status == 0
    for name in ["checkpoint.pt", "metrics.json", "samples.png", "heldout.pt", "config.json"]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in [
        "dataset",
        "timesteps",
        "steps",
        "heldout_elbo_bits",
        "heldout_elbo_bits_per_dim",
        "heldout_k_minus_l_null_bits",
        "true_log_likelihood_bits",
    ]:
        assert key in metrics, key
    assert metrics["timesteps"] == 6
    assert metrics["steps"] == 20
    assert metrics["heldout_elbo_bits"] <= metrics["true_log_likelihood_bits"] + 0.5
    assert metrics["heldout_k_minus_l_null_bits"] == pytest.approx(
        metrics["heldout_elbo_bits"] + 2 * 0.5 * np.log2(2 * np.pi * np.e)
    )


def test_train_digits_reports_baseline(tmp_path, capsys):
    out = tmp_path / "digits"
    status = run_cli("train", "--out", out, *FAST)

    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "digits"
    assert metrics["dimension"] == 64
    assert "heldout_nll_bits_per_dim" in metrics
    assert metrics["baseline_nll_bits_per_dim"] == pytest.approx(2.42, abs=0.02)
    printed = capsys.readouterr().out
    assert "bits per dimension" in printed
    assert "categorical baseline" in printed


def test_sample_and_evaluate_fresh_process(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    before = json.loads((out / "metrics.json").read_text())

    for command in (["evaluate", str(out)], ["sample", str(out), "--num-samples", "10"]):
        result = subprocess.run(
            [sys.executable, "-m", "pyro_diffusion.cli", *command], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr

    after = json.loads((out / "metrics.json").read_text())
    assert after["heldout_elbo_bits"] == pytest.approx(before["heldout_elbo_bits"], rel=1e-5)
    samples = torch.load(out / "samples.pt")
    assert samples.shape == (10, 2)


def test_train_user_array(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    out = tmp_path / "run"

    assert run_cli("train", "--data", path, "--out", out, *FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "array"
    assert metrics["dimension"] == 3


def test_resume_continues_steps(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    args = [a if a != "20" else "30" for a in FAST]

    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, "--resume", *args) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 30


def _nan_file(tmp_path):
    path = tmp_path / "nan.npy"
    values = np.zeros((10, 2), dtype=np.float32)
    values[3, 1] = np.nan
    np.save(path, values)
    return ["--data", path]


def _empty_file(tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 2), dtype=np.float32))
    return ["--data", path]


def _flat_file(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros(10, dtype=np.float32))
    return ["--data", path]


BAD_INPUTS = {
    "nan values": (_nan_file, "NaN"),
    "empty data": (_empty_file, "zero examples"),
    "one dimension": (_flat_file, "shape"),
    "missing file": (lambda p: ["--data", p / "missing.npy"], "missing.npy"),
    "unknown dataset": (lambda p: ["--dataset", "mnist-xl"], "mnist-xl"),
    "zero timesteps": (lambda p: ["--timesteps", "0"], "timesteps"),
    "beta outside unit interval": (lambda p: ["--beta-1", "1.5"], "1.5"),
    "unknown schedule": (lambda p: ["--schedule", "quadratic"], "quadratic"),
    "unknown learned start": (lambda p: ["--schedule", "learned-quadratic"], "learned-quadratic"),
    "unknown prediction": (lambda p: ["--dataset", "heartbeat", "--prediction", "x1"], "x1"),
    "unknown network": (lambda p: ["--network", "transformer"], "transformer"),
    "gaussian kernel on binary data": (lambda p: ["--dataset", "heartbeat", "--kernel", "epsilon"], "--kernel binomial"),
    "schedule with binomial": (lambda p: ["--dataset", "heartbeat", "--schedule", "cosine"], "schedule"),
    "beta_1 with binomial": (lambda p: ["--dataset", "heartbeat", "--beta-1", "0.3"], "beta_1"),
    "empty learned start": (lambda p: ["--schedule", "learned-"], "learned-"),
    "conv on vectors": (lambda p: ["--dataset", "swiss-roll", "--network", "conv"], "--network mlp"),
    "image size for vectors": (lambda p: ["--dataset", "swiss-roll", "--image-size", "8"], "image_size"),
    "image size too small": (lambda p: ["--dataset", "dead-leaves", "--image-size", "2"], "image_size"),
    "unknown variance": (lambda p: ["--variance", "medium"], "medium"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_without_folder(tmp_path, capsys, case):
    make_args, expected = BAD_INPUTS[case]
    out = tmp_path / "run"
    args = [str(a) for a in make_args(tmp_path)]
    if "--timesteps" in args:
        fast = [a for a in FAST if a not in ("--timesteps", "6")]
    else:
        fast = FAST

    status = run_cli("train", "--out", out, *args, *fast)

    assert status == 2
    message = capsys.readouterr().err
    assert expected.lower() in message.lower()
    assert len(message.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_run_folder_rejected(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "note.txt").write_text("keep me")

    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "note.txt").read_text() == "keep me"


def test_evaluate_missing_run(tmp_path, capsys):
    assert run_cli("evaluate", tmp_path / "nowhere") == 2
    assert "not found" in capsys.readouterr().err


def test_seed_fixes_whole_run(tmp_path):
    bounds = []
    for name in ("first", "second"):
        out = tmp_path / name
        assert run_cli("train", "--dataset", "swiss-roll", "--out", out, "--seed", 3, *FAST) == 0
        bounds.append(json.loads((out / "metrics.json").read_text())["heldout_elbo_bits"])

    assert bounds[0] == bounds[1]


@pytest.mark.parametrize("name", ["checkpoint.png", "heldout.png"])
def test_sample_refuses_run_files(tmp_path, capsys, name):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    before = (out / name.replace(".png", ".pt")).read_bytes()

    assert run_cli("sample", out, "--out", out / name) == 2
    assert "overwrite" in capsys.readouterr().err
    assert (out / name.replace(".png", ".pt")).read_bytes() == before


def test_resume_names_changed_option(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    changed = [a if a != "16" else "32" for a in FAST]

    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, "--resume", *changed) == 2
    assert "hidden_dim (saved 16, now 32, from the options or their defaults)" in capsys.readouterr().err


def test_resume_rejects_fewer_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    fewer = [a if a != "20" else "10" for a in FAST]

    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, "--resume", *fewer) == 2
    assert "below the 20 steps" in capsys.readouterr().err


def test_small_image_array_in_data_units(tmp_path):
    path = tmp_path / "images.npy"
    images = np.random.default_rng(1).normal(loc=5.0, scale=2.0, size=(30, 4, 3)).astype(np.float32)
    np.save(path, images)
    out = tmp_path / "run"

    assert run_cli("train", "--data", path, "--out", out, *FAST) == 0
    assert (out / "samples.png").is_file()
    assert run_cli("sample", out, "--num-samples", 5) == 0
    samples = torch.load(out / "samples.pt")
    assert samples.shape == (5, 4, 3)
    # The saved samples are the model's samples mapped back by the training
    # split's per-feature mean and scale.
    from pyro_diffusion.cli import _load_run

    _, _, diffusion, data = _load_run(out)
    model_scale = diffusion.sample(5, generator=torch.Generator().manual_seed(0))
    expected = (model_scale * data.scale + data.center).reshape(5, 4, 3)
    torch.testing.assert_close(samples, expected)
    assert float(data.center.mean()) == pytest.approx(5.0, abs=0.5)
    assert data.scale == pytest.approx(2.0, rel=0.25)


def test_single_heldout_metrics_strict_json(tmp_path):
    path = tmp_path / "few.npy"
    np.save(path, np.random.default_rng(2).normal(size=(5, 2)).astype(np.float32))
    out = tmp_path / "run"

    assert run_cli("train", "--data", path, "--out", out, *FAST) == 0
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["heldout_elbo_bits_stderr"] is None


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--schedule", "cosine", "--beta-1", "0.01"], "--beta-1"),
        (["--kernel", "paper", "--variance", "small"], "--variance"),
        (["--noise", "0.3"], "--noise"),
        (["--schedule", "learned-cosine", "--beta-1", "0.01"], "--beta-1"),
        (["--prediction", "flip"], "prediction"),
    ],
)
def test_ignored_option_rejected(tmp_path, capsys, extra, expected):
    assert run_cli("train", "--out", tmp_path / "run", *extra, *FAST) == 2
    assert expected in capsys.readouterr().err


def _level_file(tmp_path, top=3):
    path = tmp_path / "levels.npy"
    values = np.random.default_rng(3).integers(0, top + 1, size=(60, 3, 3)).astype(np.uint8)
    np.save(path, values)
    return path


def test_levels_array_dequantized(tmp_path):
    out = tmp_path / "run"

    assert run_cli("train", "--data", _level_file(tmp_path), "--levels", 4, "--out", out, *FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "heldout_nll_bits_per_dim" in metrics
    assert "baseline_nll_bits_per_dim" in metrics
    assert metrics["dequantization"]["num_levels"] == 4
    assert run_cli("sample", out, "--num-samples", 4) == 0
    samples = torch.load(out / "samples.pt")
    assert samples.shape == (4, 3, 3)
    assert samples.dtype == torch.long
    assert int(samples.min()) >= 0
    assert int(samples.max()) <= 3


def test_levels_too_few_rejected(tmp_path, capsys):
    out = tmp_path / "run"

    assert run_cli("train", "--data", _level_file(tmp_path), "--levels", 3, "--out", out, *FAST) == 2
    assert "--levels" in capsys.readouterr().err
    assert not out.exists()


def test_levels_need_user_array(tmp_path, capsys):
    assert run_cli("train", "--levels", 4, "--out", tmp_path / "run", *FAST) == 2
    assert "levels" in capsys.readouterr().err


def _train_process(out, steps):
    args = ["--dataset", "swiss-roll", "--out", str(out), "--steps", str(steps), "--timesteps", "6"]
    args += ["--hidden-dim", "16", "--no-progress"]
    return [sys.executable, "-m", "pyro_diffusion.cli", "train", *args]


def _final_weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["model"]


def test_interrupt_then_resume_is_exact(tmp_path):
    import signal
    import time

    steps = 2000
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_train_process(interrupted, steps), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (interrupted / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    saved_step = torch.load(interrupted / "checkpoint.pt", weights_only=True)["trainer"]["step"]
    assert 0 < saved_step < steps
    resumed = subprocess.run(
        _train_process(interrupted, steps) + ["--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr

    straight = tmp_path / "straight"
    assert subprocess.run(_train_process(straight, steps), capture_output=True).returncode == 0
    for name, value in _final_weights(straight).items():
        assert torch.equal(value, _final_weights(interrupted)[name]), name


def test_evaluate_importance_samples(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0

    assert run_cli("evaluate", out, "--importance-samples", 16) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["importance_samples"] == 16
    # Averaged over 2000 examples, 16 trajectories do not fall below the bound.
    assert metrics["heldout_log_likelihood_bits"] >= metrics["heldout_elbo_bits"] - 3 * metrics["heldout_elbo_bits_stderr"]
    assert metrics["heldout_log_likelihood_bits_stderr"] > 0
    assert "importance-sampled with K = 16" in capsys.readouterr().out


def test_evaluate_importance_samples_invalid(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0

    assert run_cli("evaluate", out, "--importance-samples", 0) == 2
    assert "--importance-samples" in capsys.readouterr().err


def test_train_heartbeat_binomial(tmp_path):
    out = tmp_path / "heartbeat"

    assert run_cli("train", "--dataset", "heartbeat", "--out", out, *FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["true_log_likelihood_bits"] == pytest.approx(-np.log2(5))
    assert metrics["l_null_bits"] == pytest.approx(-14.439, abs=1e-3)
    assert metrics["heldout_k_minus_l_null_bits"] == pytest.approx(metrics["heldout_elbo_bits"] + 14.439, abs=1e-3)
    assert metrics["heldout_elbo_bits"] < metrics["true_log_likelihood_bits"]
    assert run_cli("sample", out, "--num-samples", 6) == 0
    samples = torch.load(out / "samples.pt")
    assert samples.shape == (6, 1, 20)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}


def test_binomial_kernel_rejects_real_data(tmp_path, capsys):
    path = tmp_path / "real.npy"
    np.save(path, np.random.default_rng(4).normal(size=(30, 3)).astype(np.float32))

    assert run_cli("train", "--data", path, "--kernel", "binomial", "--out", tmp_path / "run", *FAST) == 2
    assert "binary" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["learned", "learned-log-snr"])
def test_learned_schedule_trains_and_reloads(tmp_path, schedule):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--schedule", schedule, "--out", out, *FAST) == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    weights = checkpoint["trainer"]["model"]
    names = [name for name in weights if name.endswith("unconstrained_betas")]
    assert names, sorted(weights)
    initial = weights[names[0]].clone()
    trained = json.loads((out / "metrics.json").read_text())

    assert run_cli("evaluate", out) == 0
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["heldout_elbo_bits"] == pytest.approx(trained["heldout_elbo_bits"])
    assert initial.shape == (5,)


def test_heartbeat_prediction_saved(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "heartbeat", "--prediction", "flip", "--out", out, *FAST) == 0
    assert json.loads((out / "config.json").read_text())["prediction"] == "flip"
    default = tmp_path / "default"
    assert run_cli("train", "--dataset", "heartbeat", "--out", default, *FAST) == 0
    assert json.loads((default / "config.json").read_text())["prediction"] == "x0"


@pytest.mark.parametrize("dataset", ["dead-leaves", "textures"])
def test_image_datasets_train_with_conv(tmp_path, dataset):
    out = tmp_path / dataset
    fast = FAST + ["--image-size", "8", "--hidden-dim", "4"]

    assert run_cli("train", "--dataset", dataset, "--out", out, *fast) == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["network"] == "conv"
    assert metrics["dimension"] == 64
    assert metrics["dequantization"]["num_levels"] == 256
    assert "heldout_nll_bits_per_dim" in metrics
    assert (out / "samples.png").is_file()
    assert run_cli("sample", out, "--num-samples", 3) == 0
    samples = torch.load(out / "samples.pt")
    assert samples.shape == (3, 1, 8, 8)
    assert samples.min() >= 0
    assert samples.max() <= 255


def test_conv_network_on_digits(tmp_path):
    out = tmp_path / "digits"
    assert run_cli("train", "--network", "conv", "--out", out, *FAST) == 0
    assert run_cli("evaluate", out) == 0


@pytest.mark.parametrize(
    "command, extra",
    [
        ("inpaint", ["--mask", "center"]),
        ("inpaint", ["--mask", "random", "--sampler", "product"]),
        ("denoise", ["--sigma", "0.5"]),
        ("denoise", ["--sigma", "0.5", "--sampler", "product"]),
    ],
)
def test_posterior_commands_write_figure_and_arrays(tmp_path, command, extra):
    out = tmp_path / "digits"
    assert run_cli("train", "--out", out, *FAST) == 0

    status = run_cli(command, out, "--particles", 4, "--num-images", 3, *extra)

    assert status == 0
    assert (out / f"{command}.png").is_file()
    arrays = np.load(out / f"{command}.npz")
    assert arrays["samples"].shape == (3, 8, 8)
    assert arrays["truth"].shape == (3, 8, 8)
    assert arrays["mask"].shape == (3, 64)
    if command == "inpaint":
        observed = arrays["mask"].reshape(3, 8, 8)
        assert np.array_equal(arrays["samples"][observed], arrays["truth"][observed])
        assert not observed.all()
    else:
        assert arrays["mask"].all()
        assert float(arrays["sigma"]) == 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["denoise", "--sigma", "0"], "--sigma"),
        (["denoise", "--sigma", "1e-20"], "--sigma"),
        (["denoise", "--sigma", "inf"], "--sigma"),
        (["inpaint", "--mask", "diagonal"], "diagonal"),
        (["inpaint", "--particles", "0"], "--particles"),
        (["inpaint", "--sampler", "gibbs"], "gibbs"),
    ],
)
def test_posterior_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "digits"
    assert run_cli("train", "--out", out, *FAST) == 0
    capsys.readouterr()

    assert run_cli(args[0], out, *args[1:]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert len(error.strip().splitlines()) == 1


def test_posterior_needs_image_run(tmp_path, capsys):
    out = tmp_path / "roll"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0

    assert run_cli("inpaint", out) == 2
    assert "image" in capsys.readouterr().err


def _optimizer_lrs(path):
    state = torch.load(path, weights_only=True)["trainer"]["optimizer"]
    return sorted(group["lr"] for value in state.values() for group in value["param_groups"])


def test_resume_with_more_steps_spreads_decay(tmp_path):
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    base = ["--dataset", "swiss-roll", "--timesteps", "6", "--hidden-dim", "16", "--no-progress"]
    assert run_cli("train", "--out", straight, "--steps", 40, *base) == 0
    assert run_cli("train", "--out", resumed, "--steps", 20, *base) == 0

    assert run_cli("train", "--out", resumed, "--steps", 40, "--resume", *base) == 0

    for final, expected in zip(_optimizer_lrs(resumed / "checkpoint.pt"), _optimizer_lrs(straight / "checkpoint.pt")):
        assert final == pytest.approx(expected, rel=1e-6)


def test_failed_run_leaves_empty_folder_empty(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()

    status = run_cli("train", "--dataset", "dead-leaves", "--image-size", 8, "--kernel", "binomial", "--out", out, *FAST)

    assert status == 2
    assert list(out.iterdir()) == []


def test_evaluate_defaults_to_run_seed(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--seed", 3, "--out", out, *FAST) == 0
    trained = json.loads((out / "metrics.json").read_text())

    assert run_cli("evaluate", out) == 0
    evaluated = json.loads((out / "metrics.json").read_text())

    assert evaluated["heldout_elbo_bits"] == trained["heldout_elbo_bits"]


def test_binomial_kernel_on_binary_array(tmp_path):
    path = tmp_path / "bits.npy"
    np.save(path, (np.random.default_rng(5).random((40, 6)) < 0.3).astype(np.float32))
    out = tmp_path / "run"

    assert run_cli("train", "--data", path, "--kernel", "binomial", "--out", out, *FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["l_null_bits"] < 0
    assert run_cli("sample", out, "--num-samples", 4) == 0
    samples = torch.load(out / "samples.pt")
    assert set(samples.unique().tolist()) <= {0.0, 1.0}


def test_heldout_figure_uses_stored_levels():
    from pyro_diffusion.experiment import RunConfig, prepare_data

    prepared = prepare_data(RunConfig().resolved())

    levels = prepared.heldout_in_data_units()
    assert levels.shape == (len(prepared.heldout), 8, 8)
    assert torch.equal(levels.reshape(len(levels), -1), prepared.heldout)


@pytest.mark.parametrize("extra", [["--sampling-steps", "3", "--eta", "0"], ["--sampling-steps", "6"]])
def test_sample_few_steps(tmp_path, extra):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0

    assert run_cli("sample", out, "--num-samples", 5, "--out", tmp_path / "few.png", *extra) == 0
    samples = torch.load(tmp_path / "few.pt")
    assert samples.shape == (5, 2)
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize(
    "extra, message", [(["--eta", "0"], "--sampling-steps"), (["--sampling-steps", "7"], "sampling_steps")]
)
def test_sample_few_steps_bad_input(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    capsys.readouterr()

    assert run_cli("sample", out, *extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "inpaint"])
def test_missing_run_folder_named(tmp_path, capsys, command):
    missing = tmp_path / "missing"

    assert run_cli(command, missing) == 2
    error = capsys.readouterr().err
    assert "run folder" in error
    assert "--out" not in error


def _trained_run(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    return out


def _truncate(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _foreign(path):
    torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("damage", [_truncate, _foreign], ids=["truncated", "foreign"])
@pytest.mark.parametrize("command", ["evaluate", "sample", "resume"])
def test_damaged_checkpoint_named_and_left_alone(tmp_path, capsys, damage, command):
    out = _trained_run(tmp_path)
    checkpoint = out / "checkpoint.pt"
    damage(checkpoint)
    damaged = checkpoint.read_bytes()
    capsys.readouterr()
    if command == "resume":
        args = ["train", "--dataset", "swiss-roll", "--out", out, "--resume", *FAST]
    else:
        args = [command, out]
    assert run_cli(*args) == 2
    error = capsys.readouterr().err
    assert "checkpoint.pt is not a readable pyro-diffusion checkpoint" in error
    assert checkpoint.read_bytes() == damaged


def test_checkpoint_holds_everything_to_resume(tmp_path):
    out = _trained_run(tmp_path)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    trainer = checkpoint["trainer"]
    assert set(trainer) >= {"step", "model", "optimizer", "sampler", "ema", "torch_rng", "data_rng"}
    assert trainer["step"] == 20
    # The schedule travels with the model's tensors and the configuration.
    assert any("schedule.betas" in name for name in trainer["model"])
    assert checkpoint["config"]["schedule"] and checkpoint["config"]["timesteps"] == 6
    # One optimizer state per parameter tensor of the network, each with its Adam moments.
    optimized = {name.split("$$$")[-1] for name in trainer["optimizer"]}
    assert optimized == {name[len("reverse."):] for name, _ in _model_parameters(checkpoint)}
    for state in trainer["optimizer"].values():
        assert {"exp_avg", "exp_avg_sq"} <= set(state["state"][0])


def _model_parameters(checkpoint):
    from pyro_diffusion.experiment import RunConfig, build_model

    config = RunConfig(**checkpoint["config"])
    return build_model(config, 2, None, None).named_parameters()


def test_atomic_save_failure_keeps_file(tmp_path):
    from pyro_diffusion.experiment import save_atomic

    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"step": 2, "unpicklable": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_interrupt_mid_step_saves_nothing(tmp_path, capsys, monkeypatch):
    from pyro.infer import SVI

    out = tmp_path / "run"
    original_step = SVI.step
    calls = []

    def step_then_interrupt(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 5:
            # A second Ctrl-C lands while the step is part way done.
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(SVI, "step", step_then_interrupt)
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 130
    assert "interrupted during step 5, so nothing was saved" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "heldout.pt"]

    monkeypatch.setattr(SVI, "step", original_step)
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, "--resume", *FAST) == 2
    assert "train without --resume to start it again" in capsys.readouterr().err
    assert run_cli("train", "--dataset", "swiss-roll", "--out", out, *FAST) == 0
    assert (out / "checkpoint.pt").exists()


def test_ctrl_c_repeated_within_the_window_counts_once():
    import signal
    import time

    from pyro_diffusion.train import _DeferredInterrupt

    interrupt = _DeferredInterrupt(repeat_window=0.2)
    try:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested
        time.sleep(0.25)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        interrupt.restore()
