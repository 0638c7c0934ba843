"""Training one member's U-Net on its own images, on the CPU.

A Trainer is deterministic for a given seed and thread count: the model starts from
`init_seed` (the same for every member by default: FedAvg averages models that started alike)
and the batch order comes from `seed`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .data import SegmentationData
from .settings import TRAINING_DEFAULTS
from .unet import DEFAULT_BASE_CHANNELS, DEFAULT_DEPTH, architecture_name, build_unet

log = logging.getLogger(__name__)

#: Seed of the initial weights shared by all members of a room.
DEFAULT_INIT_SEED = 1234

# The initial weights come from torch's process-wide generator: two Trainers built at once on
# two threads (several app windows in one process) would interleave its draws and start from
# different models, which FedAvg then averages into a poor first round.
_INIT_LOCK = threading.Lock()

#: A global model that changed at least this share of a weight tensor's values replaced the
#: tensor (whole float16 and q8 globals change every value): Adam's state for it is dropped.
#: A topk global changes about 1% of a tensor; the rest is where this member left it, and
#: Adam's state for it still applies (load_global).
REPLACED_SHARE = 0.5


def dice_score(logits_or_probs: Any, masks: Any, threshold: float = 0.5) -> float:
    """Mean per-image Dice of the thresholded prediction against binary masks, in [0, 1].

    Values outside [0, 1] are taken as logits (passed through a sigmoid). An image whose mask
    and prediction are both empty scores 1."""
    predictions = torch.as_tensor(
        np.asarray(logits_or_probs) if not torch.is_tensor(logits_or_probs) else logits_or_probs
    )
    targets = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
    predictions = predictions.detach().float().cpu()
    targets = targets.detach().float().cpu()
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and masks {tuple(targets.shape)} differ"
        )
    if predictions.numel() == 0:
        raise ValueError("no images to score")
    if predictions.min() < 0 or predictions.max() > 1:
        predictions = torch.sigmoid(predictions)
    if predictions.ndim < 3:
        predictions, targets = predictions[None], targets[None]
    predicted = (predictions > threshold).flatten(1).float()
    truth = (targets > 0.5).flatten(1).float()
    overlap = (predicted * truth).sum(1)
    total = predicted.sum(1) + truth.sum(1)
    per_image = torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))
    return float(per_image.mean())


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice: BCE learns every pixel, Dice keeps small cells
    from being drowned out by the background."""
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    probabilities = torch.sigmoid(logits).flatten(1)
    truth = masks.flatten(1)
    overlap = (probabilities * truth).sum(1)
    soft_dice = (2 * overlap + 1) / (probabilities.sum(1) + truth.sum(1) + 1)
    return bce + (1 - soft_dice).mean()


