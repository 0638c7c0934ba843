"""Fixtures of the app-API tests: relays to talk to, and members in separate processes.

`any_relay` is parametrized: "ours" is the real relay binary; "v1" is the minimal v1 relay
of tests/fixtures/v1_relay.py (the original Worker's behaviour only), run as a subprocess.
Qt tests (pytest-qt) run on the offscreen platform: no display is needed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time

import pytest

from helpers.v1_relay_process import V1Relay

# Before pytest-qt makes its QApplication (lazily, in the qapp fixture).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(params=["ours", "v1"])
def any_relay(request, relay):
    """(kind, url, relay process or None): our relay, then the v1 fixture."""
    if request.param == "ours":
        process = relay()
        yield "ours", process.url, process
    else:
        v1 = V1Relay()
        yield "v1", v1.url, None
        v1.stop()


class Recorder:
    """Collects signal emissions (from any thread or process) and waits for conditions."""

    def __init__(self):
        self.events: list[tuple[str, str, tuple]] = []
        self.clients: list = []  # SyncClients of the test process, disconnected at teardown
        self._condition = threading.Condition()

    def record(self, name: str, what: str):
        def callback(*args):
            with self._condition:
                self.events.append((name, what, args))
                self._condition.notify_all()

        return callback

    def add(self, event: tuple) -> None:
        with self._condition:
            self.events.append(event)
            self._condition.notify_all()

    def of(self, name: str, what: str) -> list[tuple]:
        with self._condition:
            return [args for n, w, args in self.events if n == name and w == what]

    def wait_for(self, predicate, timeout: float, what: str = "condition"):
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; events: {self.events}")
                self._condition.wait(min(remaining, 0.2))


class Members:
    """Members in their own processes; their events land in `recorder`."""

    def __init__(self, recorder: Recorder):
        self.context = multiprocessing.get_context("spawn")
        self.events = self.context.Queue()
        self.recorder = recorder
        self.processes: dict[str, multiprocessing.Process] = {}
        self.commands: dict[str, multiprocessing.Queue] = {}
        self._pump = threading.Thread(target=self._drain, daemon=True)
        self._stopping = False
        self._pump.start()

    def _drain(self):
        while not self._stopping:
            try:
                self.recorder.add(self.events.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return

    def start(self, url: str, room_code: str, name: str, options: dict | None = None):
        from members import run_member

        commands = self.context.Queue()
        process = self.context.Process(
            target=run_member,
            args=(url, room_code, name, self.events, commands, options),
            name=f"member {name}",
        )
        process.start()
        self.processes[name] = process
        self.commands[name] = commands
        return process

    def send(self, name: str, *command):
        self.commands[name].put(command)

    def stop(self):
        for name, process in self.processes.items():
            if process.is_alive():
                self.commands[name].put(("exit",))
        for process in self.processes.values():
            process.join(15)
            if process.is_alive():
                os.kill(process.pid, 9)
                process.join(5)
        self._stopping = True
        self._pump.join(2)


@pytest.fixture
def recorder():
    recorder = Recorder()
    yield recorder
    for client in recorder.clients:
        client.disconnect()


@pytest.fixture
def members(recorder):
    group = Members(recorder)
    yield group
    group.stop()


def kill_member(members: Members, name: str) -> None:
    """SIGKILL one member process (started by this test), as a crash or power loss would."""
    process = members.processes[name]
    os.kill(process.pid, 9)
    process.join(5)
