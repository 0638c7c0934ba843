"""Benchmark relay_server against two peer relays that speak the same protocol, in one run.

Each relay (relay_server, the Node `ws` peer, the Python `websockets` peer, and the floor: a bare
epoll relay that does the least work a correct relay does, bench/floor) runs as its own process on
127.0.0.1; the C load generator (bench/loadgen) drives it, and this script reads the relay's CPU
time and memory from /proc. It prints one table with ratios and the targets of issue 2; the floor
is shown but is not a peer (see bench/README.md for how to read it).

    .venv/bin/python bench/relay_bench.py            # full run, about 10 minutes
    .venv/bin/python bench/relay_bench.py --quick    # small run, about 1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_DIR = ROOT / "bench" / "loadgen"
LOADGEN = ROOT / "build" / "bench" / "loadgen"
FLOOR_DIR = ROOT / "bench" / "floor"
FLOOR = ROOT / "build" / "bench" / "floor_relay"
OUR_RELAY = ROOT / "relay_server" / "build" / "relay_server"
PEERS = ROOT / "bench" / "peers"
MIB = 1024 * 1024
# Loopback TCP throughput measured with iperf3 (4 streams) on the project's 2-core machine.
LOOPBACK_MBPS_GIVEN = 4100.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Every relay prints this once it accepts connections (relay_server adds " (ws)" after it).
LISTENING = re.compile(r"^listening on \S+:(\d+)", re.MULTILINE)

TARGETS = {
    "fanout_vs_best_peer": 1.4,
    "fanout_vs_loopback": 0.85,
    "cpu_s_per_gb": 0.12,
    "kb_per_idle_connection": 2.0,
    "p50_vs_best_peer": 0.5,
}


@dataclass
class RelaySpec:
    name: str  # as given to --relays
    command: list[str]
    ours: bool = False
    floor: bool = False  # a lower bound, not a peer: no "best peer" ratio or target uses it
    label: str = ""  # column heading, when not the name

    @property
    def heading(self) -> str:
        return self.label or self.name


def relay_specs(python: str) -> dict[str, RelaySpec]:
    return {
        "relay_server": RelaySpec(
            "relay_server",
            [
                str(OUR_RELAY),
                "--port",
                "0",
                "--listen",
                "127.0.0.1",
                "--join-rate",
                "1000000",
                "--max-connections",
                "25000",
                # Every load generator connection comes from 127.0.0.1: lift the per-address
                # limits that protect a public relay from one address.
                "--max-connections-per-address",
                "25000",
                "--max-handshakes-per-address",
                "25000",
                "--max-rooms-per-address",
                "100000",
                "--create-rate",
                "1000000",
                "--max-message-size",
                "64M",
            ],
            ours=True,
        ),
        "node-ws": RelaySpec("node-ws", ["node", str(PEERS / "relay_ws.js"), "--port", "0"]),
        "py-websockets": RelaySpec(
            "py-websockets", [python, str(PEERS / "relay_websockets.py"), "--port", "0"]
        ),
        "floor": RelaySpec(
            "floor",
            [str(FLOOR), "--port", "0", "--listen", "127.0.0.1"],
            floor=True,
            label="floor (bare epoll)",
        ),
    }


def raise_fd_limit() -> None:
    # Runs in each child: every process gets the hard limit (20,000 here) as its own fd budget.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Relay:
    """One relay process on an ephemeral port, with its CPU time and RSS read from /proc."""

    def __init__(self, spec: RelaySpec, log_dir: Path):
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.{time.monotonic_ns()}.log"
        # stdout goes to a file, never a pipe: a relay that logs every connection must not
        # block on a full pipe in the middle of a measurement.
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.spec.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=raise_fd_limit,
                cwd=ROOT,
            )
        self.port = self._wait_for_port(timeout=30)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not start:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.spec.name} exited:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Loadgen:
    """One load generator process; its stdout lines arrive on a queue so reads can time out."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            [str(LOADGEN), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=raise_fd_limit,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, False), daemon=True).start()

    def _pump(self, stream, is_stdout: bool) -> None:
        for line in stream:
            (self.lines.put if is_stdout else self.errors.append)(line.rstrip("\n"))
        if is_stdout:
            self.lines.put(None)

    def readline(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"load generator silent for {timeout:.0f} s") from None
        if line is None:
            self.process.wait(timeout=10)
            raise RuntimeError("load generator failed: " + " | ".join(self.errors[-5:]))
        return line

    def result(self, timeout: float) -> dict:
        return json.loads(self.readline(timeout))

    def say(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 30) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_loadgen(args: list[str], timeout: float) -> dict:
    loadgen = Loadgen(args)
    try:
        return loadgen.result(timeout)
    finally:
        loadgen.finish()


