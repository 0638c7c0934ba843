"""End-to-end weights transfer benchmark: one state dict from one client to another through
the relay on loopback, from "the sender starts serializing" to "the receiver holds the
deserialized dict of torch tensors", ours against the original app's way.

The model is the original app's (2D U-Net, 166 tensors, 124.5 MB as float32;
tests/vectors/unet_deep_dice_v2_layout.json) with seeded random weights. One relay_server
process; the sender and the receiver are two more processes, each with two connections (one
room per client kind) that stay open for the whole run. Methods:

* ours-f16: serialize_weights (float16 on the wire), send_chunked in relay-advertised chunks
  (16 MiB) directed to the receiver; the receiver's transport reassembles them in C by
  (sender, transfer id) into one 64-byte-aligned buffer (reassemble_transfers=True) and
  decode_weights views it into torch tensors.
* ours-f32: the same with wire_dtype="float32" (lossless).
* private: ours-f16 in a private room (docs/security.md): the encoded message is encrypted
  straight into the send buffer (AES-256-GCM or ChaCha20-Poly1305, per transfer key; the
  encryption is the one copy), chunk by chunk while send_chunked sends the chunk before
  (SealingTransfer); the receiver's connection holds the group key
  (Connection.set_transfer_key) and checks and decrypts each segment as it lands, straight from
  the socket's read into the reassembly buffer (the decryption is the reassembly copy), so only
  the last segment is opened after the last byte. The group key is set up out of band (the key
  exchange happens once per member, not per transfer). Not in the default
  --methods; compare it with ours-f16 in the same run: --methods ours-f16,private.
* moss: the original client's way on the `websockets` library (sync client): a weights_push
  JSON, then one binary message gzip(torch.save(float16 dict), level 1); the receiver
  gunzips, torch.load(weights_only=True) and converts float16 back to float32.
* codec-ws (diagnostic): our codec (float16 wire) sent as one message with the websockets
  library at both ends, to tell the codec's share from the transport's.

Every run starts when both processes have passed a barrier; times come from the system-wide
CLOCK_MONOTONIC (time.monotonic), so the sender's start and the receiver's end compare
directly. Methods are interleaved (one warm-up round, then --runs rounds, each method once per
round, the order rotating) so that load from other processes hits all alike; each figure is a
median. Every received dict is checked against the sent one (outside the timed span). Usage:

    .venv/bin/python bench/bench_end_to_end.py [--runs 7] [--layout PATH] [--json OUT]
        [--methods ours-f16,moss] [--save-received DIR] [--check]

After the table, two reference figures from the same run: a numpy copy of the model's float32
bytes (what ours-f16 end to end is compared with: issue 15 wants at most 4x), and transport
throughput through the relay's echo on loopback, ws:// against wss:// (raw engine, and lws's
client for reference; issue 15 wants wss at least 0.8x ws), next to the TLS floor: the same echo
between two C threads over plain TCP and over TLS 1.3 (bench/floor/tls_floor.c, built with make),
whose tls/tcp ratio is about the best wss/ws this machine allows. --no-transport skips these.

--check exits 1 if ours-f16 is not at least 10x faster than moss (issue 3's target).
--save-received writes what was sent (sent.npz) and the last dict each method received
(received_<method>.npz), for tests/bench/test_bench_end_to_end_smoke.py.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import io
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

DEFAULT_LAYOUT = (
    Path(__file__).resolve().parents[1] / "tests" / "vectors" / "unet_deep_dice_v2_layout.json"
)
METHODS = ("ours-f16", "ours-f32", "codec-ws", "moss", "private")
DEFAULT_METHODS = ("ours-f16", "ours-f32", "codec-ws", "moss")
PRIVATE_ROOM = "K7QX2M"  # the private method's routing code in the associated data
MiB = 1024 * 1024
SENDER, RECEIVER = "sender", "receiver"
# The relay's limit must admit MOSS-style's single message (57 MB for the U-Net); ours chunks.
RELAY_OPTIONS = ("--max-message-size", "128M", "--idle-timeout", "600")


def random_state_dict(layout_path: Path, seed: int) -> dict:
    """name -> torch tensor with the layout's shapes and dtypes: float32 ~ N(0, 0.05²), integer
    scalars (BatchNorm's num_batches_tracked) in [0, 1000)."""
    import torch

    layout = json.loads(Path(layout_path).read_text())["layout"]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for entry in layout:
        dtype = getattr(torch, entry["dtype"])
        if dtype.is_floating_point:
            state[entry["name"]] = torch.randn(entry["shape"], generator=generator) * 0.05
            state[entry["name"]] = state[entry["name"]].to(dtype)
        else:
            state[entry["name"]] = torch.randint(
                0, 1000, entry["shape"], generator=generator, dtype=dtype
            )
    return state


# --- the two clients, one function per side and kind ---------------------------------------


def ours_send(
    conn: Any, state: dict, wire_dtype: str, transfer_id: int, chunk_size: int, sealer=None
) -> dict:
    from segmentation_suite.network import transport
    from segmentation_suite.network.codec import serialize_weights

    data = serialize_weights(state, wire_dtype=wire_dtype, epoch=1, loss=0.5, num_samples=64)
    serialized = time.monotonic()
    if sealer is not None:
        data = sealer.seal(data, transfer_id, transport.FRAME_KIND_WEIGHTS, None)
    count = conn.send_chunked(
        transport.FRAME_KIND_WEIGHTS, transfer_id, SENDER, [RECEIVER], data, chunk_size
    )
    return {"t_serialized": serialized, "payload_bytes": len(data), "messages": count}


def ours_receive(conn: Any, deadline: float, transfers=None) -> tuple[dict, dict]:
    """Takes one transfer, reassembled in C into one aligned buffer (the connection is opened
    with reassemble_transfers), and decodes it into torch tensors; with `transfers` (private),
    the connection opened it as it landed and `open` checks the rest (replay, epoch)."""
    from segmentation_suite.network import transport
    from segmentation_suite.network.codec import decode_weights

    times: dict[str, float] = {}
    while True:
        is_binary, data = conn.recv(timeout=max(deadline - time.monotonic(), 0.001))
        if is_binary and isinstance(data, transport.Transfer):
            break  # control messages (there are none during a run) are skipped
    times["t_first"] = times["t_last"] = time.monotonic()
    times.update(cpu_snapshot("last"))
    payload = memoryview(data)
    if transfers is not None:
        header = data.header
        payload = transfers.open(header.sender, header.transfer_id, header.kind, payload, None)
    state, _ = decode_weights(payload, as_torch=True)
    return state, times


def moss_send(ws: Any, state: dict) -> dict:
    import torch

    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    stream = io.BytesIO()
    torch.save(half, stream)
    data = gzip.compress(stream.getvalue(), compresslevel=1)
    serialized = time.monotonic()
    push = {"user_id": SENDER, "epoch": 1, "loss": 0.5, "num_samples": 64}
    ws.send(json.dumps({"type": "weights_push", "payload": push, "timestamp": time.time()}))
    ws.send(data)
    return {"t_serialized": serialized, "payload_bytes": len(data), "messages": 2}


def moss_receive(ws: Any, deadline: float) -> tuple[dict, dict]:
    import torch

    times: dict[str, float] = {}
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(message, str) and json.loads(message).get("type") == "weights_push":
            break
    times["t_first"] = time.monotonic()  # the JSON; the binary follows it
    data = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
    if not isinstance(data, bytes):
        raise ValueError("weights_push was not followed by a binary message")
    times["t_last"] = time.monotonic()
    times.update(cpu_snapshot("last"))
    loaded = torch.load(io.BytesIO(gzip.decompress(data)), map_location="cpu", weights_only=True)
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in loaded.items()}
    return state, times


