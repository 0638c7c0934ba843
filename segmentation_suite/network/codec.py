"""Weight codec: state dicts to and from the data-only format of docs/weights-format.md.

`serialize_weights` turns a dict of numpy arrays or torch tensors (CPU or CUDA) into one
msgpack message; `deserialize_weights` and `decode_weights` turn untrusted bytes back into
arrays of the kind that was sent, raising ValueError on anything malformed. Nothing is ever
unpickled. The byte work (fp16/bf16 conversion, msgpack) is in the C extension, with the GIL
released; this module only maps Python objects to buffers and back.

Drop-in for the original app: `serialize_weights(state_dict)` sends float32 as float16 and
`deserialize_weights(data)` gives float32 torch tensors back, as before.

Deltas for slow links: `serialize_weights(update, compression="q8-delta", reference=REF)`
sends update - REF as blockwise int8 ("topk": the largest 1%), and
`deserialize_weights(data, reference=REF)` rebuilds REF + delta; the message names REF by its
id, so a missing or different reference is a ValueError. `ErrorFeedback` carries what the
compression dropped into the sender's next message.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _relayclient

FORMAT_VERSION: int = _relayclient.FORMAT_VERSION
#: The version of messages that carry deltas against a reference model.
DELTA_FORMAT_VERSION: int = _relayclient.DELTA_FORMAT_VERSION
#: What float32 and float64 tensors travel as; "float32" means lossless (float64 stays float64).
WIRE_DTYPES = ("float16", "bfloat16", "float32")
#: compression= choices and the wire encoding of float32/float64 deltas each uses.
COMPRESSIONS = {"q8-delta": "q8", "topk": "topk"}
#: The share of each tensor's values that "topk" keeps (by magnitude of the delta).
DEFAULT_TOPK_FRACTION = 0.01
#: "topk" sends tensors of at most this many dimensions (biases, normalization scales and
#: shifts, BatchNorm running statistics) as q8 instead: each value acts on a whole channel, so
#: the 1% of them topk would keep leaves channels off by their whole update, and they are few
#: (0.1% of the U-Net's values; 2.4% of the demo's small model).
TOPK_DENSE_MAX_NDIM = 1

# numpy has no bfloat16: its bits travel through numpy as uint16.
_NUMPY_DTYPES = {
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype(np.uint8),
    "int8": np.dtype(np.int8),
    "uint16": np.dtype(np.uint16),
    "int16": np.dtype(np.int16),
    "uint32": np.dtype(np.uint32),
    "int32": np.dtype(np.int32),
    "uint64": np.dtype(np.uint64),
    "int64": np.dtype(np.int64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_WIDE_FLOATS = ("float32", "float64")


def serialize_weights(
    weights: Mapping[str, Any],
    use_half_precision: bool | None = None,
    *,
    epoch: int | None = None,
    loss: float | None = None,
    num_samples: int | None = None,
    architecture: str | None = None,
    wire_dtype: str = "float16",
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = None,
    reference: Mapping[str, Any] | None = None,
    topk_fraction: float = DEFAULT_TOPK_FRACTION,
) -> memoryview:
    """Encodes `weights` (name -> numpy array or torch tensor) into one message.

    float32 and float64 tensors travel as `wire_dtype`: "float16" (default), "bfloat16", or
    "float32" for lossless (float64 then stays float64). Every other dtype travels exactly.
    `use_half_precision` is the original app's switch (True = float16, False = lossless).
    `metadata` is extra JSON-like data (str keys; None, bool, int, float, str, bytes, lists,
    dicts). Returns a read-only memoryview of the encoded message, without a copy.

    `compression` "q8-delta" or "topk" sends each float32/float64 tensor as its difference
    from the same-named tensor of `reference` (same dtype and shape): "q8-delta" as int8 with
    one float16 scale per 256 values, "topk" only the `topk_fraction` largest differences (int8,
    one scale per tensor; tensors of one dimension or none as q8). Other tensors travel whole
    and exact. The receiver needs the same reference (see deserialize_weights); the message
    carries its id.
    """
    encoder_input = _encoder_input(
        weights,
        use_half_precision,
        epoch,
        loss,
        num_samples,
        architecture,
        wire_dtype,
        metadata,
        compression,
        reference,
        topk_fraction,
    )
    return memoryview(_relayclient._encode(*encoder_input))


def encoded_size(
    weights: Mapping[str, Any],
    *,
    epoch: int | None = None,
    loss: float | None = None,
    num_samples: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """len(serialize_weights(weights, ...)) of a whole float16 message, found without
    converting a value; raises what serialize_weights raises for the same weights (the size
    of a host's own push, which goes into its round without being encoded)."""
    encoder_input = _encoder_input(
        weights,
        None,
        epoch,
        loss,
        num_samples,
        None,
        "float16",
        metadata,
        None,
        None,
        DEFAULT_TOPK_FRACTION,
    )
    return _relayclient._encode(*encoder_input, True)


def _encoder_input(
    weights: Mapping[str, Any],
    use_half_precision: bool | None,
    epoch: int | None,
    loss: float | None,
    num_samples: int | None,
    architecture: str | None,
    wire_dtype: str,
    metadata: Mapping[str, Any] | None,
    compression: str | None,
    reference: Mapping[str, Any] | None,
    topk_fraction: float,
) -> tuple[list, str, dict, bool]:
    """serialize_weights' arguments checked and turned into _relayclient._encode's."""
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be None or one of {tuple(COMPRESSIONS)}, not {compression!r}"
        )
    if compression is not None and reference is None:
        raise ValueError(f"compression={compression!r} sends a delta and needs reference=")
    if not 0 < topk_fraction <= 1:
        raise ValueError(f"topk_fraction must be in (0, 1], not {topk_fraction}")
    if use_half_precision is not None:
        wire_dtype = "float16" if use_half_precision else "float32"
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {WIRE_DTYPES}, not {wire_dtype!r}")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name to tensor, not {type(weights)}")
    torch = sys.modules.get("torch")  # a torch tensor can only exist if torch is imported
    entries = []
    any_torch = False
    for name, value in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, not {type(name).__name__} ({name!r})")
        is_torch = torch is not None and isinstance(value, torch.Tensor)
        any_torch |= is_torch
        dtype, array = _torch_to_array(name, value, torch) if is_torch else _to_array(name, value)
        if compression is not None and dtype in _WIDE_FLOATS:
            base = _reference_array(reference, name, dtype, array.shape, torch)
            wire = COMPRESSIONS[compression]
            if wire == "topk" and array.ndim <= TOPK_DENSE_MAX_NDIM:
                wire = "q8"
            keep = math.ceil(array.size * topk_fraction) if wire == "topk" else 0
            entries.append((name, dtype, wire, array.shape, array, base, keep))
            continue
        wire = wire_dtype if dtype in _WIDE_FLOATS and wire_dtype != "float32" else dtype
        entries.append((name, dtype, wire, array.shape, array))
    fields = {
        "epoch": _optional(epoch, int, "epoch"),
        "loss": _optional(loss, float, "loss"),
        "num_samples": _optional(num_samples, int, "num_samples"),
        "architecture": _optional(architecture, str, "architecture"),
        "extra": dict(metadata) if metadata is not None else None,
    }
    if fields["num_samples"] is not None and fields["num_samples"] < 0:
        raise ValueError(f"num_samples must not be negative, not {num_samples}")
    return entries, "torch" if any_torch else "numpy", fields, compression is not None


