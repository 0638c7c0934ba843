"""Does compressing the weights cost accuracy? The demo's federated training with whole float16
models, q8 deltas and topk deltas: final held-out Dice of the shared model per method and seed.

The demo's setup (segmentation_suite.training: DEMO_SETTINGS, one simulated microscope per
colleague, held-out images of every microscope), 3 colleagues, 10 rounds, 3 seeds by default.
Colleague 1 is the host and trains too. Runs in one process, without the network: each round
goes through the same session objects SyncClient uses (segmentation_suite.network.deltas:
MemberDeltas with its error feedback for the pushes, GlobalModelLedger for the global model,
FedAvgAggregator), so every push and global model is encoded and decoded exactly as on the
wire; only the transport is left out. The host's own push goes whole (float16) into its round,
and the host trains on from the global it publishes (what its members hold), as in the session.
Every colleague loads a global with Trainer.load_global, as FederatedTraining does (Adam's state
carries on where the global left the weights as they were: docs/training.md).

A fourth row, float32 (lossless pushes and globals, not a session mode), is the noise floor:
training is chaotic enough that any change of float16-rounding size moves the final Dice of a
seed by about as much as the differences between the methods.

    .venv/bin/python bench/bench_compression_accuracy.py [--seeds 0,1,2] [--rounds 10]
        [--colleagues 3] [--check]

--check exits 1 if a target of issue 14 is missed: q8-delta's final Dice within 0.01 of
float16's on every seed, topk's within 0.03. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from segmentation_suite.network.aggregator import FedAvgAggregator
from segmentation_suite.network.codec import decode_weights, serialize_weights
from segmentation_suite.network.deltas import GlobalModelLedger, MemberDeltas
from segmentation_suite.training.data import held_out_set, member_shard
from segmentation_suite.training.settings import DEMO_SETTINGS
from segmentation_suite.training.trainer import Trainer

METHODS = {"fp16": None, "q8-delta": "q8-delta", "topk": "topk"}
#: Not a session mode: every push and global whole and lossless (float32). How far its Dice
#: lands from fp16's shows how much a perturbation of float16-rounding size moves the result.
NOISE_FLOOR = "float32"
TARGETS = {"q8-delta": 0.01, "topk": 0.03}


def as_float16_values(weights: dict) -> dict:
    """What FederatedTraining loads: the global rounded to float16 values (match_wire_precision)."""
    out = {}
    for name, value in weights.items():
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if array.dtype in (np.float32, np.float64):
            array = array.astype(np.float16).astype(array.dtype)
        out[name] = array
    return out


def run(method: str, seed: int, rounds: int, colleagues: int) -> tuple[float, int]:
    """Final held-out Dice of the shared model (the published global every colleague holds),
    and the bytes the members' pushes and the global models took on the wire."""
    lossless = method == NOISE_FLOOR
    compression = None if lossless else METHODS[method]
    wire = "float32" if lossless else "float16"
    settings = DEMO_SETTINGS
    held_out = held_out_set(settings.held_out_images, seed=10_000 + seed, size=settings.image_size)
    trainers = [
        Trainer(
            member_shard(i, settings.images_per_member, seed=seed, size=settings.image_size),
            seed=seed,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
        )
        for i in range(colleagues)
    ]
    members = {f"member{i}": MemberDeltas(compression) for i in range(1, colleagues)}
    ledger = GlobalModelLedger(compression)
    aggregator = FedAvgAggregator()
    wire_bytes = 0
    global_weights = None
    for round_number in range(1, rounds + 1):
        for trainer in trainers:
            for _ in range(settings.epochs_per_round):
                trainer.train_epoch()
        # the host's own push: whole float16, straight into its round
        own = serialize_weights(
            trainers[0].state_dict(), num_samples=trainers[0].num_samples, wire_dtype=wire
        )
        aggregator.add_update(decode_weights(own)[0], trainers[0].num_samples, "host")
        for index, (name, member) in enumerate(members.items(), start=1):
            trainer = trainers[index]
            if lossless:
                data = serialize_weights(trainer.state_dict(), wire_dtype="float32")
            else:
                data = member.encode_push(trainer.state_dict(), num_samples=trainer.num_samples)
            wire_bytes += len(data)
            weights, metadata = decode_weights(data, reference=ledger.reference_for(data))
            ledger.note_push(name, metadata)
            aggregator.add_update(weights, trainer.num_samples, name)
        global_weights = aggregator.aggregate()
        if lossless:
            wire_bytes += len(serialize_weights(global_weights, wire_dtype="float32")) * len(
                members
            )
            for trainer in trainers:
                trainer.load_global(global_weights)
            continue
        canonical, sends = ledger.publish(
            global_weights, list(members), metadata={"aggregation_round": round_number}
        )
        for data, recipients in sends:
            for name in recipients:
                wire_bytes += len(data)
                members[name].receive_global(data)
        trainers[0].load_global(as_float16_values(canonical))
        for index, member in enumerate(members.values(), start=1):
            trainers[index].load_global(as_float16_values(member.held))
    return trainers[0].evaluate(held_out), wire_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--colleagues", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    dice: dict[tuple[str, int], float] = {}
    traffic: dict[str, int] = {}
    for seed in seeds:
        for method in [*METHODS, NOISE_FLOOR]:
            started = time.monotonic()
            dice[method, seed], traffic[method] = run(method, seed, args.rounds, args.colleagues)
            print(
                f"seed {seed} {method}: Dice {dice[method, seed]:.4f} "
                f"({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    print(
        f"\nFinal held-out Dice of the shared model: {args.colleagues} colleagues, "
        f"{args.rounds} rounds of {DEMO_SETTINGS.epochs_per_round} epochs (demo settings)\n"
    )
    header = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | worst vs fp16 | wire MB, one run |"
    )
    print(header)
    print("|---|" + "---:|" * (len(seeds) + 2))
    checks = []
    for method in [*METHODS, NOISE_FLOOR]:
        gaps = [dice[method, s] - dice["fp16", s] for s in seeds]
        worst = min(gaps)
        cells = " | ".join(f"{dice[method, s]:.4f}" for s in seeds)
        label = f"{method} (noise floor)" if method == NOISE_FLOOR else method
        print(f"| {label} | {cells} | {worst:+.4f} | {traffic[method] / 1e6:.2f} |")
        if method in TARGETS:
            checks.append(
                (
                    f"{method} within {TARGETS[method]} of fp16 on every seed",
                    -worst <= TARGETS[method],
                )
            )
    print()
    for text, ok in checks:
        print(f"{'met   ' if ok else 'MISSED'} {text}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
