"""Type stubs for the C extension segmentation_suite.network._relayclient.

Codec part (csrc/codec.c). Use segmentation_suite.network.codec rather than these private
functions; the transport's part of the module is declared below the codec's.
"""

from typing import Any, Literal, final

from typing_extensions import Buffer

FORMAT_VERSION: int
FORMAT_NAME: str
DATA_ALIGNMENT: int
DELTA_FORMAT_VERSION: int
Q8_BLOCK_SIZE: int

@final
class Block:
    """Memory of one encoded message, or of the tensors of one decoded message.

    Exposes the buffer protocol (read-only for an encoded message); len() is its size.
    Not constructible from Python.
    """

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

# (name, dtype, wire, shape, buffer) or, for wire "q8"/"topk", (..., reference buffer, kept)
_TensorSource = (
    tuple[str, str, str, tuple[int, ...], Buffer]
    | tuple[str, str, str, tuple[int, ...], Buffer, Buffer, int]
)
_TensorPlace = tuple[str, str, tuple[int, ...], bool, int]
# name -> (dtype, shape, buffer) of the reference model of a delta message
_Reference = dict[str, tuple[str, tuple[int, ...], Buffer]]

def _encode(
    tensors: list[_TensorSource], kind: str, metadata: dict[str, Any], delta: bool = False, /
) -> Block: ...
def _decode(
    data: Buffer, reference: _Reference | None = None, /
) -> tuple[Literal["numpy", "torch"], dict[str, Any], Block, list[_TensorPlace], bytes | None]: ...
def _message_reference(data: Buffer, /) -> bytes | None: ...
def _reference_id(tensors: list[tuple[str, str, tuple[int, ...], Buffer]], /) -> bytes: ...
def _set_simd(enabled: bool, /) -> None: ...
def _simd_path() -> Literal["f16c+avx2", "neon", "scalar"]: ...

# --- WebSocket transport and framing (csrc/transport_*.c, csrc/framing.c; docs/transport.md) ---

from collections.abc import Mapping, Sequence  # noqa: E402 (the transport part of the stubs)
from typing import NamedTuple  # noqa: E402

FRAME_KIND_WEIGHTS: int
FRAME_KIND_GLOBAL_MODEL: int
FRAME_KIND_TRAINING_IMAGE: int
FRAME_KIND_TRAINING_MASK: int
FRAME_KIND_OTHER: int
DEFAULT_CHUNK_SIZE: int

class ConnectionClosed(ConnectionError):
    """The connection is closed; code 1006 means it ended without a Close frame."""

    code: int | None
    reason: str | None

@final
class MessageBuffer:
    """The memory of one received binary message (recv() returns a memoryview of it)."""

    def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class FrameHeader(NamedTuple):
    kind: int
    transfer_id: int
    chunk_index: int
    chunk_count: int
    total_size: int
    sender: str
    recipients: tuple[str, ...]
    header_size: int

@final
class Connection:
    """A WebSocket client connection made by connect(); every method is thread-safe and waits
    with the GIL released."""

    @property
    def url(self) -> str: ...
    @property
    def open(self) -> bool: ...
    @property
    def close_code(self) -> int | None: ...
    @property
    def close_reason(self) -> str | None: ...
    def send_text(self, text: str, /) -> None: ...
    def send_binary(self, data: Buffer, /) -> None: ...
    def send_chunked(
        self,
        kind: int,
        transfer_id: int,
        sender: str,
        recipients: Sequence[str],
        data: Buffer,
        chunk_size: int = ...,
    ) -> int: ...
    def recv(self, timeout: float | None = None) -> tuple[bool, str | memoryview]: ...
    def close(self, code: int = 1000, reason: str = "", timeout: float | None = 5.0) -> None: ...
    def __enter__(self) -> Connection: ...
    def __exit__(self, *exc_info: object) -> bool: ...

def connect(
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    proxy: str | None = None,
    ca_file: str | None = None,
    server_hostname: str | None = None,
    connect_timeout: float | None = 10.0,
    ping_interval: float | None = 30.0,
    ping_timeout: float = 30.0,
    max_message_size: int = ...,
    receive_queue_size: int = ...,
) -> Connection: ...
def parse_frame_header(data: Buffer, /) -> FrameHeader | None: ...
def _shutdown(grace: float = 2.0, /) -> None: ...