def reference_id(weights: Mapping[str, Any]) -> bytes:
    """The 16-byte id a delta message against `weights` names (its float32/float64 tensors,
    in order): what a receiver holds, in a form cheap to compare and send."""
    torch = sys.modules.get("torch")
    parts = []
    for name, value in weights.items():
        is_torch = torch is not None and isinstance(value, torch.Tensor)
        dtype, array = _torch_to_array(name, value, torch) if is_torch else _to_array(name, value)
        if dtype in _WIDE_FLOATS:
            parts.append((name, dtype, array.shape, array))
    return _relayclient._reference_id(parts)


def message_reference_id(data: Any) -> bytes | None:
    """The id of the reference model a message is a delta against (None for a whole one);
    validates the message (ValueError if malformed) but needs no reference."""
    return _relayclient._message_reference(data)


def decode_weights(
    data: Any,
    *,
    as_torch: bool | None = None,
    reference: Mapping[str, Any] | None = None,
    float16_values: bool = False,
) -> tuple[dict, dict]:
    """Decodes a message into (weights, metadata).

    `data` is any bytes-like object. Arrays come back as the kind that was sent (torch
    tensors on the CPU, or numpy arrays; numpy when torch is not installed) unless
    `as_torch` says otherwise (True needs torch), in message order
    and with the dtype that was sent (float32 sent as float16 comes back float32).
    Converted tensors share one new block of memory; tensors that needed no conversion view
    `data` itself when it is writable (e.g. a bytearray) and are copied otherwise, so every
    returned array is writable. numpy output of bfloat16 tensors is float32 (exact).
    metadata has the keys epoch, loss, num_samples, architecture, extra, kind and
    format_version, and reference_id (bytes, for a delta message; else None).
    Raises ValueError naming the problem and its offset on bad input.

    A delta message (serialize_weights(..., compression=...)) is rebuilt as `reference` +
    delta; `reference` must be the model it was made against (the same tensors bit for bit,
    checked by id), else ValueError says it is missing or different. A whole message ignores
    `reference`, so a receiver may always pass the model it holds.

    `float16_values` gives float32/float64 tensors rounded to float16 values (in their dtype),
    the same bits as sending them again as float16 and decoding that, in the same pass: what
    session members hold of a global model that came as a delta (deltas.py).
    """
    references = None
    if reference is not None:
        references = _reference_buffers(reference)
    kind, fields, block, entries, message_reference = _relayclient._decode(
        data, references, float16_values
    )
    torch = None
    if as_torch:
        torch = _import_torch()
    elif as_torch is None and kind == "torch":
        # A receiver without torch still gets the weights, as numpy arrays.
        with contextlib.suppress(ImportError):
            torch = _import_torch()
    weights = {}
    for name, dtype, shape, in_block, offset in entries:
        np_dtype = _NUMPY_DTYPES[dtype]
        count = math.prod(shape)
        if count == 0:
            array = np.empty(shape, dtype=np_dtype)
        else:
            source = block if in_block else data
            array = np.frombuffer(source, dtype=np_dtype, count=count, offset=offset)
            array = array.reshape(shape)
        if torch is not None:
            tensor = torch.from_numpy(array)
            weights[name] = tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor
        elif dtype == "bfloat16":
            weights[name] = (array.astype(np.uint32) << 16).view(np.float32)
        else:
            weights[name] = array
    metadata = {
        "epoch": fields.get("epoch"),
        "loss": fields.get("loss"),
        "num_samples": fields.get("num_samples"),
        "architecture": fields.get("architecture"),
        "extra": fields.get("extra") or {},
        "kind": kind,
        "format_version": FORMAT_VERSION if message_reference is None else DELTA_FORMAT_VERSION,
        "reference_id": message_reference,
    }
    return weights, metadata


