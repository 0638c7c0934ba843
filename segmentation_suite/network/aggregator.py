"""Combining model weights: federated averaging, server momentum, and local/global blending.

Works on state dicts (name -> tensor) of torch tensors or numpy arrays and gives back the
kind it was given, on the same device, in the same dtypes. Floating-point entries are summed
in float32 (float64 for float64 inputs), so float16 weights from the wire lose nothing more
in the averaging. Integer and boolean entries are counters or flags, not parameters (BatchNorm's
`num_batches_tracked`): averaging them has no meaning, so every operation here keeps the
largest value, which keeps a counter monotonic. torch is never imported by this module; a
torch tensor can only exist if the caller imported torch.
"""

from __future__ import annotations

import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _relayclient

StateDict = Mapping[str, Any]


# --- one entry of a state dict, whatever its kind -------------------------------------------


def _torch_module() -> Any:
    return sys.modules.get("torch")


def _is_torch(value: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(value, torch.Tensor)


def _category(key: str, value: Any) -> str:
    """ "float" or "integer" (which includes bool); TypeError for anything else."""
    if _is_torch(value):
        if value.is_complex():
            raise TypeError(f"{key!r}: complex tensors are not supported")
        return "float" if value.is_floating_point() else "integer"
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            return "float"
        if np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
            return "integer"
        raise TypeError(f"{key!r}: numpy dtype {value.dtype} is not supported")
    raise TypeError(
        f"{key!r}: expected a torch tensor or a numpy array, got {type(value).__name__}"
    )


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _like(value: Any, reference: Any) -> Any:
    """`value` as the kind of `reference` (torch on its device, or numpy); dtype unchanged."""
    if _is_torch(reference):
        torch = _torch_module()
        if not _is_torch(value):
            value = torch.from_numpy(np.asarray(value, order="C"))
        return value.detach().to(device=reference.device)
    if _is_torch(value):
        value = value.detach().cpu()
        if value.dtype == _torch_module().bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return value


def _accumulator_dtype(reference: Any) -> Any:
    if _is_torch(reference):
        torch = _torch_module()
        return torch.float64 if reference.dtype == torch.float64 else torch.float32
    return np.float64 if reference.dtype == np.float64 else np.float32


def _to_dtype(value: Any, dtype: Any) -> Any:
    """`value` in `dtype` (itself if already so), same kind. numpy arithmetic on 0-d arrays
    yields scalars; np.asarray turns them back into arrays, so callers always get arrays."""
    if _is_torch(value):
        return value.detach().to(dtype)
    return np.asarray(value).astype(dtype, copy=False)


def _copy(value: Any) -> Any:
    return value.detach().clone() if _is_torch(value) else value.copy()


def _maximum(a: Any, b: Any) -> Any:
    if _is_torch(a):
        return _torch_module().maximum(a, b.to(a.dtype))
    return np.asarray(np.maximum(a, b.astype(a.dtype, copy=False)))


def _result_container(reference: StateDict, items: list[tuple[str, Any]]) -> dict:
    """A plain dict, or an OrderedDict carrying torch's `_metadata` if the reference had it
    (load_state_dict reads module versions from it)."""
    metadata = getattr(reference, "_metadata", None)
    if metadata is None:
        return dict(items)
    result: OrderedDict = OrderedDict(items)
    result._metadata = metadata  # type: ignore[attr-defined]
    return result


def _check_same_layout(reference: StateDict, other: StateDict, what: str) -> None:
    """ValueError naming the first key that is missing, extra, of another shape, or float in
    one and integer in the other; TypeError for a value that is not an array."""
    if not isinstance(other, Mapping):
        raise TypeError(f"{what}: expected a dict of tensors or arrays, got {type(other).__name__}")
    missing = [k for k in reference if k not in other]
    if missing:
        raise ValueError(f"{what}: missing key {missing[0]!r} ({len(missing)} missing)")
    extra = [k for k in other if k not in reference]
    if extra:
        raise ValueError(f"{what}: unexpected key {extra[0]!r} ({len(extra)} unexpected)")
    for key, ref_value in reference.items():
        value = other[key]
        if _category(key, value) != _category(key, ref_value):
            raise ValueError(
                f"{what}: {key!r} is {_category(key, value)} but {_category(key, ref_value)} "
                "in the first state dict"
            )
        if _shape(value) != _shape(ref_value):
            raise ValueError(
                f"{what}: {key!r} has shape {_shape(value)}, expected {_shape(ref_value)}"
            )


def _check_weight(weight: Any, what: str) -> float:
    if isinstance(weight, (bool, str, bytes)):
        raise ValueError(f"{what}: expected a number, got {type(weight).__name__}")
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number, got {type(weight).__name__}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}: must be a finite number >= 0, got {weight!r}")
    return value


