"""ZeroMQ transport: the wire format (wire), socket wrappers (sockets), the driver protocol (protocol) and the
remote robot as the policy sees it (robot_client)."""

from expo_robot.transport.protocol import EStopLatchedError, HandshakeError, PeerTimeoutError, RobotSpec
from expo_robot.transport.robot_client import Observation, RobotClient
from expo_robot.transport.sockets import Publisher, Puller, Pusher, Subscriber, TransportError, address
from expo_robot.transport.wire import PROTOCOL_VERSION, FieldSpec, Message, Schema, WireError, decode, encode

__all__ = [
    "PROTOCOL_VERSION",
    "EStopLatchedError",
    "FieldSpec",
    "HandshakeError",
    "Message",
    "Observation",
    "PeerTimeoutError",
    "Publisher",
    "Puller",
    "Pusher",
    "RobotClient",
    "RobotSpec",
    "Schema",
    "Subscriber",
    "TransportError",
    "WireError",
    "address",
    "decode",
    "encode",
]
