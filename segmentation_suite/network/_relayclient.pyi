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
    data: Buffer, reference: _Reference | None = None, float16_values: bool = False, /
) -> tuple[Literal["numpy", "torch"], dict[str, Any], Block, list[_TensorPlace], bytes | None]: ...
def _subtract_rebuilt(
    data: Buffer, reference: _Reference, residuals: dict[str, Buffer], /
) -> None: ...
def _message_reference(data: Buffer, /) -> bytes | None: ...
def _reference_id(tensors: list[tuple[str, str, tuple[int, ...], Buffer]], /) -> bytes: ...
def _fedavg_accumulate(sums: Buffer, values: Buffer, weight: float, first: bool, /) -> None: ...
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
    def set_transfer_key(self, key: Buffer | None, room: str = "", epoch: int = 0) -> None:
        """Private rooms: transfers starting from now are opened with this group key as their
        chunks land (Transfer.opened / Transfer.open_error); None: received as sent."""
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

# --- Private-room cryptography (csrc/crypto_binding.c; docs/security.md). Use
# segmentation_suite.network.private_room rather than these directly.

SEALED_AES_256_GCM: int
SEALED_CHACHA20_POLY1305: int
SEALED_HEADER_BYTES: int
SEALED_TAG_BYTES: int
SEALED_DEFAULT_SEGMENT_SIZE: int
SEALED_PREFERRED_ALGORITHM: int

class CPaceMismatch(ValueError):
    """The key exchange failed its confirmation: the code's secret part does not match."""

@final
class CPaceSession:
    """One CPace (ristretto255, SHA-512) run with explicit key confirmation; sans-I/O."""

    def __init__(
        self,
        role: Literal["initiator", "responder"],
        secret: Buffer,
        room: str,
        initiator_id: str,
        responder_id: str,
        ad: Buffer = ...,
    ) -> None: ...
    @property
    def state(self) -> Literal["start", "sent_share", "await_confirm", "confirmed", "failed"]: ...
    def start(self) -> bytes: ...
    def receive(self, message: Buffer, /) -> bytes | None: ...
    def derive_key(self, label: str, /) -> bytes: ...

@final
class SealedOpener:
    """Opens one sealed transfer in place while its chunks arrive."""

    def __init__(
        self,
        key: Buffer,
        room: str,
        sender: str,
        transfer_id: int,
        kind: int,
        epoch: int,
        sealed_len: int,
        *,
        digest: bool = False,
    ) -> None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def length(self) -> int | None: ...
    def feed(self, sealed: Buffer, available: int, /) -> bool: ...
    def finish(self) -> bytes | None: ...

def _cpace_generator(prs: Buffer, ci: Buffer, sid: Buffer, /) -> tuple[bytes, bytes]: ...
def _cpace_scalar_mult_vfy(y: Buffer, point: Buffer, /) -> bytes: ...
def _cpace_isk(
    sid: Buffer, k: Buffer, ya: Buffer, ada: Buffer, yb: Buffer, adb: Buffer, /
) -> bytes: ...
def group_key_generate() -> bytes: ...
def group_key_wrap(
    wrap_key: Buffer,
    room: str,
    host_id: str,
    member_id: str,
    epoch: int,
    key: Buffer,
    sign_pk: Buffer,
    /,
) -> bytes: ...
def group_key_unwrap(
    wrap_key: Buffer, room: str, host_id: str, member_id: str, epoch: int, wrapped: Buffer, /
) -> tuple[bytes, bytes]: ...
def sealed_size(length: int, segment_size: int = ..., /) -> int: ...

@final
class SealingTransfer:
    """A transfer sealed while it is sent (seal_while_sending): send_chunked() seals each chunk
    just before it sends it; viewing its bytes seals the rest first."""

    @property
    def sealed_bytes(self) -> int: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

def seal_while_sending(
    key: Buffer,
    room: str,
    sender: str,
    transfer_id: int,
    kind: int,
    epoch: int,
    plaintext: Buffer,
    sealed: Buffer,
    *,
    segment_size: int = ...,
) -> SealingTransfer: ...
def sealed_header(sealed: Buffer, /) -> dict[str, int]: ...
def seal(
    key: Buffer,
    room: str,
    sender: str,
    transfer_id: int,
    kind: int,
    epoch: int,
    plaintext: Buffer,
    sealed: Buffer,
    *,
    algorithm: int = 0,
    segment_size: int = ...,
    digest: bool = False,
) -> bytes | None: ...
def open_in_place(
    key: Buffer,
    room: str,
    sender: str,
    transfer_id: int,
    kind: int,
    epoch: int,
    sealed: Buffer,
    *,
    digest: bool = False,
) -> tuple[int, int] | tuple[int, int, bytes]: ...
def _aead_raw(
    algorithm: int,
    encrypt: bool,
    key: Buffer,
    nonce: Buffer,
    ad: Buffer,
    data: Buffer,
    tag: Buffer,
    /,
) -> None: ...
def sign_keypair(seed: Buffer = ..., /) -> tuple[bytes, bytes]: ...
def sign_detached(secret_key: Buffer, message: Buffer, /) -> bytes: ...
def sign_verify(public_key: Buffer, message: Buffer, signature: Buffer, /) -> None: ...
