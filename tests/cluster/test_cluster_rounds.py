"""Our SyncClients in a room spread over three relay nodes: FedAvg rounds with directed pushes
complete, and when one member's node is killed in the middle of a round, that member resumes
on another node through HAProxy and the round completes with its push.

The host is a SyncClient in the test process on node A; member m1 connects to node C directly;
member m2 connects through HAProxy, which hashes the room to some node X (its /health says
which). The room is made again until X is not the host's node, so that killing X kills only
m2's node.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

API = Path(__file__).resolve().parents[1] / "api"
sys.path.insert(0, str(API))  # members.py, spawned into the member processes, lives there
_spec = importlib.util.spec_from_file_location("api_fixtures", API / "conftest.py")
api_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api_fixtures)
from members import layout_state  # noqa: E402
from test_api_rooms import make_client  # noqa: E402

pytestmark = pytest.mark.slow


def node_id(relay) -> str:
    """The cluster node id a relay process logged when it joined."""
    for line in relay.log:
        found = re.search(r"cluster_joined node=([0-9a-f]+)", line)
        if found:
            return found.group(1)
    raise AssertionError("relay did not log cluster_joined")


LAYOUT = [
    {"name": "conv.weight", "shape": [64, 32, 3, 3], "dtype": "float32"},
    {"name": "conv.bias", "shape": [64], "dtype": "float32"},
]


@pytest.fixture
def recorder():
    recorder = api_fixtures.Recorder()
    yield recorder
    for client in recorder.clients:
        client.disconnect()


@pytest.fixture
def members(recorder):
    group = api_fixtures.Members(recorder)
    yield group
    group.stop()


def everyone_in(recorder, expected):
    users = recorder.of("host", "users")
    return users and sorted(users[-1][0]) == sorted(expected)


def test_rounds_across_nodes_survive_a_killed_member_node(
    cluster, haproxy, recorder, members, tmp_path
):
    nodes = cluster(3, "--secret-file", str(tmp_path / "resume.key"))
    ids = [node_id(node) for node in nodes]
    proxy = haproxy(nodes)

    # A room whose hashed node is not the host's (node A).
    for _attempt in range(12):
        host = make_client(recorder, "host", aggregation_timeout=120)
        host.create_relay_room("host", nodes[0].url)
        created = recorder.wait_for(lambda: recorder.of("host", "room_created"), 10, "room")
        code = created[-1][0]
        hashed = ids.index(proxy.node_for_room(code.split("-")[0]))  # the routing part
        if hashed != 0:
            break
        host.disconnect()
        recorder.clients.remove(host)
        recorder.events.clear()
    else:
        raise AssertionError("HAProxy hashed 12 rooms in a row to node A")
    direct = 2 if hashed == 1 else 1  # the node neither the host nor m2 is on
    members.start(nodes[direct].url, code.lower(), "m1")
    members.start(proxy.url, code.lower(), "m2")
    recorder.wait_for(lambda: everyone_in(recorder, ["host", "m1", "m2"]), 60, "all in")
    for name in ("m1", "m2"):
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), 30, f"{name} joined")
    # Round 1: both push (directed to the host), everyone gets the global model.
    members.send("m1", "push", 1, 10, 1, LAYOUT, None)
    members.send("m2", "push", 2, 30, 1, LAYOUT, None)
    recorder.wait_for(lambda: recorder.of("host", "global"), 60, "round 1")
    for name in ("m1", "m2"):
        recorder.wait_for(lambda n=name: recorder.of(n, "global"), 60, f"{name} global 1")
    assert host.aggregation_round == 1
    # m2 is on the node HAProxy chose (that node logged its join), m1 on the third node.
    for name, index in (("m2", hashed), ("m1", direct)):
        (user_id,) = recorder.wait_for(lambda n=name: recorder.of(n, "pushed"), 30, "pushed")[0]
        joins = [line for node in nodes for line in node.log if f"user={user_id} " in line]
        assert [line for line in nodes[index].log if " user_joined " in line and user_id in line]
        assert len([line for line in joins if " user_joined " in line]) == 1

    # Round 2: m1 pushes; then m2's node dies before m2 pushed.
    members.send("m1", "push", 3, 10, 2, LAYOUT, None)
    recorder.wait_for(lambda: len(recorder.of("host", "weights_received")) == 3, 60, "m1 push 2")
    lists_before = len(recorder.of("m2", "users"))
    nodes[hashed].kill()
    # m2 reconnects through HAProxy, now to a live node, and resumes its place: a resumed
    # client reports the room's users again (a fresh join would also report room_joined).
    recorder.wait_for(lambda: len(recorder.of("m2", "users")) > lists_before, 60, "m2 resumed")
    assert len(recorder.of("m2", "room_joined")) == 1
    members.send("m2", "push", 4, 30, 2, LAYOUT, None)
    recorder.wait_for(lambda: len(recorder.of("host", "global")) == 2, 90, "round 2 closes")
    for name in ("m1", "m2"):
        recorder.wait_for(lambda n=name: len(recorder.of(n, "global")) == 2, 60, f"{name} g2")

    assert host.aggregation_round == 2
    pushes = recorder.of("host", "weights_received")
    assert [p[1]["num_samples"] for p in pushes[2:]] == [10, 30]  # round 2: m1's, then m2's
    # The global model of round 2 is the weighted mean of both pushes.
    m1, m2 = layout_state(3, LAYOUT), layout_state(4, LAYOUT)
    for name in m1:
        on_wire = [w[name].astype(np.float16).astype(np.float64) for w in (m1, m2)]
        expected = (10 * on_wire[0] + 30 * on_wire[1]) / 40
        # Round 2's pushes are q8 deltas against round 1's global (docs/weights-format.md):
        # each value within one int8 step of its delta, and no delta exceeds twice the largest
        # value either global or push holds here.
        step = 2 * max(np.abs(w[name]).max() for w in (m1, m2)) / 127
        np.testing.assert_allclose(host.global_weights[name], expected, rtol=0, atol=step)
    # m2 never left the room as far as the others could tell.
    assert not [e for e in recorder.of("host", "user_left_room")]
