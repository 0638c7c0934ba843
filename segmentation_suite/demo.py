"""`segmentation-suite demo`: a local relay and simulated colleagues training together.

Each colleague is a separate process with its own microscope: images of cells whose brightness
and contrast differ from one colleague to the next. Each trains a small per-pixel segmentation
model (logistic regression on local intensity features) on its own images; every round the
members push their weights to the host through the relay (directed delivery, self-describing
binary frames, the data-only weight codec), the host averages them (FedAvg, weighted by the
number of samples) and sends the global model back. At the end the table compares, on held-out
images from every microscope, each colleague's local-only model with the shared one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import time
from dataclasses import dataclass

import numpy as np

from .network.aggregator import weighted_average
from .network.codec import decode_weights, deserialize_weights, serialize_weights
from .network.protocol import FrameKind, pack_frame_header, unpack_frame_header
from .relay_process import RelayProcess

IMAGE_SIZE = 48
FEATURES = ("intensity", "mean 3x3", "mean 9x9", "local contrast", "bias")


@dataclass(frozen=True)
class Microscope:
    """How one colleague's images look: background and cell brightness, and noise."""

    background: float
    cells: float
    noise: float


MICROSCOPES = (
    Microscope(background=0.10, cells=0.35, noise=0.05),
    Microscope(background=0.55, cells=0.95, noise=0.08),
    Microscope(background=0.30, cells=0.60, noise=0.06),
    Microscope(background=0.20, cells=0.80, noise=0.10),
)


# --- data and model ------------------------------------------------------------------------