def codec_ws_send(ws: Any, state: dict) -> dict:
    """Diagnostic: our codec over the websockets library, to separate codec from transport."""
    from segmentation_suite.network.codec import serialize_weights

    data = serialize_weights(state, epoch=1, loss=0.5, num_samples=64)
    serialized = time.monotonic()
    ws.send(data)
    return {"t_serialized": serialized, "payload_bytes": len(data), "messages": 1}


def codec_ws_receive(ws: Any, deadline: float) -> tuple[dict, dict]:
    from segmentation_suite.network.codec import decode_weights

    data = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
    if not isinstance(data, bytes):
        raise ValueError(f"expected the weights, got {data!r:.100}")
    times = {"t_first": time.monotonic(), "t_last": time.monotonic(), **cpu_snapshot("last")}
    state, _ = decode_weights(data, as_torch=True)
    return state, times


def cpu_snapshot(label: str) -> dict[str, float]:
    """This thread's CPU seconds and the process's minor page faults, to tell work from
    waiting for a core (2 cores, shared) and from first-touch page faults."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {f"cpu_{label}": time.thread_time(), f"minflt_{label}": usage.ru_minflt}


# --- processes ------------------------------------------------------------------------------


FRAMED = ["frame_header"]  # what our clients announce (protocol.CLIENT_FEATURES)


def control(conn: Any, message_type: str, **payload: Any) -> None:
    conn.send_text(json.dumps({"type": message_type, "payload": payload}))


def next_json(recv, deadline: float) -> dict:
    while True:
        message = recv(max(deadline - time.monotonic(), 0.001))
        if isinstance(message, tuple):  # ours: (is_binary, data)
            is_binary, message = message
            if is_binary:
                continue
        return json.loads(message)


def expect(message: dict, message_type: str) -> dict:
    if message.get("type") != message_type:
        raise RuntimeError(f"expected {message_type}, got {message}")
    return message["payload"]


def schedule(methods: list[str], runs: int) -> list[tuple[str, int]]:
    """(method, run) pairs, run -1 being the warm-up round; the order rotates per round."""
    items = []
    for run in range(-1, runs):
        shift = (run + 1) % len(methods)
        items += [(method, run) for method in methods[shift:] + methods[:shift]]
    return items


def connect_both(stack: contextlib.ExitStack, url: str, timeout: float) -> tuple[Any, Any]:
    """One connection of each client kind, closed when `stack` ends."""
    from websockets.sync.client import connect as ws_connect

    from segmentation_suite.network import transport

    ours = transport.connect(
        url + "/ws", proxy=False, connect_timeout=timeout, reassemble_transfers=True
    )
    stack.callback(ours.close)
    # compression=None: our relay does not negotiate permessage-deflate; saying so up front
    # keeps the client from compressing if it ever did (the payload is gzip'd already).
    ws = stack.enter_context(
        ws_connect(
            url + "/ws", max_size=256 * MiB, compression=None, open_timeout=timeout, proxy=None
        )
    )
    return ours, ws


def private_transfers(config: dict, user_id: str):
    """The private method's sealing/opening object, with the run's group key."""
    from segmentation_suite.network.private_room import GroupKey, SealedTransfers

    return SealedTransfers(PRIVATE_ROOM, user_id, GroupKey(0, bytes.fromhex(config["group_key"])))


def receiver_main(config: dict, barrier: Any, results: Any, pipe: Any) -> None:
    try:
        import torch

        with contextlib.ExitStack() as stack:
            ours, ws = connect_both(stack, config["url"], config["timeout"])
            deadline = time.monotonic() + config["timeout"]
            # frame_header: the relay hands framed binaries only to members that read them
            control(ours, "create_room", user_id=RECEIVER, display_name="Receiver", features=FRAMED)
            created = expect(next_json(ours.recv, deadline), "room_created")
            ws.send(json.dumps({"type": "create_room", "payload": {"user_id": RECEIVER}}))
            ws_created = expect(next_json(ws.recv, deadline), "room_created")
            chunk_size = min(config["chunk_size"], created["relay"]["limits"]["chunk_size"])
            pipe.send((created["room_code"], ws_created["room_code"], chunk_size))
            expect(next_json(ours.recv, deadline), "user_joined")
            expect(next_json(ws.recv, deadline), "user_joined")

            opener = private_transfers(config, RECEIVER)
            sent = random_state_dict(config["layout"], config["seed"])
            as_f16 = {k: v.half().float() if v.is_floating_point() else v for k, v in sent.items()}
            for method, run in schedule(config["methods"], config["runs"]):
                gc.collect()
                # As a client in a private room: the connection opens each segment as it lands.
                if method == "private":
                    ours.set_transfer_key(opener.group.key, PRIVATE_ROOM, opener.group.epoch)
                else:
                    ours.set_transfer_key(None)
                barrier.wait(config["timeout"])
                deadline = time.monotonic() + config["timeout"]
                if method == "moss":
                    state, times = moss_receive(ws, deadline)
                elif method == "codec-ws":
                    state, times = codec_ws_receive(ws, deadline)
                else:
                    state, times = ours_receive(
                        ours, deadline, opener if method == "private" else None
                    )
                times["t_done"] = time.monotonic()
                times.update(cpu_snapshot("done"))
                expected = sent if method == "ours-f32" else as_f16
                report = {"role": RECEIVER, "method": method, "run": run, **times}
                report["check"] = compare(torch, state, expected, sent)
                results.put(report)
                if config["save_dir"] and run == config["runs"] - 1:
                    save_npz(Path(config["save_dir"]) / f"received_{method}.npz", state)
                del state
            barrier.wait(config["timeout"])  # the sender closes only after the last receive
    except BaseException:  # noqa: BLE001 (reported to the parent, which stops the run)
        results.put({"role": RECEIVER, "error": traceback.format_exc()})
        barrier.abort()


def sender_main(config: dict, barrier: Any, results: Any, pipe: Any) -> None:
    try:
        with contextlib.ExitStack() as stack:
            ours, ws = connect_both(stack, config["url"], config["timeout"])
            if not pipe.poll(config["timeout"]):
                raise TimeoutError("the receiver sent no room codes")
            room, ws_room, chunk_size = pipe.recv()
            deadline = time.monotonic() + config["timeout"]
            control(
                ours,
                "join_room",
                room_code=room,
                user_id=SENDER,
                display_name="Sender",
                features=FRAMED,
            )
            expect(next_json(ours.recv, deadline), "room_joined")
            join = {"room_code": ws_room, "user_id": SENDER, "display_name": "Sender"}
            ws.send(json.dumps({"type": "join_room", "payload": join}))
            expect(next_json(ws.recv, deadline), "room_joined")

            sealer = private_transfers(config, SENDER)
            state = random_state_dict(config["layout"], config["seed"])
            if config["save_dir"]:
                save_npz(Path(config["save_dir"]) / "sent.npz", state)
            items = schedule(config["methods"], config["runs"])
            for transfer_id, (method, run) in enumerate(items, start=1):
                gc.collect()
                barrier.wait(config["timeout"])
                started = time.monotonic()
                if method == "moss":
                    report = moss_send(ws, state)
                elif method == "codec-ws":
                    report = codec_ws_send(ws, state)
                else:
                    wire = "float32" if method == "ours-f32" else "float16"
                    sealing = sealer if method == "private" else None
                    report = ours_send(ours, state, wire, transfer_id, chunk_size, sealing)
                report.update(role=SENDER, method=method, run=run, t_start=started)
                report["t_sent"] = time.monotonic()
                results.put(report)
            barrier.wait(config["timeout"])
    except BaseException:  # noqa: BLE001
        results.put({"role": SENDER, "error": traceback.format_exc()})
        barrier.abort()


def compare(torch: Any, state: dict, expected: dict, sent: dict) -> dict:
    """Names, dtypes and shapes as sent; values equal to `expected` (the sent values, rounded
    to float16 by torch where float16 travelled); the largest error relative to the sent."""
    same_keys = list(state) == list(expected)
    exact = same_keys and all(
        state[k].dtype == expected[k].dtype and torch.equal(state[k], expected[k]) for k in state
    )
    worst = 0.0
    if same_keys:
        for name, value in state.items():
            if value.is_floating_point() and value.numel():
                error = (value - sent[name]).abs() / sent[name].abs().clamp_min(2**-14)
                worst = max(worst, float(error.max()))
    return {"names_match": same_keys, "exact": exact, "max_relative_error": worst}


def save_npz(path: Path, state: dict) -> None:
    import numpy as np

    np.savez(path, **{name: tensor.numpy() for name, tensor in state.items()})


# --- the parent: relay, processes, table ----------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    from segmentation_suite.relay_process import RelayProcess

    with RelayProcess(*RELAY_OPTIONS) as relay:
        return run_transfers(args, relay.url)


def run_transfers(args: argparse.Namespace, url: str) -> list[dict]:
    """Every transfer of the run, through the relay at `url` (bench_fedavg.py measures its
    round's floor through the relay of its rounds)."""
    context = multiprocessing.get_context("spawn")  # the transport is not fork-safe
    barrier = context.Barrier(2)
    results = context.Queue()
    receiver_end, sender_end = context.Pipe()
    config = {
        "url": url,
        "layout": str(args.layout),
        "seed": args.seed,
        "runs": args.runs,
        "methods": args.methods,
        "timeout": args.timeout,
        "chunk_size": args.chunk_size,
        "save_dir": str(args.save_received) if args.save_received else None,
        "group_key": os.urandom(32).hex(),  # the private method's, shared out of band
    }
    workers = [
        context.Process(target=receiver_main, args=(config, barrier, results, receiver_end)),
        context.Process(target=sender_main, args=(config, barrier, results, sender_end)),
    ]
    for worker in workers:
        worker.start()
    expected = 2 * len(schedule(args.methods, args.runs))
    # Setup (torch import, weights, connections) plus every transfer, each bounded.
    deadline = time.monotonic() + 120 + expected * args.timeout / 2
    reports: list[dict] = []
    try:
        while len(reports) < expected:
            report = results.get(timeout=max(deadline - time.monotonic(), 0.001))
            if "error" in report:
                raise RuntimeError(f"the {report['role']} failed:\n{report['error']}")
            reports.append(report)
            progress = f"{report['role']} {report['method']} run {report['run']}"
            print(f"  {progress}", file=sys.stderr)
    finally:
        for worker in workers:
            worker.join(timeout=10 if len(reports) == expected else 0.5)
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
    return reports


def summarize(reports: list[dict]) -> dict[str, dict]:
    sends = {(r["method"], r["run"]): r for r in reports if r["role"] == SENDER}
    receives = {(r["method"], r["run"]): r for r in reports if r["role"] == RECEIVER}
    summary = {}
    for method in METHODS:
        runs = [(sends[k], receives[k]) for k in sorted(sends) if k[0] == method and k[1] >= 0]
        if not runs:
            continue
        figures = {
            "total_ms": [1000 * (r["t_done"] - s["t_start"]) for s, r in runs],
            "serialize_ms": [1000 * (s["t_serialized"] - s["t_start"]) for s, r in runs],
            "transfer_ms": [1000 * (r["t_last"] - s["t_serialized"]) for s, r in runs],
            "decode_ms": [1000 * (r["t_done"] - r["t_last"]) for s, r in runs],
            "decode_cpu_ms": [1000 * (r["cpu_done"] - r["cpu_last"]) for s, r in runs],
            "decode_page_faults": [r["minflt_done"] - r["minflt_last"] for s, r in runs],
            # The sender's own share of the transfer: until its send call returned.
            "send_call_ms": [1000 * (s["t_sent"] - s["t_serialized"]) for s, r in runs],
        }
        summary[method] = {
            "runs": figures,
            **{name: statistics.median(values) for name, values in figures.items()},
            "min_total_ms": min(figures["total_ms"]),
            "payload_bytes": runs[0][0]["payload_bytes"],
            "messages": runs[0][0]["messages"],
            "checks": [r["check"] for s, r in runs],
        }
    return summary


def print_table(summary: dict[str, dict], model: str, runs: int) -> None:
    labels = {
        "ours-f16": "ours: codec float16 wire + _relayclient",
        "ours-f32": "ours: codec float32 wire (lossless)",
        "codec-ws": "(diagnostic) our codec over websockets library",
        "moss": "MOSS-style: fp16 torch.save gzip-1, websockets",
        "private": "private room: ours-f16, sealed end to end",
    }
    base = summary["ours-f16"]["total_ms"] if "ours-f16" in summary else None
    print(f"{model}; median of {runs} runs each, interleaved; loopback relay_server\n")
    print(
        f"| {'method':<47} | {'end to end ms':>13} | {'min':>6} | {'serialize':>9} | "
        f"{'send+relay':>10} | {'decode':>6} | {'x ours-f16':>10} | {'wire MB':>7} | "
        f"{'msgs':>4} | {'check':<12} |"
    )
    print(
        f"|{'-' * 49}|{'-' * 14}:|{'-' * 7}:|{'-' * 10}:|{'-' * 11}:|{'-' * 7}:|{'-' * 11}:|"
        f"{'-' * 8}:|{'-' * 5}:|{'-' * 14}|"
    )
    for method, row in summary.items():
        checks = row["checks"]
        if not all(c["names_match"] for c in checks):
            check = "NAMES DIFFER"
        elif all(c["exact"] for c in checks):
            check = "exact" if method == "ours-f32" else "exact (fp16)"
        else:
            check = f"rel.err {max(c['max_relative_error'] for c in checks):.1e}"
        print(
            f"| {labels[method]:<47} | {row['total_ms']:>13.1f} | {row['min_total_ms']:>6.1f} | "
            f"{row['serialize_ms']:>9.1f} | {row['transfer_ms']:>10.1f} | "
            f"{row['decode_ms']:>6.1f} | {row['total_ms'] / base if base else 0:>10.2f} | "
            f"{row['payload_bytes'] / 1e6:>7.1f} | {row['messages']:>4} | {check:<12} |"
        )
    print(
        "\nend to end = sender starts serializing -> receiver holds the dict of torch tensors;"
        "\nserialize = sender's encoding; send+relay = encoded -> last byte received; decode ="
        "\nreceiver's decoding after the last byte. wire MB = payload (10^6 bytes), excluding"
        "\nframe and WebSocket headers; msgs = WebSocket messages sent (ours: 16 MiB chunks)."
    )
    sends = ", ".join(f"{m} {row['send_call_ms']:.0f} ms" for m, row in summary.items())
    print(f"(sender's send call alone, median: {sends})")
    decodes = ", ".join(
        f"{m} {row['decode_cpu_ms']:.0f} ms / {row['decode_page_faults']:.0f} faults"
        for m, row in summary.items()
    )
    print(f"(receiver's decode: CPU time / minor page faults, median: {decodes})")
    if "moss" in summary:
        for method in ("ours-f16", "ours-f32"):
            if method in summary:
                ratio = summary["moss"]["total_ms"] / summary[method]["total_ms"]
                print(f"MOSS-style / {method}: {ratio:.1f}x faster end to end")
    if "private" in summary and "ours-f16" in summary:
        ratio = summary["private"]["total_ms"] / summary["ours-f16"]["total_ms"]
        print(f"private / ours-f16: {ratio:.3f}x end to end (target: <= 1.15x)")


def numpy_copy_ms(layout: list[dict], runs: int) -> float:
    """Median time of one numpy copy of as many bytes as the model's float32 tensors hold."""
    import numpy as np

    size = sum(4 * int(np.prod(entry["shape"])) for entry in layout)
    source = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # faults the pages in: the transfer's buffers are warm too
    times = []
    for _ in range(max(runs, 5)):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (openssl's command line)."""
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext"]
        + ["subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(relay_pid: int) -> float:
    """CPU seconds used so far by the relay and this process (the clients)."""
    return process_cpu_seconds(relay_pid) + time.process_time()


def timed_stream(
    sender, receiver, message: bytes, count: int, relay_pid: int
) -> tuple[float, float]:
    """Sends `message` `count` times from `sender` on a thread while this thread receives them
    on `receiver` (the same connection for an echo); MB/s received, and the CPU seconds (relay
    and clients) per GB received. The first message is a warm-up (buffers, TLS session)."""
    import threading

    sender.send_binary(message)
    receiver.recv(timeout=60)
    start, cpu_start = time.perf_counter(), cpu_now(relay_pid)
    thread = threading.Thread(target=lambda: [sender.send_binary(message) for _ in range(count)])
    thread.start()
    for _ in range(count):
        is_binary, data = receiver.recv(timeout=60)
        if not is_binary or len(data) != len(message):
            raise ValueError("what arrived is not what was sent")
    elapsed, cpu = time.perf_counter() - start, cpu_now(relay_pid) - cpu_start
    thread.join()
    size = count * len(message)
    return size / elapsed / 1e6, cpu / (size / 1e9)


def echo_throughput(
    url: str, relay_pid: int, engine: str, ca_file: str | None, total: int, size: int
) -> tuple[float, float]:
    """MB/s of `total` bytes sent as `size`-byte messages to the relay's echo and received back
    on one connection (a sender thread, this thread receiving); both directions count once.
    Also the CPU seconds (relay and client) per GB received back."""
    from segmentation_suite.network import transport

    message = bytes(range(256)) * (size // 256)
    count = total // size
    with transport.connect(
        url + "/echo", engine=engine, proxy=False, ca_file=ca_file, max_message_size=2 * size
    ) as conn:
        return timed_stream(conn, conn, message, count, relay_pid)


def tls_floor_throughput(
    floor: Path, cert: Path, key: Path, tls: bool, total: int
) -> tuple[float, float]:
    """MB/s and CPU-s/GB of bench/floor/tls_floor.c: the same echo (4 MiB messages) between two
    C threads, plain TCP or TLS 1.3 AES-128-GCM through memory BIOs, no relay, no WebSocket."""
    import subprocess

    command = [str(floor), "--bytes", str(total), "--message-size", str(4 * MiB)]
    if tls:
        command += ["--tls", str(cert), str(key)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    words = output.stdout.split()  # MB/s <rate> cpu_s_per_gb <cpu>
    return float(words[1]), float(words[3])


def build_tls_floor() -> Path | None:
    """Builds bench/floor's TLS echo floor (make); None with a note when it does not build."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run(["make", "-s", "-C", str(root / "bench" / "floor")], capture_output=True)
    floor = root / "build" / "bench" / "tls_floor"
    if built.returncode != 0 or not floor.exists():
        print("note: bench/floor did not build (libssl-dev?): no TLS floor", file=sys.stderr)
        return None
    return floor


def room_throughput(
    url: str, relay_pid: int, ca_file: str | None, total: int, size: int
) -> tuple[float, float]:
    """MB/s of `total` bytes sent as `size`-byte binary messages from one member of a room to
    the other through the relay (raw engine, both connections in this process): the path of a
    weight push, where the relay decrypts and encrypts again what it forwards. Also the CPU
    seconds (relay and both clients) per GB received."""
    from segmentation_suite.network import transport

    message = bytes(range(256)) * (size // 256)
    count = total // size
    options = {"engine": "raw", "proxy": False, "ca_file": ca_file, "max_message_size": 2 * size}
    with (
        transport.connect(url + "/ws", **options) as sender,
        transport.connect(url + "/ws", **options) as receiver,
    ):
        deadline = time.monotonic() + 60
        control(sender, "create_room", user_id=SENDER, display_name="Sender")
        room_code = expect(next_json(sender.recv, deadline), "room_created")["room_code"]
        control(receiver, "join_room", room_code=room_code, user_id=RECEIVER, display_name="R")
        expect(next_json(receiver.recv, deadline), "room_joined")
        expect(next_json(sender.recv, deadline), "user_joined")
        return timed_stream(sender, receiver, message, count, relay_pid)


def transport_throughput(runs: int) -> dict[str, tuple[float, float]]:
    """Median (MB/s, CPU-s/GB) per row, the rows measured interleaved: ws:// against wss://
    through the relay's echo (raw engine; lws's client for reference) and from one room member
    to another, and the TLS floor."""
    import tempfile

    from segmentation_suite.relay_process import RelayProcess

    options = ("--enable-echo", "--max-message-size", "64M", "--receiver-buffer", "256M")
    labels = ["ws raw", "wss raw", "wss lws", "ws room", "wss room"]
    floor = build_tls_floor()
    if floor:
        labels += ["floor tcp", "floor tls"]
    figures: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cert, key = self_signed_certificate(directory)
        plain = stack.enter_context(RelayProcess(*options))
        tls = stack.enter_context(
            RelayProcess(*options, "--tls-cert", str(cert), "--tls-key", str(key))
        )
        for _ in range(runs):
            for label in labels:
                scheme, kind = label.split()
                relay, ca = (tls, str(cert)) if scheme == "wss" else (plain, None)
                pid = relay.process.pid
                if scheme == "floor":
                    figure = tls_floor_throughput(floor, cert, key, kind == "tls", 256 * MiB)
                elif kind == "room":
                    figure = room_throughput(relay.url, pid, ca, 256 * MiB, 4 * MiB)
                else:
                    figure = echo_throughput(relay.url, pid, kind, ca, 256 * MiB, 4 * MiB)
                figures[label].append(figure)
    return {
        label: (statistics.median(f[0] for f in values), statistics.median(f[1] for f in values))
        for label, values in figures.items()
    }


def print_transport(figures: dict[str, tuple[float, float]]) -> None:
    print(
        "transport throughput, 256 MiB in 4 MiB messages (echo: through the relay's echo and "
        "back; room: one member to another), and CPU seconds (relay + clients) per GB delivered:"
    )
    for label, (rate, cpu) in figures.items():
        print(f"  {label:<9} {rate:8.0f} MB/s {cpu:7.2f} CPU-s/GB")
    pairs = [("wss/ws, echo", "ws raw", "wss raw"), ("wss/ws, room", "ws room", "wss room")]
    if "floor tls" in figures:
        pairs.append(("tls/tcp, floor", "floor tcp", "floor tls"))
    for name, plain, tls in pairs:
        ratio = figures[tls][0] / figures[plain][0]
        cpu_ratio = figures[plain][1] / figures[tls][1]  # the throughput ratio when CPU-bound
        added = figures[tls][1] - figures[plain][1]
        line = (
            f"{name:<15} {ratio:.2f}x (CPU-s/GB plain/TLS {cpu_ratio:.2f}x, TLS adds {added:.2f})"
        )
        if not name.endswith("floor"):
            line += f"  {'met' if ratio >= 0.8 else 'MISSED'} wss >= 0.8x ws"
        print(line)
    if "floor tls" in figures:
        print(
            "(floor: bench/floor/tls_floor.c, the echo between two C threads over TCP or TLS 1.3, "
            "no relay, no WebSocket: about the best ratio TLS allows on this machine)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured rounds (default 7)")
    parser.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=16 * MiB, help="ours, at most")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per step")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--save-received", type=Path, help="write sent and received .npz here")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"a subset of {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if < 10x faster than moss")
    parser.add_argument("--no-transport", action="store_true", help="skip ws vs wss throughput")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or set(args.methods) - set(METHODS):
        parser.error(f"--methods: a comma-separated subset of {','.join(METHODS)}")

    layout = json.loads(args.layout.read_text())["layout"]
    model = f"model: {len(layout)} tensors from {args.layout.name}"
    print(f"{model}: starting the relay and two client processes", file=sys.stderr)
    summary = summarize(run_benchmark(args))
    print_table(summary, model, args.runs)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    copy_ms = numpy_copy_ms(layout, args.runs)
    print(f"\nnumpy copy of the float32 bytes: {copy_ms:.1f} ms (median)")
    if "ours-f16" in summary:
        ratio = summary["ours-f16"]["total_ms"] / copy_ms
        print(
            f"{'met   ' if ratio <= 4 else 'MISSED'} ours-f16 end to end <= 4x a numpy copy "
            f"({ratio:.1f}x)"
        )
    if not args.no_transport:
        print_transport(transport_throughput(max(1, min(args.runs, 3))))
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average during the run: {' '.join(load)} ({multiprocessing.cpu_count()} cores)")
    if not all(c["names_match"] for row in summary.values() for c in row["checks"]):
        print("a received dict does not have the names that were sent", file=sys.stderr)
        return 1
    if "moss" not in summary or "ours-f16" not in summary:
        return 1 if args.check else 0
    ratio = summary["moss"]["total_ms"] / summary["ours-f16"]["total_ms"]
    print(f"{'met   ' if ratio >= 10 else 'MISSED'} end to end >= 10x MOSS-style ({ratio:.1f}x)")
    return 1 if args.check and ratio < 10 else 0


if __name__ == "__main__":
    sys.exit(main())