# --- measurements ------------------------------------------------------------------------------


def measure_fanout(relay: Relay, size: int, count: int, receivers: int) -> dict:
    loadgen = Loadgen(
        [
            "fanout",
            "--port",
            str(relay.port),
            "--receivers",
            str(receivers),
            "--size",
            str(size),
            "--count",
            str(count),
            "--seconds",
            "120",
            "--wait-go",
        ]
    )
    try:
        if loadgen.readline(60) != "ready":
            raise RuntimeError("fan-out set-up failed")
        cpu_before = relay.cpu_seconds()
        loadgen.say("go")
        result = loadgen.result(180)
        cpu = relay.cpu_seconds() - cpu_before
    finally:
        loadgen.finish()
    if result["failed_receivers"]:
        raise RuntimeError(f"{relay.spec.name}: a fan-out receiver failed: {result}")
    delivered = result["delivered_bytes"]
    return {
        "mbps": delivered / result["seconds"] / 1e6,
        "cpu_s_per_gb": cpu / (delivered / 1e9),
        "delivered_bytes": delivered,
        "delivered_messages": result["delivered_messages"],
        "seconds": result["seconds"],
        "relay_cpu_seconds": cpu,
        "client_cpu_s_per_gb": result["client_cpu_seconds"] / (delivered / 1e9),
    }


def measure_latency(relay: Relay, samples: int, size: int, busy_rooms: int) -> dict:
    busy = None
    if busy_rooms:
        busy = Loadgen(
            [
                "busy",
                "--port",
                str(relay.port),
                "--rooms",
                str(busy_rooms),
                "--size",
                str(size),
                "--seconds",
                "120",
            ]
        )
        if busy.readline(120) != "ready":
            raise RuntimeError("busy rooms set-up failed")
        time.sleep(0.5)  # let the background traffic reach a steady state
    try:
        probe = run_loadgen(
            [
                "latency",
                "--port",
                str(relay.port),
                "--count",
                str(samples),
                "--size",
                str(size),
                "--seconds",
                "20",
            ],
            timeout=120,
        )
        if busy:
            busy.say("stop")
            background = busy.result(30)
            probe["busy_messages_per_second"] = background["messages_per_second"]
    finally:
        if busy:
            busy.finish()
    return probe


def measure_idle(spec: RelaySpec, log_dir: Path, connections: int, per_process: int) -> dict:
    relay = Relay(spec, log_dir)
    loadgens: list[Loadgen] = []
    try:
        # Warm up the relay's code paths (a few sessions) so the baseline includes them.
        run_loadgen(["latency", "--port", str(relay.port), "--count", "20"], timeout=60)
        time.sleep(1.0)
        baseline = relay.rss_bytes()
        processes = math.ceil(connections / per_process)
        for i in range(processes):
            share = connections // processes + (1 if i < connections % processes else 0)
            loadgens.append(
                Loadgen(
                    [
                        "idle",
                        "--port",
                        str(relay.port),
                        "--connections",
                        str(share),
                        "--source",
                        f"127.0.0.{2 + i}",
                        "--seconds",
                        "240",
                    ]
                )
            )
        for loadgen in loadgens:
            if not loadgen.readline(240).startswith("ready"):
                raise RuntimeError("idle connections failed")
        time.sleep(2.0)  # let the relay finish any per-connection work (timers, GC)
        relay.check_alive()
        loaded = relay.rss_bytes()
        closed = 0
        for loadgen in loadgens:
            loadgen.say("stop")
            closed += loadgen.result(60)["closed_by_relay"]
        if closed:
            raise RuntimeError(f"{spec.name} closed {closed} idle connections")
        return {
            "connections": connections,
            "baseline_rss": baseline,
            "loaded_rss": loaded,
            "kb_per_connection": (loaded - baseline) / connections / 1000,
        }
    finally:
        for loadgen in loadgens:
            loadgen.finish()
        relay.stop()