# --- federated averaging ---------------------------------------------------------------------


class _WeightedSum:
    """A running num_samples-weighted sum over state dicts of one layout: memory for one model
    (plus float32 sums) however many members contribute.

    The float sums of tensors on the CPU live in one flat buffer per accumulator dtype, filled
    in place by the extension's `_fedavg_accumulate` (a 124 MB model made 166 temporaries of
    its size per push, and torch's fresh allocations cost several times the arithmetic); the
    mean is divided in place in that buffer and handed out as views of it, so a round
    allocates the model's memory at most once (none when `blocks` has a past round's buffer
    that nobody holds any more)."""

    def __init__(self, reference: StateDict, blocks: _SumBlocks | None = None):
        for key, value in reference.items():
            _category(key, value)
        self.reference = reference
        self.sums: dict[str, Any] = {}  # key -> float sum (a view of a flat buffer on the CPU)
        self._filled: set[str] = set()
        self.total_weight = 0.0
        sizes: dict[Any, int] = {}
        cpu_floats = []
        for key, value in reference.items():
            if _category(key, value) == "float" and _on_cpu(value):
                dtype = np.dtype(_numpy_accumulator_dtype(value))
                cpu_floats.append((key, dtype, math.prod(_shape(value))))
                sizes[dtype] = sizes.get(dtype, 0) + cpu_floats[-1][2]
        blocks = blocks if blocks is not None else _SumBlocks(kept=0)
        buffers = {dtype: blocks.take(dtype, size) for dtype, size in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        for key, dtype, count in cpu_floats:
            start = offsets[dtype]
            self.sums[key] = buffers[dtype][start : start + count]
            offsets[dtype] = start + count

    def add(self, state: StateDict, weight: float, float16_values: bool = False) -> None:
        """Adds one state dict; the caller has checked its layout. `float16_values`: its
        float32/float64 entries count as their float16-rounded values (FedAvgAggregator)."""
        for key, ref_value in self.reference.items():
            held = self.sums.get(key)
            rounded = float16_values and _travels_as_float16(state[key])
            if isinstance(held, np.ndarray) and _category(key, ref_value) == "float":
                flat = _flat_numpy(state[key])
                self._accumulate(held, flat, weight, key in self._filled, rounded)
                self._filled.add(key)
                continue
            value = _like(_float16_rounded(state[key]) if rounded else state[key], ref_value)
            if _category(key, ref_value) == "integer":
                self.sums[key] = _copy(value) if held is None else _maximum(held, value)
            elif held is None:  # a float tensor on another device: torch, in place
                self.sums[key] = value.to(_accumulator_dtype(ref_value)) * weight
            else:
                held.add_(value.to(held.dtype), alpha=weight)
        self.total_weight += weight

    @staticmethod
    def _accumulate(
        held: np.ndarray, value: np.ndarray, weight: float, filled: bool, rounded: bool
    ) -> None:
        """held (+)= weight * value in held's dtype, in one pass in C with the GIL released once
        (numpy needs a temporary of the tensor's size, or a chunked loop that takes the GIL
        back at every chunk: slow whenever another Python thread runs); `rounded`: each value
        rounded to float16 first, in the same pass."""
        if value.dtype not in (np.float32, np.float64):
            value = value.astype(held.dtype)  # float16 or bfloat16-as-float32 inputs: rare
        _relayclient._fedavg_accumulate(held, value, weight, not filled, rounded)

    def mean(self) -> dict:
        """The weighted mean; the sums become it (the caller drops this object afterwards)."""
        if self.total_weight <= 0:
            raise ValueError("contribution weights sum to 0; no weighted mean exists")
        items = []
        for key, ref_value in self.reference.items():
            held = self.sums[key]
            if _category(key, ref_value) == "float":
                if isinstance(held, np.ndarray):
                    np.divide(held, self.total_weight, out=held)
                    held = _from_flat(held, ref_value)
                else:
                    held = _to_dtype(held / self.total_weight, ref_value.dtype)
            items.append((key, held))
        return _result_container(self.reference, items)


def _references_when_unshared() -> int:
    """What sys.getrefcount says of a list's item that nothing else refers to (measured, as
    interpreters differ in how they count the argument)."""
    held = [np.empty(0)]
    return sys.getrefcount(held[0])


_UNSHARED = _references_when_unshared()


class _SumBlocks:
    """Flat sum buffers of past rounds, to be filled again once nothing outside refers to them
    (no global weights of that round, no view of it, are alive). Fresh memory costs a page
    fault and zeroing per page: for a 124 MB model more than the additions that fill it. The
    global of the last round is usually still held (the client keeps it), so the buffer of the
    round before is the one that comes back: `kept` = 2 buffers, one model of memory more
    than allocating afresh. Not thread-safe (FedAvgAggregator calls it under its lock)."""

    def __init__(self, kept: int = 2):
        self.kept = kept
        self._blocks: list[np.ndarray] = []

    def take(self, dtype: np.dtype, size: int) -> np.ndarray:
        for index in range(len(self._blocks)):
            block = self._blocks[index]
            if block.dtype == dtype and block.size == size:
                del block  # only the list may refer to it now, if it is free
                if sys.getrefcount(self._blocks[index]) == _UNSHARED:
                    self._blocks.append(self._blocks.pop(index))  # newest last
                    return self._blocks[-1]
        block = np.empty(size, dtype)
        if self.kept:
            self._blocks.append(block)
            del self._blocks[: -self.kept]
        return block


def _on_cpu(value: Any) -> bool:
    return not _is_torch(value) or value.device.type == "cpu"


def _on_the_cpu(state: StateDict) -> StateDict:
    """`state` with tensors on other devices copied to the CPU (itself when none is)."""
    if not isinstance(state, Mapping) or all(_on_cpu(value) for value in state.values()):
        return state  # (not a dict: _check_same_layout says so)
    return _result_container(state, [(k, v if _on_cpu(v) else v.cpu()) for k, v in state.items()])


def _numpy_accumulator_dtype(reference: Any) -> Any:
    if _is_torch(reference):
        return np.float64 if reference.dtype == _torch_module().float64 else np.float32
    return np.float64 if reference.dtype == np.float64 else np.float32


def _flat_numpy(value: Any) -> np.ndarray:
    """`value` as a flat numpy array on the CPU, a view when it is one already."""
    if _is_torch(value):
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        if value.dtype == _torch_module().bfloat16:  # numpy has no bfloat16
            value = value.float()
        value = value.resolve_conj().resolve_neg().numpy()
    return np.asarray(value).reshape(-1)


def _travels_as_float16(value: Any) -> bool:
    """Whether a float16 wire rounds `value`: float32 and float64 entries (float16 and bfloat16
    travel exactly, as codec.py sends them)."""
    if _is_torch(value):
        torch = _torch_module()
        return value.dtype in (torch.float32, torch.float64)
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.dtype.itemsize >= 4


def _float16_rounded(value: Any) -> Any:
    """A float32/float64 entry's float16-rounded values, same kind and dtype, on the CPU
    (numpy rounds float64 to float16 directly; a cast through float32 could round twice)."""
    flat = _flat_numpy(value)
    rounded = flat.astype(np.float16).astype(flat.dtype).reshape(_shape(value))
    return _torch_module().from_numpy(rounded) if _is_torch(value) else rounded


def _from_flat(held: np.ndarray, reference: Any) -> Any:
    """A mean kept in a flat buffer, as the kind, shape and dtype of `reference` (a view of
    the buffer when the dtype is the accumulator's)."""
    shaped = held.reshape(_shape(reference))
    if _is_torch(reference):
        tensor = _torch_module().from_numpy(shaped)
        return tensor if tensor.dtype == reference.dtype else tensor.to(reference.dtype)
    return np.asarray(shaped.astype(reference.dtype, copy=False))


def weighted_average(states: list[StateDict], weights: list[float] | None = None) -> dict:
    """The weighted mean of state dicts (FedAvg); weights default to equal. The result has the
    kind, devices and dtypes of the first state dict; ValueError on mismatched layouts."""
    if not states:
        raise ValueError("states: need at least one state dict")
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"weights: {len(weights)} weights for {len(states)} state dicts")
    checked = [_check_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]
    for i, state in enumerate(states[1:], start=1):
        _check_same_layout(states[0], state, f"states[{i}]")
    total = _WeightedSum(states[0])
    for state, weight in zip(states, checked, strict=True):
        total.add(state, weight)
    return total.mean()


