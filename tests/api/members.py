"""Room members that run in their own processes (multiprocessing, spawn), for tests/api.

`run_member` joins a room with a SyncClient (or a LAN session, for a lan://HOST:PORT url),
reports what its signals say to the test on `events` as (name, what, data) tuples, and carries
out the commands the test puts on `commands`. State dicts are made from a seed, so the test
can rebuild what a member sent without receiving it.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import numpy as np

LAYOUT_FILE = Path(__file__).resolve().parents[1] / "vectors" / "unet_deep_dice_v2_layout.json"


def unet_layout() -> list[dict]:
    return json.loads(LAYOUT_FILE.read_text())["layout"]


def layout_state(seed: int, layout: list[dict] | None = None) -> dict[str, np.ndarray]:
    """A random state dict with the names, shapes and dtypes of `layout` (default: U-Net).
    Each tensor has its own generator, so one tensor can be rebuilt without the others."""
    layout = layout if layout is not None else unet_layout()
    return {entry["name"]: layout_tensor(seed, i, entry) for i, entry in enumerate(layout)}


def layout_tensor(seed: int, index: int, entry: dict) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    shape = tuple(entry["shape"])
    if entry["dtype"] == "float32":
        return rng.standard_normal(shape, dtype=np.float32)
    return np.asarray(rng.integers(0, 10_000, size=shape), dtype=entry["dtype"])


def big_layout(megabytes: int) -> list[dict]:
    """A layout of four float32 tensors totalling `megabytes` MB."""
    count = megabytes * 1024 * 1024 // 4 // 4
    return [{"name": f"block{i}.weight", "shape": [count], "dtype": "float32"} for i in range(4)]


def run_member(url, room_code, name, events, commands, options=None) -> None:
    from segmentation_suite.network import SyncClient

    client = SyncClient(**(options or {}))

    def report(what):
        return lambda *args: events.put((name, what, args))

    client.room_joined.connect(report("room_joined"))
    client.user_joined_room.connect(report("user_joined_room"))
    client.user_left_room.connect(report("user_left_room"))
    client.error.connect(report("error"))
    client.disconnected.connect(report("disconnected"))
    client.architecture_received.connect(report("architecture_received"))
    client.user_list_updated.connect(
        lambda users: events.put((name, "users", ([u["display_name"] for u in users],)))
    )
    client.global_model_received.connect(
        lambda weights: events.put((name, "global", (sorted(weights),)))
    )
    client.connected.connect(report("connected"))
    if url.startswith("lan://"):  # a LAN session: url is lan://HOST:PORT, room_code unused
        host, port = url.removeprefix("lan://").rsplit(":", 1)
        client.connect_direct(host, int(port), name)
    else:
        client.connect_relay(room_code, name, url)
    while True:
        try:
            command, *args = commands.get(timeout=300)
        except queue.Empty:
            return
        if command == "push":
            seed, num_samples, epoch, layout, start_at = args
            weights = layout_state(seed, layout)
            if start_at is not None:  # a wall-clock moment shared with another member
                time.sleep(max(0.0, start_at - time.time()))
            future = client.send_weights(weights, epoch=epoch, loss=0.5, num_samples=num_samples)
            future.result(120)
            events.put((name, "pushed", (client.user_id,)))
        elif command == "leave":
            client.disconnect()
        elif command == "exit":
            client.disconnect()
            return
