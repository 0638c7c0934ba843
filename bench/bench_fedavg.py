"""One FedAvg round through the relay: ours (host aggregation) against MOSS-style gossip.

N members on loopback, each with its own copy of a model (the original app's 2D U-Net by
default, tests/vectors/unet_deep_dice_v2_layout.json, seeded random weights), end the
round holding the average of all N models. One relay_server process; each member is its own
process with one connection of each kind, open for the whole run:

* ours: the app API (SyncClient). Member 0 created the room and is the host; the others
  `send_weights` to it (the data-only codec, float16 on the wire, directed to the host), the
  host averages (FedAvg) and sends one `global_model` to everyone.
* gossip: the original client's relay mode on the `websockets` library (asyncio, as the
  original; receiving while sending): every member sends a `weights_push` JSON and one binary,
  gzip(torch.save(float16 state dict), level 1), which the relay copies to all N-1 others;
  every member gunzips and torch.loads (weights_only) what it receives and averages it with
  its own.

A round starts when every member and this script have passed a barrier (every member joined,
its model built, the relay's /metrics read), and ends when the last member holds the average;
times are CLOCK_MONOTONIC (time.monotonic), the same clock in every process. Bytes are what the
relay counted (/metrics: relay_bytes_received_total + relay_bytes_sent_total, text and binary)
between the barrier and the end of the round. Each member checks its result against the exact
mean of a few tensors, outside the timed span, once every member's round is over (a check
takes a core from a member still in its round). Rounds alternate between the methods (one
warm-up round of each, not counted); figures are medians. Next to them, one numpy copy of the
model's float32 bytes, measured in the same run (bench_end_to_end.numpy_copy_ms): issue 15
wants a round of ours within 10 of them (--compression none is the default: whole float16
models both ways, every round; "auto", the API's default, sends deltas from the second round
on).

Beside it, the round's floor on this machine, also in copies: what no implementation of a
round through a relay can beat here. Two one-way float16 transfers of the model (a push, then
the global), each bench_end_to_end's ours-f16 (encode, send through the relay, reassemble,
decode: median of at least 5) through the relay of the rounds, after them, plus a numpy
average of the members' float32 models (np.add of each into one sum, one multiply; median).
Usage:

    .venv/bin/python bench/bench_fedavg.py [--members 4,8] [--runs 3] [--layout PATH]
        [--methods ours,gossip] [--compression none|auto|q8-delta|topk] [--room open|private]
        [--json OUT] [--check] [--no-floor]

--check exits 1 if a target is missed: issue 4's at least 5x less time, and at least 1.4x
(4 members) or 2.5x (8 members) fewer bytes than gossip; issue 15's round within 10 copies.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
import io
import json
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_LAYOUT = (
    Path(__file__).resolve().parents[1] / "tests" / "vectors" / "unet_deep_dice_v2_layout.json"
)
METHODS = ("ours", "gossip")
MiB = 1024 * 1024
NUM_SAMPLES = 64  # the same for everyone, so FedAvg's weighted mean is the plain mean
# Gossip's single message holds a whole model (57 MB for the U-Net); ours chunks.
RELAY_OPTIONS = (
    "--max-message-size",
    "128M",
    "--idle-timeout",
    "600",
    "--join-rate",
    "100000",
)
#: Byte targets (gossip bytes / ours bytes) by member count; time target for all counts.
BYTE_TARGETS = {4: 1.4, 8: 2.5}
TIME_TARGET = 5.0
#: Issue 15: a full round through the public API within this many numpy copies of the fp32 bytes.
ROUND_COPIES_TARGET = 10.0
#: Largest accepted |result - exact mean| (weights ~ 0.05 * N(0, 1), float16 on the wire).
TOLERANCE = 2e-3


# --- the models ----------------------------------------------------------------------------


def read_layout(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())["layout"]


def layout_tensor(seed: int, index: int, entry: dict):
    """One tensor of member `seed`'s model, from its own generator (rebuildable alone)."""
    import numpy as np

    rng = np.random.default_rng([seed, index])
    shape = tuple(entry["shape"])
    if entry["dtype"] == "float32":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
    return np.asarray(rng.integers(0, 1000, size=shape), dtype=entry["dtype"])


