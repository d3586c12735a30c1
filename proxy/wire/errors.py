"""Protocol errors, split by who is to blame (h11's Local/Remote split).

- ClientProtocolError: the client sent something the protocol does not allow.
  The session answers with a FATAL ErrorResponse (SQLSTATE 08P01) and closes.
- ServerProtocolError: the upstream server did. The client gets a FATAL too,
  but the message says the upstream misbehaved.

Any other exception escaping the codec is a bug in pgwarden.
"""


class ProtocolError(Exception):
    sqlstate = "08P01"

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate


class ClientProtocolError(ProtocolError):
    """The client broke the protocol."""


class ServerProtocolError(ProtocolError):
    """The upstream server broke the protocol (or closed unexpectedly)."""