class FedAvgAggregator:
    """Federated averaging, weighted by each contribution's `num_samples`.

    Contributions are added as they arrive (`add_update`) and folded into a running sum, so
    memory does not grow with the number of members. `aggregate()` closes the round: it sets
    `global_weights` to the weighted mean and starts the next round. Thread-safe.
    """

    def __init__(self) -> None:
        self.global_weights: dict | None = None
        self.aggregation_round = 0
        self._lock = threading.Lock()
        self._pending: _WeightedSum | None = None
        self._update_count = 0
        self._contributors: list[str] = []
        self._sum_blocks = _SumBlocks()

    @property
    def update_count(self) -> int:
        """Contributions added since the last aggregation."""
        return self._update_count

    @property
    def contributors(self) -> tuple[str, ...]:
        """Named contributors of this round (those added with `contributor=`)."""
        return tuple(self._contributors)

    def add_update(
        self,
        weights: StateDict,
        contribution_weight: float = 1.0,
        contributor: str | None = None,
        *,
        float16_values: bool = False,
    ) -> None:
        """Adds one member's state dict. `contribution_weight` is its num_samples. A state dict
        that does not match the first of the round (or the global model) raises ValueError
        naming the key and changes nothing; so does a second update from one `contributor`.

        `float16_values`: the state dict counts as a float16 wire would deliver it (float32 and
        float64 entries rounded to float16 values, every tensor on the CPU), rounded in the
        same pass as the addition: the host's own push counts as its members' pushes do,
        without being encoded and decoded."""
        weight = _check_weight(contribution_weight, "contribution_weight")
        if float16_values:
            weights = _on_the_cpu(weights)
        with self._lock:
            if contributor is not None and contributor in self._contributors:
                raise ValueError(f"contributor {contributor!r} already contributed this round")
            reference = self._pending.reference if self._pending else self.global_weights
            if reference is not None:
                _check_same_layout(reference, weights, "update")
            if self._pending is None:
                self._pending = _WeightedSum(weights, self._sum_blocks)
            self._pending.add(weights, weight, float16_values)
            self._update_count += 1
            if contributor is not None:
                self._contributors.append(contributor)

    def aggregate(self, min_updates: int = 1) -> dict | None:
        """Closes the round if it has at least `min_updates` contributions: returns the new
        global weights (also kept in `global_weights`), or None and keeps waiting."""
        with self._lock:
            if self._pending is None or self._update_count < max(1, min_updates):
                return None
            average = self._pending.mean()
            self.global_weights = self._combine(average)
            self.aggregation_round += 1
            self._clear_round()
            return self.global_weights

    def _combine(self, average: dict) -> dict:
        """How a round's average becomes the global model; plain FedAvg takes it as is."""
        return average

    def set_global_weights(self, weights: StateDict) -> None:
        """Sets the global model (for example the host's initial model). The tensors are
        copied: a live `model.state_dict()` would otherwise change under the aggregator."""
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights: expected a dict, got {type(weights).__name__}")
        for key, value in weights.items():
            _category(key, value)
        copied = [(key, _copy(value)) for key, value in weights.items()]
        with self._lock:
            self.global_weights = _result_container(weights, copied)

    def reset(self) -> None:
        """Drops this round's contributions; the global model stays."""
        with self._lock:
            self._clear_round()

    def _clear_round(self) -> None:
        self._pending = None
        self._update_count = 0
        self._contributors = []


