"""Session recordings: written as sessions run, verified and replayed by auditors.

record.py  the format: canonical bytes, hash chain, signed seal (pure)
writer.py  SessionRecorder / RecorderFactory: one file per session
verify.py  verify(path, public_keys) -> Report
replay.py  list_sessions, find_recording, replay
config.py  the [audit] section of pgwarden.toml

See docs/audit.md.
"""

from .config import AuditConfig
from .record import is_introspection
from .verify import Report, verify
from .writer import RecorderFactory, SessionRecorder, new_session_id

__all__ = ["AuditConfig", "RecorderFactory", "Report", "SessionRecorder", "is_introspection",
           "new_session_id", "verify"]