def deserialize_weights(
    data: Any,
    *,
    as_torch: bool | None = None,
    reference: Mapping[str, Any] | None = None,
    float16_values: bool = False,
) -> dict:
    """Decodes a message into its weights only; see decode_weights."""
    return decode_weights(
        data, as_torch=as_torch, reference=reference, float16_values=float16_values
    )[0]


class ErrorFeedback:
    """Error feedback for one sender of compressed deltas: what compression dropped from one
    message (the residual) is added to the next one, so that errors do not build up over
    rounds and small changes are sent once they add up.

    Every sender of deltas needs it. A member pushing its model against each new global model:
    what its last push dropped is not in the next global (the host never received it). The
    host sending its chain of global models: its members train on from the global they
    rebuilt, so what a delta dropped is not in the next round's average either (and with topk
    that is most of the round's progress, the host's own training included).

        feedback = ErrorFeedback("q8-delta")
        data = feedback.encode(model.state_dict(), reference=global_model, epoch=3)

    The residual is kept as float32/float64 numpy arrays, by tensor name; reset() forgets it.
    """

    def __init__(self, compression: str, *, topk_fraction: float = DEFAULT_TOPK_FRACTION):
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {tuple(COMPRESSIONS)}, not {compression!r}"
            )
        self.compression = compression
        self.topk_fraction = topk_fraction
        self._residual: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self._residual = {}

    def residual_norm(self) -> float:
        """L2 norm of what the receiver has not got yet (0.0 after reset())."""
        return math.sqrt(sum(float(np.dot(r.ravel(), r.ravel())) for r in self._residual.values()))

    def encode(
        self, weights: Mapping[str, Any], *, reference: Mapping[str, Any], **fields: Any
    ) -> memoryview:
        """serialize_weights(weights + residual, compression=..., reference=reference, **fields),
        keeping the new residual (what the receiver will not get) for the next call.

        The new residual is made in C without decoding the message into a model-sized
        temporary (_subtract_rebuilt: the same values decode_weights would rebuild)."""
        data = self._compensate_and_serialize(weights, reference, fields)
        _relayclient._subtract_rebuilt(data, _reference_buffers(reference), self._residual)
        return data

    def encode_and_rebuild(
        self,
        weights: Mapping[str, Any],
        *,
        reference: Mapping[str, Any],
        float16_values: bool = False,
        **fields: Any,
    ) -> tuple[memoryview, dict]:
        """As encode(), and also returns what the receiver rebuilds (the kind of tensors sent).

        `float16_values`: the receiver keeps what it rebuilt rounded to float16 values (the
        host's members do, decode_weights(float16_values=True)); the residual is taken against
        that, so that this rounding too is made up for later instead of lost."""
        data = self._compensate_and_serialize(weights, reference, fields)
        torch = sys.modules.get("torch")
        as_torch = any(torch is not None and isinstance(v, torch.Tensor) for v in weights.values())
        received, _ = decode_weights(
            data, as_torch=as_torch, reference=reference, float16_values=float16_values
        )
        for name, residual in self._residual.items():
            value = received[name]
            got = _torch_to_array(name, value, torch)[1] if as_torch else value
            residual -= got  # what the receiver did not get
        return data, received

    def _compensate_and_serialize(
        self, weights: Mapping[str, Any], reference: Mapping[str, Any], fields: dict
    ) -> memoryview:
        """Adds `weights` to the residual (which then holds what this message sends) and
        serializes that. The residual's memory is reused in place from call to call: a fresh
        124 MB array per message costs more in page faults than the quantization itself."""
        compensated: dict[str, Any] = {}
        torch = sys.modules.get("torch")
        for name, value in weights.items():
            is_torch = torch is not None and isinstance(value, torch.Tensor)
            dtype, array = (
                _torch_to_array(name, value, torch) if is_torch else _to_array(name, value)
            )
            residual = self._residual.get(name)
            if dtype in _WIDE_FLOATS:
                if (
                    residual is None
                    or residual.shape != array.shape
                    or residual.dtype != array.dtype
                ):
                    residual = np.zeros_like(array)
                residual += array  # now weights + residual: what this message sends
                self._residual[name] = residual
                array = residual
            compensated[name] = array
        for name in [n for n in self._residual if n not in compensated]:
            del self._residual[name]
        return serialize_weights(
            compensated,
            compression=self.compression,
            reference=reference,
            topk_fraction=self.topk_fraction,
            **fields,
        )


