"""The networking client: sessions on a relay or a LAN, FedAvg, the weight codec and the
transport (docs/network-api.md, docs/protocol.md).

The names below are those of the original app's `segmentation_suite.network`, so an app
written for it keeps working with nothing changed but the install.
"""

from .aggregator import FedAvgAggregator, MomentumAggregator, blend_weights, weighted_average
from .client import HostClient, SyncClient
from .codec import decode_weights, deserialize_weights, serialize_weights
from .protocol import Message, MessageType
from .server import AggregationServer
from .session import (
    MultiUserSession,
    SessionManager,
    UserInfo,
    generate_session_id,
    generate_user_id,
    get_local_ip,
    get_session_manager,
)

__all__ = [
    "DEFAULT_RELAY_URL",
    "AggregationServer",
    "FedAvgAggregator",
    "HostClient",
    "Message",
    "MessageType",
    "MomentumAggregator",
    "MultiUserSession",
    "SessionManager",
    "SyncClient",
    "UserInfo",
    "blend_weights",
    "decode_weights",
    "deserialize_weights",
    "generate_session_id",
    "generate_user_id",
    "get_local_ip",
    "get_session_manager",
    "serialize_weights",
    "weighted_average",
]


def __getattr__(name: str) -> str | None:
    # DEFAULT_RELAY_URL reads the environment and config files: when first asked for, not at
    # import (relay_config.py).
    if name == "DEFAULT_RELAY_URL":
        from . import relay_config

        return relay_config.DEFAULT_RELAY_URL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
