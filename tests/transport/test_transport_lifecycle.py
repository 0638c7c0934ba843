"""The transport's life cycle in whole processes: memory stays bounded over 2 GiB of sends, and
neither garbage collection nor interpreter exit with open connections hangs or leaks threads.
Each scenario runs in a fresh interpreter so that its memory and threads are its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# RSS growth allowed while sending 2 GiB (docs/transport.md, "Memory bounds"): the staging
# buffer, lws's partial-write buffer and allocator slack are a few MiB; this leaves room for
# the interpreter's own noise while still catching any per-message or per-chunk copy.
RSS_GROWTH_BOUND_MIB = 150


def run_script(source: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_sending_2_gib_keeps_rss_bounded(ws_server):
    server = ws_server()
    result = run_script(
        f"""
        import hashlib, re
        from segmentation_suite.network import transport

        def rss_mib(field):
            status = open("/proc/self/status").read()
            return int(re.search(field + r":\\s+(\\d+) kB", status).group(1)) / 1024

        payload = bytes(range(256)) * (1024 * 1024)  # 256 MiB, allocated before measuring
        expected = f"{{len(payload)}} {{hashlib.sha256(payload).hexdigest()}}"
        conn = transport.connect("ws://127.0.0.1:{server.port}/hash", proxy=False)
        conn.send_binary(b"warm-up")
        conn.recv(timeout=10)
        before = rss_mib("VmRSS")
        for round in range(8):  # 8 x 256 MiB = 2 GiB
            if round % 2:
                conn.send_binary(payload)
                assert conn.recv(timeout=60) == (False, expected), round
            else:
                chunks = conn.send_chunked(transport.FRAME_KIND_WEIGHTS, round, "me", [], payload)
                for _ in range(chunks):
                    conn.recv(timeout=60)
        after = rss_mib("VmRSS")
        conn.close()
        print(f"rss {{before:.1f}} {{after:.1f}} {{rss_mib('VmHWM'):.1f}}")
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    before, after, peak = (float(x) for x in result.stdout.split()[1:4])
    assert after - before < RSS_GROWTH_BOUND_MIB, result.stdout
    # The peak too: nothing ever held a second copy of a 256 MiB payload.
    assert peak - before < RSS_GROWTH_BOUND_MIB, result.stdout


def test_interpreter_exit_with_open_connections_is_prompt(ws_server):
    """Open connections, a dispatcher thread blocked in recv(), a daemon thread blocked in a
    send that the server never reads: exit still returns within seconds and closes with 1001."""
    server = ws_server()
    started = time.monotonic()
    result = run_script(
        f"""
        import threading
        from segmentation_suite.network import transport

        url = "ws://127.0.0.1:{server.port}/echo"
        connections = [transport.connect(url, proxy=False) for _ in range(3)]
        transport.MessageDispatcher(connections[0], lambda is_binary, data: None)
        threading.Thread(target=connections[1].recv, daemon=True).start()
        connections[2].send_text("ready")
        assert connections[2].recv(timeout=5) == (False, "ready")
        print("exiting", flush=True)
        """,
        timeout=10,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exiting"
    assert elapsed < 10
    closes = sorted(server.next_close() for _ in range(3))
    assert closes == ["closed /echo 1001 client is exiting"] * 3


def test_exit_while_the_peer_is_frozen_is_prompt(ws_server):
    """A peer that never answers the Close: exit waits the grace period, then drops it."""
    server = ws_server()
    script = f"""
        import threading
        from segmentation_suite.network import transport
        conn = transport.connect("ws://127.0.0.1:{server.port}/echo", proxy=False)
        conn.send_text("hello")
        conn.recv(timeout=5)
        threading.Thread(target=conn.send_binary, args=(bytes(64 << 20),), daemon=True).start()
        print("frozen?", flush=True)
        import sys; sys.stdin.readline()
        """
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert process.stdout.readline().strip() == "frozen?"
        server.pause()
        started = time.monotonic()
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 8
    finally:
        server.resume()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_collected_connection_closes_and_threads_do_not_leak(ws_server):
    server = ws_server()
    result = run_script(
        f"""
        import gc, os, time
        from segmentation_suite.network import transport

        def threads():
            return len(os.listdir("/proc/self/task"))

        url = "ws://127.0.0.1:{server.port}/echo"
        first = transport.connect(url, proxy=False)  # starts the one transport thread
        baseline = threads()
        for _ in range(20):
            conn = transport.connect(url, proxy=False)
            conn.send_text("x")
            conn.recv(timeout=5)
            del conn
            gc.collect()
        time.sleep(0.5)
        print(baseline, threads())
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    baseline, after = (int(x) for x in result.stdout.split())
    assert after == baseline  # one service thread for any number of connections
    closes = [server.next_close() for _ in range(21)]
    assert closes.count("closed /echo 1001 connection object released") == 20
    assert closes.count("closed /echo 1001 client is exiting") == 1