def member_model(seed: int, layout: list[dict]) -> dict:
    """name -> torch tensor, as model.state_dict() gives it."""
    import torch

    return {e["name"]: torch.from_numpy(layout_tensor(seed, i, e)) for i, e in enumerate(layout)}


def checked_indices(layout: list[dict]) -> list[int]:
    """The float tensors each member checks: the first, the largest and the last."""
    floats = [i for i, e in enumerate(layout) if e["dtype"] == "float32"]
    largest = max(floats, key=lambda i: math.prod(layout[i]["shape"]))
    return sorted({floats[0], largest, floats[-1]})


def max_error(result: dict, layout: list[dict], seeds: list[int]) -> float:
    """Largest |result - exact mean of the members' models| over the checked tensors."""
    import numpy as np

    worst = 0.0
    for index in checked_indices(layout):
        entry = layout[index]
        exact = sum(layout_tensor(seed, index, entry).astype(np.float64) for seed in seeds)
        got = np.asarray(result[entry["name"]], dtype=np.float64)
        worst = max(worst, float(np.abs(got - exact / len(seeds)).max()))
    return worst


# --- one round of each method, in a member -------------------------------------------------


class OursMember:
    """A SyncClient in the room; member 0 is the host (it created the room). `compression` is
    SyncClient's (None: whole float16 models, as issue 4 compares; "auto" is the API's default,
    deltas from the second round on). `private`: an end-to-end encrypted room (the API's
    default) rather than an open one (the original's kind, as gossip's)."""

    def __init__(
        self,
        index: int,
        url: str,
        code: str | None,
        count: int,
        timeout: float,
        compression: str | None = None,
        private: bool = False,
    ):
        from segmentation_suite.network import SyncClient

        self.client = SyncClient(
            aggregation_timeout=timeout * 10, ping_interval=None, compression=compression
        )
        self.compression = compression
        self.pushed: Any = None  # the last send_weights' Future: its result is the push's size
        self.count = count
        self.timeout = timeout
        self.result: dict | None = None
        self.round_done = threading.Event()
        self.full = threading.Event()
        self.created: list[str] = []
        self.errors: list[str] = []
        self.client.global_model_received.connect(self._on_global, thread=None)
        self.client.user_list_updated.connect(self._on_users, thread=None)
        self.client.room_created.connect(self.created.append, thread=None)
        self.client.error.connect(self.errors.append, thread=None)
        if index == 0:
            # The host pushes too: every round waits for its push (docs/network-api.md). Else
            # a member's push that arrives first closes the first round without it, and the
            # host's push opens the next, where its following push is refused.
            self.client.host_trains = True
            self.client.create_relay_room("member0", url, private=private)
        else:
            self.client.connect_relay(code, f"member{index}", url)

    def _on_global(self, weights: dict) -> None:
        self.result = weights
        self.round_done.set()

    def _on_users(self, users: list) -> None:
        if len(users) == self.count:
            self.full.set()

    def wait_until(self, event: threading.Event, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not event.wait(0.1):
            if self.errors:
                raise RuntimeError(f"{what}: {self.errors}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {self.timeout} s")

    def wait_ready(self) -> None:
        """Until everyone is in the room and, in a private room, holds the room key: the host
        waits for every member's key exchange (a round waits only for confirmed members, so
        a push before that could close a round of the host alone)."""
        self.wait_until(self.full, "full room")
        deadline = time.monotonic() + self.timeout
        while self.client.is_private and not self._keyed():
            if self.errors or time.monotonic() > deadline:
                raise RuntimeError(f"no key exchange with everyone: {self.errors}")
            time.sleep(0.05)

    def _keyed(self) -> bool:
        if self.client.is_host:
            return len(self.client.verification_codes) == self.count - 1
        return self.client.private_ready

    def run_round(self, state: dict, run: int) -> dict:
        self.round_done.clear()
        self.result = None
        future = self.client.send_weights(state, epoch=run, loss=0.5, num_samples=NUM_SAMPLES)
        if future is None:
            raise RuntimeError(f"send_weights failed: {self.errors}")
        self.pushed = future
        self.wait_until(self.round_done, "global model")
        return self.result

    def wire_bytes(self, state: dict, result: dict, run: int) -> dict:
        """What this member put on the wire as payload (outside the timed span): its push, or
        for the host the global model. Frame headers come on top (a few dozen bytes each)."""
        from segmentation_suite.network import serialize_weights

        if self.client.is_host:
            if self.compression is not None:
                return {}  # a delta or whole, by member: the relay's counters say
            metadata = {"aggregation_round": self.client.aggregation_round}
            return {"global_bytes": len(serialize_weights(result, metadata=metadata))}
        return {"push_bytes": self.pushed.result(timeout=self.timeout)}

    def close(self) -> None:
        self.client.disconnect()


class GossipMember:
    """The original client's relay mode on asyncio `websockets`, as the original was: every
    push to everyone, everyone averages. One event loop per member, run for each step."""

    def __init__(self, index: int, url: str, code: str | None, count: int, timeout: float):
        self.index = index
        self.count = count
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(self._join(url, code))
        self.sent = self.received = 0

    async def _join(self, url: str, code: str | None) -> Any:
        from websockets.asyncio.client import connect

        ws = await connect(
            url + "/ws",
            max_size=256 * MiB,
            compression=None,
            open_timeout=self.timeout,
            proxy=None,
            ping_interval=None,
        )
        user = {"user_id": f"gossip{self.index}", "display_name": f"member{self.index}"}
        if code is None:
            await ws.send(message("create_room", user))
            self.code = (await expect(ws, "room_created", self.timeout))["room_code"]
            self.users = 1
        else:
            await ws.send(message("join_room", {"room_code": code, **user}))
            self.users = len((await expect(ws, "room_joined", self.timeout))["users"])
            self.code = code
        return ws

    def wait_full(self) -> None:
        async def wait():
            while self.users < self.count:
                self.users = len((await expect(self.ws, "user_joined", self.timeout))["users"])

        self.loop.run_until_complete(wait())

    def run_round(self, state: dict, run: int) -> dict:
        return self.loop.run_until_complete(asyncio.wait_for(self._round(state, run), self.timeout))

    async def _round(self, state: dict, run: int) -> dict:
        import torch

        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        stream = io.BytesIO()
        torch.save(half, stream)
        data = gzip.compress(stream.getvalue(), compresslevel=1)
        del half, stream
        push = {"user_id": f"gossip{self.index}", "epoch": run, "loss": 0.5}
        total = {k: v.clone() if v.is_floating_point() else v for k, v in state.items()}

        async def send():
            await self.ws.send(message("weights_push", {**push, "num_samples": NUM_SAMPLES}))
            await self.ws.send(data)

        async def receive():
            # The original's receive loop runs all the time; ours runs while sending too, so
            # that members sending at once never wait on each other's reading.
            received = 0
            for _ in range(self.count - 1):
                while not isinstance(payload := await self.ws.recv(), bytes):
                    pass
                received += len(payload)
                loaded = torch.load(
                    io.BytesIO(gzip.decompress(payload)), map_location="cpu", weights_only=True
                )
                del payload
                for name, value in loaded.items():
                    if value.is_floating_point():
                        total[name] += value.float()
            return received

        _, self.received = await asyncio.gather(send(), receive())
        self.sent = len(data)
        return {k: v / self.count if v.is_floating_point() else v for k, v in total.items()}

    def wire_bytes(self, state: dict, result: dict, run: int) -> dict:
        return {"push_bytes": self.sent, "received_bytes": self.received}

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.close()


def message(message_type: str, payload: dict) -> str:
    return json.dumps({"type": message_type, "payload": payload})


async def expect(ws: Any, message_type: str, timeout: float) -> dict:
    received = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    if received.get("type") != message_type:
        raise RuntimeError(f"expected {message_type}, got {received}")
    return received["payload"]


def member_main(
    config: dict, index: int, inbox: Any, barrier: Any, finished: Any, results: Any
) -> None:
    """One member: joins, then runs every round between `barrier` (all members and the
    parent) and `finished` (all members: no member checks its result, which takes a core,
    while another is still in the round)."""
    try:
        layout = read_layout(config["layout"])
        count = config["members"]
        url, timeout = config["url"], config["timeout"]
        compression, methods = config["compression"], config["methods"]
        seeds = [config["seed"] + i for i in range(count)]
        gossip = None
        with contextlib.ExitStack() as stack:
            if index == 0:
                ours = OursMember(0, url, None, count, timeout, compression, config["private"])
                stack.callback(ours.close)
                deadline = time.monotonic() + timeout
                while not ours.created:
                    if ours.errors or time.monotonic() > deadline:
                        raise RuntimeError(f"could not create a room: {ours.errors}")
                    time.sleep(0.05)
                if "gossip" in methods:
                    gossip = GossipMember(0, url, None, count, timeout)
                    stack.callback(gossip.close)
                codes = (ours.created[0], gossip.code if gossip else None)
                results.put({"index": 0, "codes": codes})
            else:
                code, gossip_code = inbox.get(timeout=timeout)
                ours = OursMember(index, url, code, count, timeout, compression)
                stack.callback(ours.close)
                if "gossip" in methods:
                    gossip = GossipMember(index, url, gossip_code, count, timeout)
                    stack.callback(gossip.close)
            ours.wait_ready()
            if gossip is not None:
                gossip.wait_full()
            members = {"ours": ours, "gossip": gossip}
            state = member_model(seeds[index], layout)
            for method, run in schedule(config["runs"], methods):
                gc.collect()
                barrier.wait(timeout)
                started = time.monotonic()
                result = members[method].run_round(state, run)
                done = time.monotonic()
                finished.wait(timeout)
                report = {"index": index, "method": method, "run": run}
                report.update(t_start=started, t_done=done)
                report.update(members[method].wire_bytes(state, result, run))
                report["max_error"] = max_error(result, layout, seeds)
                del result
                results.put(report)
            barrier.wait(timeout)  # nobody closes before the last round is over everywhere
    except BaseException:  # noqa: BLE001 (reported to the parent, which stops the run)
        results.put({"index": index, "error": traceback.format_exc()})
        barrier.abort()
        finished.abort()


def schedule(runs: int, methods: tuple[str, ...] = METHODS) -> list[tuple[str, int]]:
    """(method, run) pairs, run -1 being the warm-up; the first method alternates per run."""
    items = []
    for run in range(-1, runs):
        order = methods if run % 2 else methods[::-1]
        items += [(method, run) for method in order]
    return items


# --- the parent ------------------------------------------------------------------------------


def relay_bytes(http_url: str) -> dict[str, float]:
    """The relay's byte counters from /metrics, parsed by the Prometheus client library."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counters = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("relay_bytes_received_total", "relay_bytes_sent_total"):
                direction = sample.name.split("_")[2]
                counters[f"{direction}_{sample.labels['kind']}"] = sample.value
    return counters


def run_members(count: int, args: argparse.Namespace) -> tuple[list[dict], float | None]:
    """Every round of one member count, one report per (method, run); and the one-way float16
    transfer through the same relay afterwards (None without ours, or with --no-floor)."""
    from segmentation_suite.relay_process import RelayProcess

    context = multiprocessing.get_context("spawn")  # the transport is not fork-safe
    with RelayProcess(*RELAY_OPTIONS) as relay:
        barrier = context.Barrier(count + 1)
        finished = context.Barrier(count)
        results = context.Queue()
        inboxes = [context.Queue() for _ in range(count)]
        config = {
            "url": relay.url,
            "layout": str(args.layout),
            "members": count,
            "seed": args.seed,
            "runs": args.runs,
            "timeout": args.timeout,
            "compression": args.compression,
            "private": args.room == "private",
            "methods": args.methods,
        }
        workers = [
            context.Process(
                target=member_main,
                args=(config, i, inboxes[i], barrier, finished, results),
                name=f"member {i}",
            )
            for i in range(count)
        ]
        for worker in workers:
            worker.start()
        rounds = []
        try:
            first = next_report(results, args.timeout * 2)
            for inbox in inboxes[1:]:
                inbox.put(first["codes"])
            for method, run in schedule(args.runs, args.methods):
                before = relay_bytes(relay.http_url)
                barrier.wait(args.timeout * 2)  # setup (torch import, models) the first time
                reports = [next_report(results, args.timeout) for _ in range(count)]
                after = relay_bytes(relay.http_url)
                counted = {k: after[k] - before[k] for k in after}
                rounds.append(summarize_round(method, run, count, reports, counted))
                figure = rounds[-1]
                print(
                    f"  {count} members, {method} run {run}: {figure['seconds']:.2f} s, "
                    f"{figure['relay_bytes'] / MiB:.1f} MiB",
                    file=sys.stderr,
                )
            barrier.wait(args.timeout)
        finally:
            for worker in workers:
                worker.join(timeout=15)
                if worker.is_alive():
                    worker.terminate()
                    worker.join(5)
        one_way = None
        if args.floor and "ours" in args.methods:
            one_way = one_way_fp16_ms(relay.url, args)
    return rounds, one_way


def one_way_fp16_ms(url: str, args: argparse.Namespace) -> float:
    """bench_end_to_end's ours-f16 through the relay at `url`: the layout's state dict from one
    process to another, "starts encoding" to "holds the decoded tensors"; the median."""
    from bench_end_to_end import run_transfers, summarize

    options = argparse.Namespace(
        layout=args.layout,
        seed=args.seed,
        runs=max(args.runs, 5),
        methods=["ours-f16"],
        timeout=min(args.timeout, 60),
        chunk_size=16 * MiB,
        save_received=None,
    )
    return summarize(run_transfers(options, url))["ours-f16"]["total_ms"]


def numpy_average_ms(layout: list[dict], members: int, runs: int) -> float:
    """Median time numpy takes to average `members` models of the layout's float32 size held
    as flat arrays: np.add of each into one sum, then one multiply (two distinct models,
    alternating: no model stays in a cache, as none of the size does in a round)."""
    import numpy as np

    size = sum(int(np.prod(e["shape"])) for e in layout if e["dtype"] == "float32")
    rng = np.random.default_rng(0)
    models = [rng.standard_normal(size, dtype=np.float32) for _ in range(2)]
    total = np.empty_like(models[0])
    np.add(models[0], models[1], out=total)  # faults the pages in, as the round's are warm
    times = []
    for _ in range(max(runs, 5)):
        start = time.perf_counter()
        np.add(models[0], models[1], out=total)
        for index in range(2, members):
            np.add(total, models[index % 2], out=total)
        np.multiply(total, np.float32(1 / members), out=total)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def next_report(results: Any, timeout: float) -> dict:
    report = results.get(timeout=timeout)
    if "error" in report:
        raise RuntimeError(f"member {report['index']} failed:\n{report['error']}")
    return report


def summarize_round(method: str, run: int, count: int, reports: list, counted: dict) -> dict:
    if sorted(r["index"] for r in reports) != list(range(count)):
        raise RuntimeError(f"round reports out of step: {reports}")
    if any(r["method"] != method or r["run"] != run for r in reports):
        raise RuntimeError(f"expected {method} run {run}, got {reports}")
    seconds = max(r["t_done"] for r in reports) - min(r["t_start"] for r in reports)
    relay_total = sum(counted.values())
    return {
        "members": count,
        "method": method,
        "run": run,
        "seconds": seconds,
        "relay_bytes": relay_total,
        "relay": counted,
        "max_error": max(r["max_error"] for r in reports),
        "push_bytes": sum(r.get("push_bytes", 0) for r in reports),
        "global_bytes": sum(r.get("global_bytes", 0) for r in reports),
        "received_bytes": sum(r.get("received_bytes", 0) for r in reports),
    }


def table(
    rounds: list[dict], copy_ms: float, floors: dict[int, dict] | None = None
) -> tuple[str, list[str]]:
    """The medians and ratios as a Markdown table, and the targets missed. `copy_ms` is one
    numpy copy of the model's float32 bytes, measured in the same run (issue 15's yardstick);
    `floors`, by member count, the round's floor (floor_parts) beside ours' round."""
    lines = [
        "| members | method | wall time (s) | x numpy copy | through the relay (MiB) | max error |",
        "|---|---|---|---|---|---|",
    ]
    missed = []
    ratios = []
    for count in sorted({r["members"] for r in rounds}):
        medians = {}
        for method in METHODS:
            runs = [r for r in rounds if r["members"] == count and r["method"] == method]
            runs = [r for r in runs if r["run"] >= 0]
            if not runs:
                continue
            seconds = statistics.median(r["seconds"] for r in runs)
            size = statistics.median(r["relay_bytes"] for r in runs)
            error = max(r["max_error"] for r in runs)
            medians[method] = (seconds, size)
            copies = seconds * 1000 / copy_ms
            lines.append(
                f"| {count} | {method} | {seconds:.3f} | {copies:.1f} | {size / MiB:.1f} "
                f"| {error:.1e} |"
            )
            if error > TOLERANCE:
                missed.append(f"{method} with {count} members: wrong average (error {error:.1e})")
        if "ours" in medians:
            copies = medians["ours"][0] * 1000 / copy_ms
            met = copies <= ROUND_COPIES_TARGET
            floor = (floors or {}).get(count)
            beside = ""
            if floor is not None:
                beside = (
                    f"; floor {floor['floor_ms'] / copy_ms:.1f}x = 2 x one-way float16 "
                    f"{floor['one_way_ms'] / copy_ms:.1f}x + numpy average "
                    f"{floor['average_ms'] / copy_ms:.1f}x; round/floor "
                    f"{medians['ours'][0] * 1000 / floor['floor_ms']:.2f}"
                )
            ratios.append(
                f"{count} members: {'met   ' if met else 'MISSED'} a round through the public API "
                f"<= {ROUND_COPIES_TARGET:g}x a numpy copy (round {copies:.1f}x{beside})"
            )
            if not met:
                missed.append(f"{count} members: round {copies:.1f}x > {ROUND_COPIES_TARGET:g}x")
        if len(medians) < len(METHODS):
            continue
        time_ratio = medians["gossip"][0] / medians["ours"][0]
        byte_ratio = medians["gossip"][1] / medians["ours"][1]
        byte_target = BYTE_TARGETS.get(count)
        ratios.append(
            f"{count} members: gossip/ours time {time_ratio:.1f}x (target >= {TIME_TARGET:g}x), "
            f"bytes {byte_ratio:.2f}x" + (f" (target >= {byte_target:g}x)" if byte_target else "")
        )
        if time_ratio < TIME_TARGET:
            missed.append(f"{count} members: time ratio {time_ratio:.1f}x < {TIME_TARGET:g}x")
        if byte_target and byte_ratio < byte_target:
            missed.append(f"{count} members: byte ratio {byte_ratio:.2f}x < {byte_target:g}x")
    return "\n".join(lines + [""] + ratios), missed


def floor_parts(one_way_ms: float, average_ms: float) -> dict:
    """A round's floor: a push and the global, each one way, and the average between them."""
    return {
        "one_way_ms": one_way_ms,
        "average_ms": average_ms,
        "floor_ms": 2 * one_way_ms + average_ms,
    }


