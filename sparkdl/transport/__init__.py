"""Transports move bytes between the workers of one launch; they know nothing of training."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from sparkdl.config import TransportConfig
    from sparkdl.transport.base import Transport
    from sparkdl.transport.inproc import InProcessNetwork


def build_transport(
    config: TransportConfig, rank: int, world: int, host: str = "127.0.0.1", network: InProcessNetwork | None = None
) -> Transport:
    """The transport ``config`` names, for ``rank`` of ``world``; ``network`` links in-process transports."""
    from sparkdl.errors import ConfigError

    if config.name == "grpc":
        from sparkdl.transport.grpc import GrpcTransport

        return GrpcTransport(rank, world, host=host, max_message_bytes=config.max_message_bytes,
                             connect_timeout_s=config.connect_timeout_s, keepalive_s=config.keepalive_s)  # fmt: skip
    if config.name == "inproc":
        from sparkdl.transport.inproc import InProcessTransport

        if network is None:
            raise ConfigError("the inproc transport links threads of one process: use LocalLauncher (threads), "
                              "or --transport grpc on Spark")  # fmt: skip
        return InProcessTransport(rank, world, network)
    if config.name == "aeron":
        from sparkdl.transport.aeron import unavailable

        raise unavailable()
    raise ConfigError(f"unknown transport {config.name!r}")
