"""`join` follows the plan the host sends (rounds, epochs per round, learning rate, data kind,
the model it starts from), printing it; with a host that sends no plan (the original app,
older versions) it trains with its own options. Real processes through a real relay."""

from __future__ import annotations

import re
import shlex
import threading

import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")

from segmentation_suite.network.client import SyncClient  # noqa: E402
from segmentation_suite.training.model_file import load_model, save_model  # noqa: E402
from segmentation_suite.training.unet import ARCHITECTURE, build_unet  # noqa: E402


def test_join_follows_the_plan_and_starting_model_of_create(relay, cli, tmp_path):
    server = relay()
    start = tmp_path / "lab.safetensors"
    torch.manual_seed(5)
    save_model(start, build_unet().state_dict(), architecture=ARCHITECTURE, training={})
    plan = ["--rounds", "2", "--epochs-per-round", "2", "--learning-rate", "0.002"]
    host = cli(
        "create", "--name", "Alice", "--relay-url", server.url, "--synthetic", "--samples", "8",
        *plan, "--init", str(start),
    )  # fmt: skip
    code = shlex.split(host.wait_for(r"^Share this code: (.*)$", 60).group(1))[2]
    # The member gives none of the plan's options: its defaults are 5 rounds of 1 epoch.
    saved = tmp_path / "bob.safetensors"
    member = cli(
        "join", code, "--relay-url", server.url, "--synthetic", "--samples", "8",
        "--name", "Bob", "--save", str(saved),
    )  # fmt: skip
    described = (
        "rounds 1–2, 2 epoch(s) each, learning rate 0.002, synthetic images, "
        "starting from lab.safetensors"
    )
    host.wait_for(r"^Sent the starting model lab.safetensors to the members$", 60)
    host.wait_for(rf"^The plan: {re.escape(described)}$", 10)
    member.wait_for(rf"^Following the host's plan: {re.escape(described)}$", 60)
    member.wait_for(r"^Starting from the host's starting model lab.safetensors$", 60)
    for side in (host, member):
        side.finishes_rounds(2, "2 contributors", 300)
        side.wait_for(r"^  round 2/2, epoch 2/2: loss ", 1)  # the host's epochs per round
    assert "round 3/" not in member.stdout
    recorded = load_model(saved).training
    assert (recorded["rounds"], recorded["epochs_per_round"]) == (2, 2)
    assert recorded["learning_rate"] == pytest.approx(0.002)


def test_join_trains_with_its_own_options_when_the_host_sends_no_plan(relay, cli):
    """The host here is a bare SyncClient that announces the architecture and averages, as the
    original app does, and sends no plan."""
    server = relay()
    host = SyncClient(aggregation_timeout=120)
    created, joined = threading.Event(), threading.Event()
    host.room_created.connect(lambda code: created.set())
    host.user_joined_room.connect(lambda name: joined.set())
    host.create_relay_room("Original", relay_url=server.url, private=False)
    try:
        assert created.wait(30), "the room was not created"
        member = cli(
            "join", host.room_code, "--relay-url", server.url, "--synthetic", "--samples", "8",
            "--rounds", "2", "--name", "Bob",
        )  # fmt: skip
        assert joined.wait(60), member.stdout + member.stderr
        host.send_architecture(ARCHITECTURE)  # the original app's start
        member.wait_for(
            r"^The host sent no plan: training with this command's options \(rounds 1–2, "
            r"1 epoch\(s\) each, learning rate 0.003\)$",
            60,
        )
        member.finishes_rounds(2, "1 contributor", 300)
        assert "Following the host's plan" not in member.stdout
    finally:
        host.disconnect()