def measure_loopback() -> tuple[float, str]:
    """Loopback TCP throughput with iperf3 (4 streams), the ceiling for any relay here."""
    if not shutil.which("iperf3"):
        return LOOPBACK_MBPS_GIVEN, "given (iperf3 not installed)"
    port = "5299"
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-p", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", port, "-P", "4", "-t", "3", "-J"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        bits = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        return bits / 8 / 1e6, "measured (iperf3, 4 streams, 3 s)"
    except (subprocess.SubprocessError, KeyError, ValueError):
        return LOOPBACK_MBPS_GIVEN, "given (iperf3 failed)"
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait()


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Plan:
    runs: int
    latency_runs: int
    fanout: list[tuple[str, int, int]]  # label, message size, messages per run
    receivers: int
    latency_samples: int
    busy_samples: int
    latency_size: int
    busy_rooms: int
    idle_counts: list[int]
    idle_runs: int
    idle_per_process: int


@dataclass
class Results:
    relays: list[str] = field(default_factory=list)
    ours: str | None = None
    floor: str | None = None
    headings: dict[str, str] = field(default_factory=dict)  # relay name -> column heading
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    raw: dict[str, dict[str, list]] = field(default_factory=dict)
    loopback_mbps: float = LOOPBACK_MBPS_GIVEN
    loopback_source: str = ""
    load_average: list[float] = field(default_factory=list)

    def put(self, metric: str, relay: str, samples: list[float], raw: list) -> None:
        self.metrics.setdefault(metric, {})[relay] = statistics.median(samples)
        self.raw.setdefault(metric, {})[relay] = raw


def bench_relay(spec: RelaySpec, plan: Plan, results: Results, log_dir: Path) -> None:
    name = spec.name
    say(f"{name}: fan-out and latency")
    relay = Relay(spec, log_dir)
    try:
        for label, size, count in plan.fanout:
            runs = [measure_fanout(relay, size, count, plan.receivers) for _ in range(plan.runs)]
            results.put(f"fanout_{label}_mbps", name, [r["mbps"] for r in runs], runs)
            results.put(f"fanout_{label}_cpu", name, [r["cpu_s_per_gb"] for r in runs], runs)
            client = [r["client_cpu_s_per_gb"] for r in runs]
            results.put(f"fanout_{label}_client_cpu", name, client, runs)
            say(f"  fan-out {label}: " + ", ".join(f"{r['mbps']:.0f} MB/s" for r in runs))
        for busy, key, samples in (
            (0, "idle", plan.latency_samples),
            (plan.busy_rooms, "busy", plan.busy_samples),
        ):
            if key == "busy" and not busy:
                continue
            runs = [
                measure_latency(relay, samples, plan.latency_size, busy)
                for _ in range(plan.latency_runs)
            ]
            results.put(f"rtt_{key}_p50", name, [r["p50_us"] for r in runs], runs)
            results.put(f"rtt_{key}_p99", name, [r["p99_us"] for r in runs], runs)
            if busy:
                rate = [r["busy_messages_per_second"] for r in runs]
                results.put("busy_rate", name, rate, runs)
            say(f"  round trip ({key}): p50 " + ", ".join(f"{r['p50_us']:.0f}" for r in runs))
        relay.check_alive()
    finally:
        relay.stop()
    for count in plan.idle_counts:
        runs = [
            measure_idle(spec, log_dir, count, plan.idle_per_process) for _ in range(plan.idle_runs)
        ]
        results.put(f"idle_{count}", name, [r["kb_per_connection"] for r in runs], runs)
        say(f"  idle {count}: " + ", ".join(f"{r['kb_per_connection']:.2f} kB" for r in runs))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the table ---------------------------------------------------------------------------------


