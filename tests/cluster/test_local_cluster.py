"""deploy/local-cluster.sh, as docs/operations.md ("Running a cluster") tells an operator to try
it: nats-server, three relays and HAProxy on loopback. A room works through HAProxy, a URL that
names the room lands on one node, and the script stops everything when it is stopped."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from helpers.relay_process import SLOWDOWN, relay_binary
from helpers.ws_client import TIMEOUT, Member, close_all, recv_binary, recv_type, send_json

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
READY = re.compile(r"cluster ready: ws://127\.0\.0\.1:(\d+)/ws .* logs in (\S+)")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise AssertionError("no free run of ports")


class LocalCluster:
    def __init__(self, count: int):
        for tool in ("nats-server", "haproxy"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} not installed (apt-get install {tool})")
        if not relay_binary().exists():
            pytest.skip(f"relay binary {relay_binary()} not built")
        base = free_ports(count + 2)
        env = dict(os.environ)
        env.update(
            RELAY_SERVER_BIN=str(relay_binary()),
            NATS_PORT=str(base),
            CLUSTER_PORT=str(base + 1),
            FIRST_RELAY_PORT=str(base + 2),
        )
        self.ports = [base + 2 + i for i in range(count)]
        self.nats_port = base
        self.process = subprocess.Popen(
            [str(SCRIPT), str(count)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        ready = threading.Event()

        def read():
            for raw in iter(self.process.stdout.readline, b""):
                self.lines.append(raw.decode(errors="replace").rstrip())
                if READY.search(self.lines[-1]):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30 * SLOWDOWN):
            self.stop()
            raise AssertionError("local-cluster.sh not ready:\n" + "\n".join(self.lines))
        found = READY.search(self.lines[-1])
        self.url = f"ws://127.0.0.1:{found.group(1)}"
        self.logs = Path(found.group(2))

    def relay_log(self, index: int) -> str:
        return (self.logs / f"relay{index + 1}.log").read_text()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15 * SLOWDOWN)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None


@pytest.fixture
def local_cluster():
    clusters = []

    def start(count: int) -> LocalCluster:
        clusters.append(LocalCluster(count))
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.stop()


async def through(cluster: LocalCluster, user_id: str, path: str = "/ws") -> Member:
    ws = await connect(cluster.url + path, max_size=None, open_timeout=TIMEOUT)
    return Member(ws, user_id, user_id.title())


async def test_local_cluster_serves_a_room_through_haproxy(local_cluster):
    cluster = local_cluster(3)
    alice = await through(cluster, "alice")
    code = (await alice.create())["room_code"]
    # Joiners name the room in the URL (as our client does): HAProxy hashes them to one node.
    bob = await through(cluster, "bob", f"/ws?room={code}")
    await bob.join(code)
    await recv_type(alice.ws, "user_joined")
    carol = await through(cluster, "carol", f"/ws?room={code}")
    joined = await carol.join(code)
    assert joined["users"] == [alice.entry, bob.entry, carol.entry]
    for earlier in (alice, bob):
        await recv_type(earlier.ws, "user_joined")

    await send_json(carol.ws, "hello", {"n": 1})
    for receiver in (alice, bob):
        assert (await recv_type(receiver.ws, "hello"))["sender_id"] == "carol"
    payload = os.urandom(5 * 1024 * 1024)
    await bob.ws.send(payload)
    for receiver in (alice, carol):
        assert await recv_binary(receiver.ws, timeout=30 * SLOWDOWN) == payload

    # Bob and Carol, who named the room, are on the same node.
    def node_of(user_id: str) -> list[int]:
        return [
            i
            for i in range(3)
            for line in cluster.relay_log(i).splitlines()
            if " user_joined " in line and f"user={user_id} " in line
        ]

    assert len(node_of("bob")) == 1 and node_of("bob") == node_of("carol")
    await close_all([alice, bob, carol])

    assert cluster.stop() is not None
    # Everything it started is gone: nothing listens on its ports any more.
    deadline = time.monotonic() + 10 * SLOWDOWN
    while any(accepting(p) for p in [cluster.nats_port, *cluster.ports]):
        assert time.monotonic() < deadline, "local-cluster.sh left processes behind"
        time.sleep(0.2)
    assert not cluster.logs.exists()
