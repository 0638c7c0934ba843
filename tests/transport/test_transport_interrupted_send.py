"""Ctrl-C during a send (transport_connection.c, take_back_send): a send still queued behind
another is taken back and never reaches the peer, and the connection stays usable; a send cut
in the middle of its message ends the connection with 1001 "send interrupted", since the rest
of that message cannot be made up.

The client runs in its own interpreter (its main thread is the one Ctrl-C interrupts); the
independent `websockets` echo server is paused (SIGSTOP) so that sends block, and resumed once
the interrupt has landed. Each step is told by a line on stdin and answered on stdout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from helpers.relay_process import SLOWDOWN

ROOT = Path(__file__).resolve().parents[2]

CLIENT = """
    import _thread, sys, threading, time
    from segmentation_suite.network import transport

    def step(text):
        print(text, flush=True)
        sys.stdin.readline()

    def interrupted(send, *args):
        # Ctrl-C once the send has waited a while: the wait checks for signals every 100 ms.
        threading.Timer(1.0 * {slowdown}, _thread.interrupt_main).start()
        try:
            send(*args)
        except KeyboardInterrupt:
            return True
        return False

    big = bytes(range(256)) * (256 * 1024)  # 64 MiB: far more than the socket buffers hold
    conn = transport.connect("{url}", proxy=False)
    conn.send_text("hello")
    assert conn.recv(timeout=10) == (False, "hello")

    step("pause")  # the server stops reading
    first = threading.Thread(target=conn.send_binary, args=(big,))
    first.start()
    time.sleep(1.0 * {slowdown})  # the big message is at the head of the queue, half sent
    print("queued", interrupted(conn.send_text, "never sent"), flush=True)
    step("resume")
    first.join(60)
    is_binary, data = conn.recv(timeout=60)
    assert is_binary and bytes(data) == big
    conn.send_text("after")
    print("next", conn.recv(timeout=10), flush=True)  # not "never sent"

    step("pause")
    print("cut", interrupted(conn.send_binary, big), flush=True)
    step("resume")
    try:
        print("received", conn.recv(timeout=30), flush=True)
    except transport.ConnectionClosed as closed:
        print("closed", closed.code, closed.reason, flush=True)
"""


def test_ctrl_c_takes_a_queued_send_back_and_a_cut_message_closes(ws_server):
    server = ws_server()
    script = CLIENT.format(url=server.url("/echo"), slowdown=SLOWDOWN)
    client = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )

    def answer(expected: str) -> None:
        line = client.stdout.readline().strip()
        assert line == expected, (line, client.poll() is not None and client.stderr.read())

    def step(asked: str, server_action) -> None:
        """The client asks for the server to be paused or resumed: done, and it goes on."""
        answer(asked)
        server_action()
        client.stdin.write("\n")
        client.stdin.flush()

    try:
        step("pause", server.pause)
        answer("queued True")
        step("resume", server.resume)
        answer("next (False, 'after')")

        step("pause", server.pause)
        answer("cut True")
        step("resume", server.resume)
        # the server saw the close between two fragments of the cut message
        assert server.next_close(timeout=30) == "closed /echo 1001 send interrupted"
        closed = client.stdout.readline().strip()
        assert closed.startswith("closed "), closed
        assert client.wait(30) == 0, client.stderr.read()
    finally:
        server.resume()
        if client.poll() is None:
            client.kill()
            client.wait()