def synthetic_images(microscope: Microscope, count: int, seed: int):
    """Images of round cells on a background, and their masks (seeded, so reproducible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    images, masks = [], []
    for _ in range(count):
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(6, IMAGE_SIZE - 6, size=2)
            radius = rng.uniform(3, 7)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image = np.where(mask, microscope.cells, microscope.background)
        image = image + rng.normal(0, microscope.noise, size=image.shape)
        images.append(image.astype(np.float32))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def box_mean(images: np.ndarray, size: int) -> np.ndarray:
    """Mean over a size x size window (edges padded), with a summed-area table."""
    pad = size // 2
    padded = np.pad(images, ((0, 0), (pad + 1, pad), (pad + 1, pad)), mode="edge")
    table = padded.cumsum(axis=1).cumsum(axis=2)
    total = (
        table[:, size:, size:]
        - table[:, :-size, size:]
        - table[:, size:, :-size]
        + table[:, :-size, :-size]
    )
    return total / (size * size)


def pixel_features(images: np.ndarray) -> np.ndarray:
    mean3, mean9 = box_mean(images, 3), box_mean(images, 9)
    # Contrast against the neighbourhood carries over between microscopes; brightness does not.
    contrast = (mean3 - mean9) * 10
    columns = [images, mean3, mean9, contrast, np.ones_like(images)]
    return np.stack(columns, axis=-1).reshape(-1, len(FEATURES))


def new_model() -> dict[str, np.ndarray]:
    return {"classifier.weight": np.zeros(len(FEATURES), dtype=np.float32)}


def train(model, features, labels, epochs: int, learning_rate: float = 2.0):
    """Full-batch gradient descent on the logistic loss; returns the new model and last loss."""
    weight = model["classifier.weight"].astype(np.float64)
    target = labels.reshape(-1).astype(np.float64)
    loss = float("nan")
    for _ in range(epochs):
        probability = 1 / (1 + np.exp(-(features @ weight)))
        eps = 1e-7
        loss = -np.mean(
            target * np.log(probability + eps) + (1 - target) * np.log(1 - probability + eps)
        )
        weight -= learning_rate * features.T @ (probability - target) / len(target)
    return {"classifier.weight": weight.astype(np.float32)}, float(loss)


def dice(model, features, labels) -> float:
    predicted = (features @ model["classifier.weight"].astype(np.float64)) > 0
    truth = labels.reshape(-1)
    overlap = np.logical_and(predicted, truth).sum()
    return float(2 * overlap / max(predicted.sum() + truth.sum(), 1))


def held_out_set(seed: int):
    parts = [synthetic_images(m, 4, seed + 1000 + i) for i, m in enumerate(MICROSCOPES)]
    images = np.concatenate([p[0] for p in parts])
    masks = np.concatenate([p[1] for p in parts])
    return pixel_features(images), masks


# --- one colleague ------------------------------------------------------------------------


def send_framed(connection, kind: FrameKind, sender: str, recipients, payload, transfer_id):
    header = pack_frame_header(kind, transfer_id, 0, 1, len(payload), sender, recipients)
    connection.send(header + bytes(payload))


def receive_json(connection, wanted: str, timeout: float) -> dict:
    """The next text message of type `wanted` (others are skipped); TimeoutError if none."""
    deadline = time.monotonic() + timeout
    while True:
        message = connection.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(message, str):
            decoded = json.loads(message)
            if decoded.get("type") == "error":
                raise RuntimeError(f"relay error: {decoded['payload'].get('error')}")
            if decoded.get("type") == wanted:
                return decoded


def receive_framed(connection, kind: FrameKind, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        message = connection.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(message, bytes):
            header = unpack_frame_header(message)
            if header is not None and header.kind == kind:
                return header, memoryview(message)[header.header_size :]


def colleague(index: int, args, relay_url: str, codes, results) -> None:
    """One simulated colleague: join (or create) the room, train, share, report."""
    from websockets.sync.client import connect

    user_id = f"colleague-{index + 1}"
    microscope = MICROSCOPES[index % len(MICROSCOPES)]
    images, masks = synthetic_images(microscope, args.images, seed=args.seed * 100 + index)
    features = pixel_features(images)
    num_samples = len(images)
    host_id = "colleague-1"
    with connect(relay_url, max_size=None) as connection:
        identity = {"user_id": user_id, "display_name": f"Colleague {index + 1}"}
        if index == 0:
            connection.send(json.dumps({"type": "create_room", "payload": identity}))
            code = receive_json(connection, "room_created", 10)["payload"]["room_code"]
            for _ in range(args.colleagues - 1):
                codes.put(code)
            members = 1
            while members < args.colleagues:
                joined = receive_json(connection, "user_joined", 30)
                members = len(joined["payload"]["users"])
            # Everyone is in: tell them which model is trained, which also starts round 1.
            info = {"type": "session_info", "payload": {"architecture": "pixel-logistic"}}
            connection.send(json.dumps(info))
        else:
            code = codes.get(timeout=30)
            payload = dict(identity, room_code=code.lower())
            connection.send(json.dumps({"type": "join_room", "payload": payload}))
            receive_json(connection, "room_joined", 10)
            receive_json(connection, "session_info", 60)
        results.put(("joined", index, code))

        model = new_model()
        for round_number in range(1, args.rounds + 1):
            started = time.monotonic()
            model, loss = train(model, features, masks, args.epochs)
            wire = serialize_weights(model, epoch=round_number, loss=loss, num_samples=num_samples)
            if index == 0:
                states, sample_counts = [model], [num_samples]
                while len(states) < args.colleagues:
                    _, body = receive_framed(connection, FrameKind.WEIGHTS, 60)
                    weights, metadata = decode_weights(body)
                    states.append(weights)
                    sample_counts.append(metadata["num_samples"])
                model = weighted_average(states, sample_counts)
                global_wire = serialize_weights(model)
                connection.send(
                    json.dumps(
                        {
                            "type": "global_model",
                            "payload": {
                                "aggregation_round": round_number,
                                "contributor_count": len(states),
                            },
                        }
                    )
                )
                send_framed(
                    connection, FrameKind.GLOBAL_MODEL, user_id, (), global_wire, round_number
                )
            else:
                push = {
                    "type": "weights_push",
                    "payload": {
                        "user_id": user_id,
                        "epoch": round_number,
                        "loss": loss,
                        "num_samples": num_samples,
                    },
                    "to": [host_id],
                }
                connection.send(json.dumps(push))
                send_framed(connection, FrameKind.WEIGHTS, user_id, [host_id], wire, round_number)
                _, body = receive_framed(connection, FrameKind.GLOBAL_MODEL, 60)
                model = {k: np.array(v) for k, v in deserialize_weights(body).items()}
            results.put(("round", index, round_number, loss, len(wire), time.monotonic() - started))

        test_features, test_masks = held_out_set(args.seed)
        local_only, _ = train(new_model(), features, masks, args.epochs * args.rounds)
        results.put(
            (
                "final",
                index,
                dice(local_only, test_features, test_masks),
                dice(model, test_features, test_masks),
            )
        )


# --- the whole demo -----------------------------------------------------------------------


def run(args) -> int:
    context = multiprocessing.get_context("spawn")
    codes, results = context.Queue(), context.Queue()
    with RelayProcess() as relay:
        print(f"relay listening on {relay.url}  (metrics: {relay.http_url}/metrics)")
        processes = [
            context.Process(target=colleague, args=(i, args, relay.url + "/ws", codes, results))
            for i in range(args.colleagues)
        ]
        for process in processes:
            process.start()
        finals: dict[int, tuple[float, float]] = {}
        round_losses: dict[int, list[float]] = {}
        deadline = time.monotonic() + args.timeout
        try:
            while len(finals) < args.colleagues:
                try:
                    event = results.get(timeout=1)
                except queue.Empty:
                    stopped = not all(p.is_alive() for p in processes)
                    if time.monotonic() > deadline or stopped:
                        print("demo failed: a colleague stopped or the demo timed out")
                        return 1
                    continue
                if event[0] == "joined":
                    print(f"  colleague {event[1] + 1} is in room {event[2]}")
                elif event[0] == "round":
                    _, index, number, loss, size, seconds = event
                    round_losses.setdefault(number, []).append(loss)
                    if len(round_losses[number]) == args.colleagues:
                        mean = sum(round_losses[number]) / args.colleagues
                        print(
                            f"  round {number:2d}/{args.rounds}: mean local loss {mean:.4f}, "
                            f"{size} bytes of weights per push, {seconds * 1000:.0f} ms"
                        )
                elif event[0] == "final":
                    finals[event[1]] = (event[2], event[3])
        finally:
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
    print("\nheld-out Dice (images from every microscope):")
    print(f"  {'colleague':<12}{'local only':>12}{'shared':>10}")
    for index in sorted(finals):
        local, shared = finals[index]
        print(f"  {index + 1:<12}{local:>12.3f}{shared:>10.3f}")
    better = all(shared > local for local, shared in finals.values())
    print("\nthe shared model beats every local-only model" if better else "\nno clear win")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--colleagues",
        type=int,
        default=3,
        choices=range(2, 9),
        metavar="2..8",
        help="simulated colleagues",
    )
    parser.add_argument("--rounds", type=int, default=8, help="rounds of weight sharing")
    parser.add_argument("--epochs", type=int, default=25, help="local epochs per round")
    parser.add_argument("--images", type=int, default=6, help="images per colleague")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="give up after seconds")