class MomentumAggregator(FedAvgAggregator):
    """FedAvg with server momentum (FedAvgM, Hsu et al. 2019, server learning rate 1).

    Each round, with g the global model and a the round's weighted mean:
    `v = momentum * v + (a - g)` and `g = g + v`. With momentum 0 this is plain FedAvg; with
    momentum near 1 the global model keeps moving in the direction of the past rounds, which
    damps the swings between members with different data. The first round (no global model
    yet) takes the average as is. Integer entries take the average's value (the maximum), with
    no velocity. `set_global_weights` restarts the velocity at zero.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {momentum!r}")
        super().__init__()
        self.momentum = float(momentum)
        self._velocity: dict[str, Any] = {}

    def set_global_weights(self, weights: StateDict) -> None:
        super().set_global_weights(weights)
        self._velocity = {}

    def _combine(self, average: dict) -> dict:
        previous = self.global_weights
        if previous is None:
            return average
        items = []
        for key, mean in average.items():
            if _category(key, mean) == "integer":
                items.append((key, mean))
                continue
            acc_dtype = _accumulator_dtype(mean)
            old = _to_dtype(_like(previous[key], mean), acc_dtype)
            step = _to_dtype(mean, acc_dtype) - old
            velocity = self._velocity.get(key)
            velocity = step if velocity is None else velocity * self.momentum + step
            self._velocity[key] = velocity
            items.append((key, _to_dtype(old + velocity, mean.dtype)))
        return _result_container(average, items)


# --- blending a local model with the global one ----------------------------------------------


def blend_weights(
    local_weights: StateDict, global_weights: StateDict, blend_ratio: float = 0.5
) -> dict:
    """`(1 - blend_ratio) * local + blend_ratio * global`, entry by entry: 0 keeps the local
    model, 1 takes the global one (both exactly). The result has the kind, devices and dtypes
    of `local_weights`; integer entries take the larger value. ValueError naming the key when
    the two do not have the same keys and shapes, or when blend_ratio is not in [0, 1]."""
    if isinstance(blend_ratio, bool) or not isinstance(blend_ratio, (int, float)):
        raise ValueError(f"blend_ratio: expected a number in [0, 1], got {blend_ratio!r}")
    if not 0.0 <= blend_ratio <= 1.0:
        raise ValueError(f"blend_ratio: must be in [0, 1], got {blend_ratio!r}")
    if not isinstance(local_weights, Mapping):
        raise TypeError(f"local_weights: expected a dict, got {type(local_weights).__name__}")
    for key, value in local_weights.items():
        _category(key, value)
    _check_same_layout(local_weights, global_weights, "global_weights")
    items = []
    for key, local in local_weights.items():
        other = _like(global_weights[key], local)
        if _category(key, local) == "integer":
            items.append((key, _maximum(local, other)))
        elif blend_ratio == 0.0:
            items.append((key, _copy(local)))
        elif blend_ratio == 1.0:
            items.append((key, _copy(_to_dtype(other, local.dtype))))
        else:
            acc_dtype = _accumulator_dtype(local)
            mixed = (
                _to_dtype(local, acc_dtype) * (1.0 - blend_ratio)
                + _to_dtype(other, acc_dtype) * blend_ratio
            )
            items.append((key, _to_dtype(mixed, local.dtype)))
    return _result_container(local_weights, items)
