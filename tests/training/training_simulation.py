"""FedAvg without a network: three members on their own microscopes, in one process.

Every round each federated member trains `epochs_per_round` epochs from the global model,
the weights are averaged weighted by num_samples (`weighted_average`, what the host's
FedAvgAggregator computes), rounded to float16 as the wire carries them, and loaded back.
Local-only members train the same epochs on the same shards and never share. Both are scored
on a held-out set drawn from all three microscopes.

Run as a script for the figures in the report:
    .venv/bin/python tests/training/training_simulation.py [--rounds 6] [--images 48] [--size 48]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from segmentation_suite.network.aggregator import weighted_average
from segmentation_suite.training import DEMO_SETTINGS, Trainer, held_out_set, member_shard


@dataclass
class SimulationResult:
    shared_dice: float
    local_dice: list[float]
    shared_per_round: list[float] = field(default_factory=list)
    shared_checksums: list[float] = field(default_factory=list)  # of the weights, per round
    shared_weights: dict | None = None
    shared_per_style: list[float] = field(default_factory=list)
    local_per_style: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0


def wire_rounded(weights: dict) -> dict:
    """float32 values as they arrive after the codec's default float16 transport."""
    return {
        k: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v
        for k, v in weights.items()
    }


def simulate(
    *,
    members: int = 3,
    images: int = DEMO_SETTINGS.images_per_member,
    size: int = DEMO_SETTINGS.image_size,
    held_out: int = DEMO_SETTINGS.held_out_images,
    rounds: int = DEMO_SETTINGS.rounds,
    epochs_per_round: int = DEMO_SETTINGS.epochs_per_round,
    learning_rate: float = DEMO_SETTINGS.learning_rate,
    batch_size: int = DEMO_SETTINGS.batch_size,
    seed: int = 0,
) -> SimulationResult:
    started = time.perf_counter()
    shards = [member_shard(m, images, seed=seed, size=size) for m in range(members)]
    evaluation = held_out_set(held_out, size=size, styles=members)
    options = {"learning_rate": learning_rate, "batch_size": batch_size}
    federated = [Trainer(shard, seed=seed + m, **options) for m, shard in enumerate(shards)]
    local = [Trainer(shard, seed=seed + m, **options) for m, shard in enumerate(shards)]
    shared_per_round, checksums = [], []
    for _ in range(rounds):
        for trainer in federated + local:
            for _ in range(epochs_per_round):
                trainer.train_epoch()
        pushes = [wire_rounded(t.state_dict()) for t in federated]
        global_weights = wire_rounded(weighted_average(pushes, [t.num_samples for t in federated]))
        for trainer in federated:
            trainer.load_state_dict(global_weights)
        shared_per_round.append(federated[0].evaluate(evaluation))
        checksums.append(sum(float(v.double().abs().sum()) for v in global_weights.values()))
    counts = [held_out // members + (1 if s < held_out % members else 0) for s in range(members)]
    starts = np.cumsum([0, *counts])
    styles = [evaluation.subset(range(starts[s], starts[s + 1])) for s in range(members)]
    return SimulationResult(
        shared_per_style=[federated[0].evaluate(part) for part in styles],
        local_per_style=[[t.evaluate(part) for part in styles] for t in local],
        shared_dice=shared_per_round[-1],
        local_dice=[t.evaluate(evaluation) for t in local],
        shared_per_round=shared_per_round,
        shared_checksums=checksums,
        shared_weights=federated[0].state_dict(),
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEMO_SETTINGS.rounds)
    parser.add_argument("--epochs", type=int, default=DEMO_SETTINGS.epochs_per_round)
    parser.add_argument("--images", type=int, default=DEMO_SETTINGS.images_per_member)
    parser.add_argument("--size", type=int, default=DEMO_SETTINGS.image_size)
    parser.add_argument("--held-out", type=int, default=DEMO_SETTINGS.held_out_images)
    parser.add_argument("--lr", type=float, default=DEMO_SETTINGS.learning_rate)
    parser.add_argument("--batch-size", type=int, default=DEMO_SETTINGS.batch_size)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    result = simulate(
        members=args.members,
        batch_size=args.batch_size,
        images=args.images,
        size=args.size,
        held_out=args.held_out,
        rounds=args.rounds,
        epochs_per_round=args.epochs,
        learning_rate=args.lr,
        seed=args.seed,
    )
    print("shared Dice per round:", " ".join(f"{d:.3f}" for d in result.shared_per_round))
    print("local-only Dice:", " ".join(f"{d:.3f}" for d in result.local_dice))
    print("per microscope (held-out):")
    print("  shared     ", " ".join(f"{d:.3f}" for d in result.shared_per_style))
    for member, row in enumerate(result.local_per_style):
        print(f"  local {member}    ", " ".join(f"{d:.3f}" for d in row))
    margin = result.shared_dice - max(result.local_dice)
    print(f"shared {result.shared_dice:.3f}, margin over the best local {margin:+.3f}")
    print(
        f"wall time {result.seconds:.1f} s (1 thread), mean local {np.mean(result.local_dice):.3f}"
    )


if __name__ == "__main__":
    main()