def format_table(results: Results, plan: Plan) -> str:
    rows: list[tuple[str, str, bool]] = []  # metric key, label, higher is better
    for label, _, _ in plan.fanout:
        rows.append((f"fanout_{label}_mbps", f"fan-out 1->{plan.receivers} {label}: MB/s", True))
        rows.append(
            (f"fanout_{label}_cpu", f"fan-out 1->{plan.receivers} {label}: CPU-s/GB", False)
        )
        rows.append((f"fanout_{label}_client_cpu", "  (load generator CPU-s/GB)", False))
    rows += [
        ("rtt_idle_p50", "round trip idle: p50 us", False),
        ("rtt_idle_p99", "round trip idle: p99 us", False),
        ("rtt_busy_p50", f"round trip, {plan.busy_rooms} busy rooms: p50 us", False),
        ("rtt_busy_p99", f"round trip, {plan.busy_rooms} busy rooms: p99 us", False),
        ("busy_rate", "  (background messages/s)", True),
    ]
    for count in plan.idle_counts:
        rows.append((f"idle_{count}", f"RSS per idle connection @{count}: kB", False))

    ours, floor = results.ours, results.floor
    peers = [r for r in results.relays if r not in (ours, floor)]
    header = ["metric", *(results.headings.get(r, r) for r in results.relays)]
    if ours and peers:
        header += ["ours/best peer", "target", "met"]
    if ours and floor:
        header.append("ours/floor")
    lines = [header]
    for key, label, higher_better in rows:
        values = results.metrics.get(key, {})
        if not values:
            continue
        line = [label] + [fmt(values.get(r)) for r in results.relays]
        if ours and peers and ours in values:
            peer_values = [values[p] for p in peers if p in values]
            best = (max if higher_better else min)(peer_values) if peer_values else None
            ratio = values[ours] / best if best else None
            target, met = target_for(key, values[ours], ratio, results.loopback_mbps)
            line += [f"{ratio:.2f}x" if ratio else "-", target, met]
        if ours and floor:
            line.append(ratio_text(values.get(ours), values.get(floor)))
        lines.append(line)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines):
        cells = [
            str(c).ljust(w) if j == 0 else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [
        "",
        f"medians of {plan.runs} runs (round trips: {plan.latency_runs},"
        f" idle RSS: {plan.idle_runs});"
        " MB = 10^6 bytes, kB = 10^3 bytes",
        f"loopback: {results.loopback_mbps:.0f} MB/s, {results.loopback_source}",
        "load average at start/end: " + ", ".join(f"{x:.2f}" for x in results.load_average),
    ]
    if ours and ours in results.metrics.get(rows[0][0], {}):
        share = results.metrics[rows[0][0]][ours] / results.loopback_mbps
        notes.append(f"relay_server fan-out {plan.fanout[0][0]}: {share:.0%} of loopback")
    if floor:
        notes.append(
            f"{results.headings.get(floor, floor)}: the least work a correct relay does here"
            " (bench/floor), a lower bound, not a peer: no best-peer ratio or target uses it."
        )
        if ours:
            notes.append(
                "ours/floor: relay_server / floor per row (MB/s: below 1 is slower than the floor;"
                " the rest: above 1 is that much more than the floor)."
            )
    return "\n".join(out + notes)


def ratio_text(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def target_for(key: str, ours: float, ratio: float | None, loopback: float) -> tuple[str, str]:
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    if key.startswith("fanout_") and key.endswith("_mbps"):
        goal = TARGETS["fanout_vs_best_peer"]
        floor = TARGETS["fanout_vs_loopback"] * loopback
        ok = ratio is not None and ratio >= goal and ours >= floor
        return f">={goal}x & >={floor:.0f}", yes(ok)
    if key.endswith("_client_cpu") or key == "busy_rate":
        return "", ""
    if key.startswith("fanout_") and key.endswith("_cpu"):
        return f"<={TARGETS['cpu_s_per_gb']}", yes(ours <= TARGETS["cpu_s_per_gb"])
    if key.endswith("_p50"):
        goal = TARGETS["p50_vs_best_peer"]
        return f"<={goal}x", yes(ratio is not None and ratio <= goal)
    if key.startswith("idle_"):
        goal = TARGETS["kb_per_idle_connection"]
        return f"<={goal}", yes(ours <= goal)
    return "", ""


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# --- command line ------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(
            runs=1,
            latency_runs=1,
            fanout=[("16MiB", 16 * MIB, 8), ("1MiB", MIB, 64)],
            receivers=4,
            latency_samples=300,
            busy_samples=100,
            latency_size=100,
            busy_rooms=200,
            idle_counts=[1000],
            idle_runs=1,
            idle_per_process=5000,
        )
    else:
        plan = Plan(
            runs=5,
            latency_runs=3,
            fanout=[("16MiB", 16 * MIB, 64), ("1MiB", MIB, 1024)],
            receivers=4,
            latency_samples=2000,
            busy_samples=500,
            latency_size=100,
            busy_rooms=200,
            idle_counts=[10000, 19000],
            idle_runs=3,
            idle_per_process=5000,
        )
    if args.runs:
        plan.runs = plan.latency_runs = args.runs
    if args.idle_runs:
        plan.idle_runs = args.idle_runs
    if args.fanout_count:
        big, small = args.fanout_count
        plan.fanout = [("16MiB", 16 * MIB, big), ("1MiB", MIB, small)]
    if args.latency_samples:
        plan.latency_samples = plan.busy_samples = args.latency_samples
    if args.busy_rooms is not None:
        plan.busy_rooms = args.busy_rooms
    if args.idle_counts is not None:
        plan.idle_counts = [int(x) for x in args.idle_counts.split(",") if x]
    return plan


def build_loadgen() -> None:
    subprocess.run(["make", "-s", "-C", str(LOADGEN_DIR)], check=True)


def build_floor() -> bool:
    """Build the floor relay; False (with a note) when it cannot be built here."""
    built = subprocess.run(["make", "-s", "-C", str(FLOOR_DIR)], capture_output=True, text=True)
    if built.returncode != 0:
        say("note: bench/floor does not build (needs libjansson-dev and libssl-dev); skipping it")
        say(built.stderr[-2000:])
    return built.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument(
        "--relays",
        default="relay_server,node-ws,py-websockets,floor",
        help="comma-separated subset of relay_server,node-ws,py-websockets,floor",
    )
    parser.add_argument("--runs", type=int, help="runs per fan-out and latency figure")
    parser.add_argument("--idle-runs", type=int, help="runs per idle-connection figure")
    parser.add_argument(
        "--fanout-count", type=int, nargs=2, metavar=("N16", "N1"), help="messages per run"
    )
    parser.add_argument("--latency-samples", type=int, help="round trips per latency run")
    parser.add_argument("--busy-rooms", type=int, help="background rooms (0: skip busy figure)")
    parser.add_argument("--idle-counts", help="comma-separated idle connection counts ('' skips)")
    parser.add_argument(
        "--loopback-mbps",
        type=float,
        default=LOOPBACK_MBPS_GIVEN,
        help="loopback ceiling for the 85%% target (default: %(default)s, issue 2's iperf3 figure)",
    )
    parser.add_argument(
        "--measure-loopback", action="store_true", help="measure the ceiling with iperf3 -P 4"
    )
    parser.add_argument("--json", type=Path, help="also write all figures and raw runs here")
    args = parser.parse_args(argv)

    plan = make_plan(args)
    specs = relay_specs(sys.executable)
    wanted = [r for r in args.relays.split(",") if r]
    for name in wanted:
        if name not in specs:
            parser.error(f"unknown relay {name!r}")
    if "relay_server" in wanted and not OUR_RELAY.exists():
        say(f"note: {OUR_RELAY} is not built; benchmarking the peers only")
        wanted.remove("relay_server")
    if "node-ws" in wanted and not (PEERS / "node_modules" / "ws").exists():
        say("note: bench/peers/node_modules is missing (run npm install there); skipping node-ws")
        wanted.remove("node-ws")
    if "floor" in wanted and not build_floor():
        wanted.remove("floor")
    if not wanted:
        parser.error("no relay to benchmark")
    build_loadgen()

    results = Results(relays=wanted, load_average=list(os.getloadavg()))
    results.ours = "relay_server" if "relay_server" in wanted else None
    results.floor = next((r for r in wanted if specs[r].floor), None)
    results.headings = {r: specs[r].heading for r in wanted}
    if args.measure_loopback:
        results.loopback_mbps, results.loopback_source = measure_loopback()
    else:
        results.loopback_mbps = args.loopback_mbps
        results.loopback_source = "given (iperf3 -P 4 on this machine, per issue 2)"
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        for name in wanted:
            bench_relay(specs[name], plan, results, Path(tmp))
    results.load_average += list(os.getloadavg())
    print(format_table(results, plan))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "relays": results.relays,
                    "floor": results.floor,
                    "metrics": results.metrics,
                    "raw": results.raw,
                    "loopback_mbps": results.loopback_mbps,
                    "load_average": results.load_average,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
