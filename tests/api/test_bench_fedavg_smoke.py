"""Smoke test of bench/bench_fedavg.py: two members, a tiny layout, one round of each method.

No timing is asserted (the machine is shared); the figures must exist, the averages be right,
and the relay's byte counters agree with what the members say they sent: gossip's binaries
crossed the relay once in and N-1 times out, byte for byte; ours added only frame headers to
one push in and out, and the global model in once and out to the N-1 others.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.relay_process import relay_binary

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_fedavg.py"
HEADERS = 512  # bytes of frame headers the relay may count on top of ours' payloads


def test_bench_fedavg_two_members_tiny_layout(tmp_path):
    pytest.importorskip("torch", reason="the gossip method needs torch (torch.save/load)")
    if not relay_binary().exists():
        pytest.skip(f"relay binary {relay_binary()} not built (make -C relay_server)")
    layout = [
        {"name": "conv.weight", "shape": [16, 8, 3, 3], "dtype": "float32"},
        {"name": "bn.num_batches_tracked", "shape": [], "dtype": "int64"},
        {"name": "head.weight", "shape": [50_000], "dtype": "float32"},
        {"name": "head.bias", "shape": [2], "dtype": "float32"},
    ]
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps({"layout": layout}))
    out = tmp_path / "rounds.json"
    command = [sys.executable, str(BENCH), "--members", "2", "--runs", "1", "--timeout", "60"]
    command += ["--layout", str(layout_file), "--json", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr
    assert "| 2 | ours |" in finished.stdout and "| 2 | gossip |" in finished.stdout
    assert "2 members: gossip/ours time" in finished.stdout

    rounds = json.loads(out.read_text())["rounds"]
    # One warm-up and one counted round of each method.
    assert sorted((r["method"], r["run"]) for r in rounds) == [
        ("gossip", -1),
        ("gossip", 0),
        ("ours", -1),
        ("ours", 0),
    ]
    members = 2
    for r in rounds:
        relay = r["relay"]
        assert r["members"] == members
        assert r["seconds"] > 0 and r["max_error"] < 2e-3
        assert r["relay_bytes"] == sum(relay.values())
        assert relay["received_text"] > 0 and relay["sent_text"] > 0
        pushes = r["push_bytes"]
        assert pushes > 50_000  # float16 of the layout's 51,154 floats at least
        if r["method"] == "gossip":
            assert relay["received_binary"] == pushes
            assert relay["sent_binary"] == (members - 1) * pushes == r["received_bytes"]
        else:
            model = r["global_bytes"]
            assert model > 50_000
            extra_in = relay["received_binary"] - (pushes + model)
            extra_out = relay["sent_binary"] - (pushes + (members - 1) * model)
            assert 0 < extra_in < HEADERS and 0 < extra_out < HEADERS, relay
    # issue 15's yardstick, side by side in the same run
    assert "x numpy copy" in finished.stdout and "a numpy copy (" in finished.stdout
    figures = json.loads(out.read_text())
    assert figures["numpy_copy_ms"] > 0
    assert (figures["compression"], figures["room"]) == (None, "open")
    # and the round's floor beside it: two one-way float16 transfers plus a numpy average
    floor = figures["floors"]["2"]
    assert floor["one_way_ms"] > 0 and floor["average_ms"] > 0
    assert floor["floor_ms"] == 2 * floor["one_way_ms"] + floor["average_ms"]
    assert "; floor " in finished.stdout and "round/floor " in finished.stdout


def test_bench_fedavg_ours_alone_with_deltas_in_a_private_room(tmp_path):
    """--methods ours skips gossip; --compression auto sends the second round's push as a
    delta (smaller than the first, whole one); --room private seals it, and the average is
    still right; --no-floor skips the floor's transfers."""
    pytest.importorskip("torch", reason="the bench's models are torch state dicts")
    if not relay_binary().exists():
        pytest.skip(f"relay binary {relay_binary()} not built (make -C relay_server)")
    layout = [
        {"name": "conv.weight", "shape": [16, 8, 3, 3], "dtype": "float32"},
        {"name": "head.weight", "shape": [50_000], "dtype": "float32"},
    ]
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps({"layout": layout}))
    out = tmp_path / "rounds.json"
    command = [sys.executable, str(BENCH), "--members", "2", "--runs", "1", "--timeout", "60"]
    command += ["--methods", "ours", "--compression", "auto", "--room", "private", "--no-floor"]
    command += ["--layout", str(layout_file), "--json", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr
    assert "| 2 | ours |" in finished.stdout and "| 2 | gossip |" not in finished.stdout
    assert "the private room with compression=auto" in finished.stdout
    assert "; floor " not in finished.stdout  # --no-floor
    figures = json.loads(out.read_text())
    rounds = {r["run"]: r for r in figures["rounds"]}
    assert sorted(rounds) == [-1, 0] and {r["method"] for r in rounds.values()} == {"ours"}
    assert all(r["max_error"] < 2e-3 for r in rounds.values()), rounds
    # the warm-up push went whole (float16), the next one as a q8 delta: about half of it
    assert rounds[0]["push_bytes"] < 0.7 * rounds[-1]["push_bytes"]
    assert rounds[-1]["push_bytes"] > 2 * 50_000