class Trainer:
    """One member's model, optimizer and data."""

    def __init__(
        self,
        data: SegmentationData,
        *,
        seed: int = 0,
        learning_rate: float = TRAINING_DEFAULTS.learning_rate,
        batch_size: int = TRAINING_DEFAULTS.batch_size,
        base_channels: int = DEFAULT_BASE_CHANNELS,
        depth: int = DEFAULT_DEPTH,
        init_seed: int = DEFAULT_INIT_SEED,
        augment: bool = True,
    ):
        if len(data) == 0:
            raise ValueError("no training images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.data = data
        self.num_samples = len(data)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.augment = augment
        self.architecture = architecture_name(base_channels=base_channels, depth=depth)
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = build_unet(base_channels=base_channels, depth=depth)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self._last_loaded = self._parameters_copy()  # what load_global compares a global with
        self._rng = np.random.default_rng(seed)
        self._images = torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32))
        self._masks = torch.from_numpy(np.ascontiguousarray(data.masks, dtype=np.float32))
        self.epochs_trained = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def train_epoch(
        self,
        progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> float:
        """One pass over the data in a seeded random order; returns the mean batch loss (NaN
        if `stop` was set before the first batch). `progress(batch, batches)` after each
        batch; `stop` is checked before each batch."""
        order = self._rng.permutation(self.num_samples)
        batches = self.batches_per_epoch
        losses = []
        self.model.train()
        for batch in range(batches):
            if stop is not None and stop.is_set():
                break
            index = torch.from_numpy(order[batch * self.batch_size : (batch + 1) * self.batch_size])
            images, masks = self._images[index], self._masks[index]
            if self.augment:
                images, masks = self._flip_and_rotate(images, masks)
            self.optimizer.zero_grad(set_to_none=True)
            loss = segmentation_loss(self.model(images), masks)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            if progress is not None:
                progress(batch + 1, batches)
        if len(losses) == batches:
            self.epochs_trained += 1
        return float(np.mean(losses)) if losses else float("nan")

    def _flip_and_rotate(self, images: torch.Tensor, masks: torch.Tensor):
        """The same random flip and quarter turn for a batch's images and masks (cells have
        no orientation; a square batch only, rotations would change H x W otherwise)."""
        turns = int(self._rng.integers(4)) if images.shape[-1] == images.shape[-2] else 0
        flip = bool(self._rng.integers(2))
        if flip:
            images, masks = images.flip(-1), masks.flip(-1)
        if turns:
            images, masks = images.rot90(turns, (-2, -1)), masks.rot90(turns, (-2, -1))
        return images.contiguous(), masks.contiguous()

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Cell probabilities, (N, 1, H, W), for images in [0, 1]."""
        inputs = (
            torch.as_tensor(np.asarray(images, dtype=np.float32))
            if not torch.is_tensor(images)
            else images.float()
        )
        if inputs.ndim == 2:
            inputs = inputs[None, None]
        elif inputs.ndim == 3:
            inputs = inputs[:, None]
        self.model.eval()
        outputs = [
            torch.sigmoid(self.model(inputs[start : start + batch_size]))
            for start in range(0, len(inputs), batch_size)
        ]
        return torch.cat(outputs) if outputs else torch.empty_like(inputs)

    def evaluate(self, data: SegmentationData) -> float:
        """Mean per-image Dice on `data` (see dice_score)."""
        return dice_score(self.predict(data.images), data.masks)

    @torch.no_grad()
    def loss_on(self, data: SegmentationData, batch_size: int = 32) -> float:
        """The training loss of the current weights on `data` (no training): how a global
        model does on this member's own images, next to the local training loss."""
        self.model.eval()
        images, masks = torch.as_tensor(data.images), torch.as_tensor(data.masks)
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = slice(start, start + batch_size)
            count = len(images[batch])
            total += segmentation_loss(self.model(images[batch]), masks[batch]).item() * count
        return total / len(images) if len(images) else float("nan")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights: detached CPU copies (training may go on)."""
        return {key: value.detach().cpu().clone() for key, value in self.model.state_dict().items()}

    def load_state_dict(self, weights: Mapping[str, Any], *, reset_optimizer: bool = True) -> None:
        """Loads weights given as torch tensors or numpy arrays (e.g. a global model); a
        missing, extra or misshapen entry raises ValueError naming it (nothing changes then).

        `reset_optimizer` clears Adam's moment estimates: they describe the path of the
        weights being replaced, and carrying them into the next round makes FedAvg swing
        from round to round (measured: tests/training/training_simulation.py)."""
        own = self.model.state_dict()
        missing = [key for key in own if key not in weights]
        extra = [key for key in weights if key not in own]
        if missing or extra:
            raise ValueError(
                f"weights do not fit {self.architecture}: missing {missing[:3]}, unexpected "
                f"{extra[:3]}"
            )
        converted = {}
        for key, reference in own.items():
            value = weights[key]
            tensor = value if torch.is_tensor(value) else torch.from_numpy(np.array(value))
            if tuple(tensor.shape) != tuple(reference.shape):
                raise ValueError(
                    f"weights do not fit {self.architecture}: {key!r} has shape "
                    f"{tuple(tensor.shape)}, expected {tuple(reference.shape)}"
                )
            converted[key] = tensor.detach().to(dtype=reference.dtype, device="cpu")
        self.model.load_state_dict(converted)
        self._last_loaded = self._parameters_copy()
        if reset_optimizer:
            self.optimizer.state.clear()

    def load_global(self, weights: Mapping[str, Any]) -> None:
        """Loads a round's global model (as load_state_dict, ValueError alike) and keeps what
        of Adam's state still describes the weights, compared with the weights loaded last
        (the previous global, or the initial weights):

        - a tensor the global changed mostly (REPLACED_SHARE; whole float16 and q8-delta
          globals change every value) starts afresh, as with load_state_dict;
        - in a tensor it changed in a few values (a topk global: 1% of them), those values'
          momentum is zeroed (it pushed towards where the global now put them: deep gradient
          compression's momentum masking) and the rest of the state carries on. Restarting
          Adam there made every round's first steps move all of those values by about the
          learning rate again, a dense update of which topk sends 1%; carried on, the final
          Dice of topk came 0.01-0.025 closer to float16's (docs/training.md)."""
        previous = self._last_loaded
        self.load_state_dict(weights, reset_optimizer=False)
        for name, parameter in self.model.named_parameters():
            state = self.optimizer.state.get(parameter)
            if not state:
                continue
            changed = parameter.detach() != previous[name]
            if float(changed.float().mean()) >= REPLACED_SHARE:
                del self.optimizer.state[parameter]
            else:
                state["exp_avg"][changed] = 0

    def _parameters_copy(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters()}
