"""PostgreSQL v3 protocol constants, named after PostgreSQL's own PqMsg_* macros.

Message type bytes are ints (what indexing a bytes object gives) so the hot
path compares ints, never one-byte slices.
"""

# --- startup-phase request codes (no type byte; length + code) -------------
PROTOCOL_3_0 = 196608            # 3 << 16
CANCEL_REQUEST_CODE = 80877102   # 1234 << 16 | 5678
SSL_REQUEST_CODE = 80877103      # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104   # 1234 << 16 | 5680
TLS_HANDSHAKE_BYTE = 0x16        # first byte of a TLS record: direct TLS (PostgreSQL 17 sslnegotiation=direct)

MAX_STARTUP_PACKET = 10_000      # PostgreSQL's MAX_STARTUP_PACKET_LENGTH

# --- frontend (client -> server) -------------------------------------------
PqMsg_Bind = ord("B")
PqMsg_Close = ord("C")
PqMsg_Describe = ord("D")
PqMsg_Execute = ord("E")
PqMsg_FunctionCall = ord("F")
PqMsg_Flush = ord("H")
PqMsg_Parse = ord("P")
PqMsg_Query = ord("Q")
PqMsg_Sync = ord("S")
PqMsg_Terminate = ord("X")
PqMsg_CopyFail = ord("f")
PqMsg_PasswordMessage = ord("p")   # also SASLInitialResponse / SASLResponse / GSSResponse
PqMsg_CopyData = ord("d")
PqMsg_CopyDone = ord("c")

FRONTEND_TYPES = frozenset(
    {PqMsg_Bind, PqMsg_Close, PqMsg_Describe, PqMsg_Execute, PqMsg_FunctionCall, PqMsg_Flush,
     PqMsg_Parse, PqMsg_Query, PqMsg_Sync, PqMsg_Terminate, PqMsg_CopyFail, PqMsg_PasswordMessage,
     PqMsg_CopyData, PqMsg_CopyDone}
)

# --- backend (server -> client) --------------------------------------------
PqMsg_AuthenticationRequest = ord("R")
PqMsg_BackendKeyData = ord("K")
PqMsg_BindComplete = ord("2")
PqMsg_CloseComplete = ord("3")
PqMsg_CommandComplete = ord("C")
PqMsg_CopyInResponse = ord("G")
PqMsg_CopyOutResponse = ord("H")
PqMsg_CopyBothResponse = ord("W")
PqMsg_DataRow = ord("D")
PqMsg_EmptyQueryResponse = ord("I")
PqMsg_ErrorResponse = ord("E")
PqMsg_FunctionCallResponse = ord("V")
PqMsg_NegotiateProtocolVersion = ord("v")
PqMsg_NoData = ord("n")
PqMsg_NoticeResponse = ord("N")
PqMsg_NotificationResponse = ord("A")
PqMsg_ParameterDescription = ord("t")
PqMsg_ParameterStatus = ord("S")
PqMsg_ParseComplete = ord("1")
PqMsg_PortalSuspended = ord("s")
PqMsg_ReadyForQuery = ord("Z")
PqMsg_RowDescription = ord("T")

# --- authentication request codes ------------------------------------------
AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# --- SQLSTATEs pgwarden emits ----------------------------------------------
SQLSTATE_PROTOCOL_VIOLATION = "08P01"
SQLSTATE_CONNECTION_FAILURE = "08006"
SQLSTATE_CANNOT_CONNECT = "08001"
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
SQLSTATE_ADMIN_SHUTDOWN = "57P01"
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"
SQLSTATE_TOO_MANY_CONNECTIONS = "53300"
SQLSTATE_PROGRAM_LIMIT_EXCEEDED = "54000"
SQLSTATE_INTERNAL_ERROR = "XX000"
