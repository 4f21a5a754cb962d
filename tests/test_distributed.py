"""
Data-parallel training under torchrun: two gloo processes on CPU against one
process that accumulates the same shards, and the errors of a bad launch.

Every rendezvous is on 127.0.0.1, at a port the test takes from the
operating system.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from pyro_diffusion.cli import main
from pyro_diffusion.distributed import (
    DistributedSetupError,
    Placement,
    check_batch_size,
    placement_from_environment,
    shard_seed,
)

SMALL = ["--dataset", "swiss-roll", "--timesteps", "6", "--hidden-dim", "16", "--batch-size", "8", "--no-progress"]
RUN_FILES = {"checkpoint.pt", "config.json", "heldout.pt", "metrics.json", "samples.png"}
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _clean_environment():
    environment = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    environment["OMP_NUM_THREADS"] = "1"
    return environment


def _torchrun(*args, processes=2):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "pyro_diffusion.cli",
        "train",
        *[str(a) for a in args],
    ]


def _one_process(*args):
    return [sys.executable, "-m", "pyro_diffusion.cli", "train", *[str(a) for a in args]]


def _run(command, timeout=120):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_clean_environment())


def _trainer_state(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]


def _assert_same_parameters(left, right):
    assert left.keys() == right.keys()
    for name, value in left.items():
        assert torch.allclose(value, right[name], rtol=1e-5, atol=1e-6), name


def test_two_processes_match_one_accumulating(tmp_path):
    parallel = tmp_path / "parallel"
    single = tmp_path / "single"

    launched = _run(_torchrun(*SMALL, "--steps", 10, "--out", parallel))
    accumulated = _run(_one_process(*SMALL, "--steps", 10, "--out", single, "--accumulate", 2))

    assert launched.returncode == 0, launched.stderr[-3000:]
    assert accumulated.returncode == 0, accumulated.stderr[-3000:]
    assert {path.name for path in tmp_path.iterdir()} == {"parallel", "single"}
    assert {path.name for path in parallel.iterdir()} == RUN_FILES
    assert launched.stdout.count("run folder:") == 1
    parallel_state = _trainer_state(parallel)
    single_state = _trainer_state(single)
    assert parallel_state["step"] == single_state["step"] == 10
    assert parallel_state["shards"] == single_state["shards"] == 2
    _assert_same_parameters(parallel_state["model"], single_state["model"])
    _assert_same_parameters(parallel_state["ema"]["shadow"], single_state["ema"]["shadow"])
    for parallel_rng, single_rng in zip(parallel_state["shard_rng"], single_state["shard_rng"]):
        assert torch.equal(parallel_rng["cpu"], single_rng["cpu"])


def test_indivisible_batch_fails_on_every_rank(tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    result = _run(_torchrun(*SMALL[:-3], "--batch-size", 7, "--no-progress", "--steps", 5, "--out", out), timeout=90)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("--batch-size 7 does not split into 2 equal shards") == 2, output[-3000:]
    assert "such as 6 or 8" in output
    assert time.monotonic() - started < 60
    assert not out.exists()


def test_missing_master_address_named(tmp_path, monkeypatch, capsys):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")

    status = main(["train", *SMALL, "--steps", "2", "--out", str(tmp_path / "run")])

    assert status == 2
    message = capsys.readouterr().err
    assert "MASTER_ADDR, MASTER_PORT not set" in message
    assert "torchrun" in message
    assert not (tmp_path / "run").exists()


def test_absent_peer_times_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    started = time.monotonic()

    status = main(["train", *SMALL, "--steps", "2", "--out", str(tmp_path / "run"), "--distributed-timeout", "2"])

    assert status == 2
    message = capsys.readouterr().err
    assert "rendezvous of 2 processes at 127.0.0.1" in message
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


def test_resume_rejects_other_shard_count(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--steps", "2", "--out", str(out), "--accumulate", "2"]) == 0
    capsys.readouterr()

    status = main(["train", *SMALL, "--steps", "4", "--out", str(out), "--resume"])

    assert status == 2
    message = capsys.readouterr().err
    assert "S = 2 shard(s)" in message
    assert "S = 1" in message
    assert _trainer_state(out)["step"] == 2


def test_interrupted_two_process_run_resumes_exactly(tmp_path):
    steps = 300
    interrupted = tmp_path / "interrupted"
    # A session of its own lets the test send SIGINT to the launcher and its
    # workers together, as Ctrl-C in a terminal does.
    process = subprocess.Popen(
        _torchrun(*SMALL, "--steps", steps, "--out", interrupted),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_clean_environment(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (interrupted / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=90)

    assert "interrupted at step" in output, output[-3000:]
    saved_step = _trainer_state(interrupted)["step"]
    assert 0 < saved_step < steps
    resumed = _run(_torchrun(*SMALL, "--steps", steps, "--out", interrupted, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    straight = tmp_path / "straight"
    accumulated = _run(_one_process(*SMALL, "--steps", steps, "--out", straight, "--accumulate", 2))
    assert accumulated.returncode == 0, accumulated.stderr[-3000:]
    _assert_same_parameters(_trainer_state(interrupted)["model"], _trainer_state(straight)["model"])


@pytest.mark.parametrize("batch_size, world_size, accumulate", [(8, 2, 1), (8, 2, 2), (12, 3, 2), (5, 1, 5)])
def test_batch_size_accepted_when_divisible(batch_size, world_size, accumulate):
    check_batch_size(batch_size, Placement(world_size=world_size, accumulate=accumulate))


def test_batch_size_error_names_fix():
    with pytest.raises(DistributedSetupError, match=r"multiple of 4, such as 8 or 12"):
        check_batch_size(10, Placement(world_size=2, accumulate=2))
    with pytest.raises(DistributedSetupError, match=r"such as 4\b"):
        check_batch_size(3, Placement(world_size=4))


def test_placement_read_from_torchrun_variables():
    environment = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}

    placement = placement_from_environment(2, environment)

    assert placement == Placement(rank=3, world_size=4, local_rank=1, accumulate=2)
    assert placement.num_shards == 8
    assert list(placement.local_shards) == [6, 7]
    assert not placement.is_main
    assert placement_from_environment(3, {}) == Placement(accumulate=3)


@pytest.mark.parametrize(
    "environment, accumulate, message",
    [
        ({"WORLD_SIZE": "two"}, 1, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, 1, "outside 0..1"),
        ({}, 0, "--accumulate must be an integer >= 1"),
    ],
)
def test_placement_rejects_bad_launch(environment, accumulate, message):
    with pytest.raises(DistributedSetupError, match=message):
        placement_from_environment(accumulate, environment)


def test_shard_seeds_distinct_and_stable():
    seeds = [shard_seed(0, g) for g in range(4)] + [shard_seed(1, g) for g in range(4)]

    assert len(set(seeds)) == 8
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert shard_seed(0, 3) == seeds[3]