def _reference_array(
    reference: Mapping[str, Any], name: str, dtype: str, shape: tuple, torch: Any
) -> np.ndarray:
    """The reference tensor a delta of `name` is taken against, as a C-contiguous array."""
    if name not in reference:
        raise ValueError(f"the reference has no tensor {name!r} to take the delta against")
    value = reference[name]
    is_torch = torch is not None and isinstance(value, torch.Tensor)
    base_dtype, base = _torch_to_array(name, value, torch) if is_torch else _to_array(name, value)
    if base_dtype != dtype or base.shape != tuple(shape):
        raise ValueError(
            f"reference tensor {name!r} is {base_dtype} {base.shape}, "
            f"the update {dtype} {tuple(shape)}"
        )
    return base


def _reference_buffers(reference: Mapping[str, Any]) -> dict[str, tuple]:
    """name -> (dtype, shape, buffer) of the reference's float tensors, for _decode."""
    if not isinstance(reference, Mapping):
        raise TypeError(f"reference must be a mapping of name to tensor, not {type(reference)}")
    torch = sys.modules.get("torch")
    buffers = {}
    for name, value in reference.items():
        is_torch = torch is not None and isinstance(value, torch.Tensor)
        dtype, array = _torch_to_array(name, value, torch) if is_torch else _to_array(name, value)
        if dtype in _WIDE_FLOATS:
            buffers[name] = (dtype, tuple(array.shape), array)
    return buffers


def _optional(value: Any, kind: type, field: str) -> Any:
    if value is None:
        return None
    if kind is float and isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, kind):
        return value
    raise TypeError(f"{field} must be {kind.__name__} or None, not {type(value).__name__}")


def _to_array(name: str, value: Any) -> tuple[str, np.ndarray]:
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(
            f"tensor {name!r} is a {type(value).__name__}; expected a numpy array or torch tensor"
        )
    array = np.asarray(value)
    dtype = array.dtype.name
    if dtype == "bfloat16":  # ml_dtypes' bfloat16
        array = array.view(np.uint16)
    elif dtype not in _NUMPY_DTYPES or array.dtype != _NUMPY_DTYPES[dtype]:
        if array.dtype.kind in "biuf" and array.dtype.newbyteorder("=").name in _NUMPY_DTYPES:
            array = array.astype(array.dtype.newbyteorder("="))  # big-endian input
            dtype = array.dtype.name
        else:
            raise TypeError(f"tensor {name!r} has unsupported dtype {array.dtype}")
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return dtype, array if array.flags.c_contiguous else array.copy(order="C")


def _torch_to_array(name: str, tensor: Any, torch: Any) -> tuple[str, np.ndarray]:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _NUMPY_DTYPES:
        raise TypeError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
    tensor = tensor.contiguous()
    if dtype == "bfloat16":
        tensor = tensor.view(torch.uint16)
    # resolve_conj/resolve_neg: numpy() refuses tensors with lazy conjugate/negative bits
    return dtype, tensor.resolve_neg().numpy()


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise ImportError("as_torch=True needs torch, which is not installed") from error
    return torch