def main(argv: list[str] | None = None) -> int:
    from bench_end_to_end import numpy_copy_ms  # one definition of the yardstick

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", default="4,8", help="member counts, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="counted rounds per method")
    parser.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=180, help="seconds, per wait")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of ours,gossip"
    )
    parser.add_argument(
        "--compression",
        default="none",
        choices=("none", "auto", "q8-delta", "topk"),
        help="ours' SyncClient(compression=...); none: whole float16 models (default)",
    )
    parser.add_argument(
        "--room",
        default="open",
        choices=("open", "private"),
        help="ours' room: open (default; as gossip's) or private (end-to-end encrypted)",
    )
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the round's floor (two one-way float16 transfers and a numpy average)",
    )
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.members.split(",") if n.strip()]
    if any(n < 2 for n in counts) or args.runs < 1:
        parser.error("every member count must be at least 2, and --runs at least 1")
    args.methods = tuple(m for m in METHODS if m in args.methods.split(","))
    if not args.methods:
        parser.error(f"--methods: a comma-separated subset of {','.join(METHODS)}")
    args.compression = None if args.compression == "none" else args.compression
    rounds = []
    floors = {}
    layout = read_layout(args.layout)
    for count in counts:
        counted, one_way = run_members(count, args)
        rounds += counted
        if one_way is not None:
            average = numpy_average_ms(layout, count, max(args.runs, 15))
            floors[count] = floor_parts(one_way, average)
    copy_ms = numpy_copy_ms(layout, max(args.runs, 15))  # median of 15+
    text, missed = table(rounds, copy_ms, floors)
    print(text)
    print(
        f"\n(layout {args.layout.name}; ours in the {args.room} room with compression="
        f"{args.compression}; numpy copy of "
        f"the float32 bytes {copy_ms:.1f} ms; load average {os.getloadavg()[0]:.2f})"
    )
    if args.json:
        result = {"rounds": rounds, "missed": missed, "numpy_copy_ms": copy_ms, "floors": floors}
        result.update(compression=args.compression, room=args.room)
        args.json.write_text(json.dumps(result, indent=1))
    for line in missed:
        print(f"MISSED: {line}", file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
