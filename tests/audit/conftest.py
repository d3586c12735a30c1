"""Recording fixtures: a key, a recordings directory, a factory, a sample session.

``key`` / ``keys``   an Ed25519 recording key and ``{"rec": its public half}``
``clock``            a settable clock (epoch seconds), given to the factory
``factory``          ``RecorderFactory`` writing under ``tmp_path/recordings``
``sample``           the path of a finished sample session (``write_sample``)
``key_files``        ``rec.key.pem`` / ``rec.pub.pem`` on disk, and a
                     ``pgwarden.toml`` with an [audit] section naming them
``line_impl``        who builds statement lines, "python" or "c" (record.LINE_IMPL);
                     modules that write recordings use it for every test
                     (``pytestmark = pytest.mark.usefixtures("line_impl")``)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.audit import record as R
from proxy.audit.config import AuditConfig
from proxy.audit.writer import RecorderFactory, SessionRecorder

T0 = 1_767_225_600.0          # 2026-01-01T00:00:00Z

INTROSPECTION_SQL = ("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c "
                     "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.relname OPERATOR(pg_catalog.~) '^(accounts)$' COLLATE pg_catalog.default "
                     "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;")


LINE_IMPLS = [
    pytest.param("python", id="python"),
    pytest.param("c", id="c", marks=pytest.mark.skipif(R.statement_line_c is None,
                                                       reason="proxy.audit._recline not built")),
]


@pytest.fixture(scope="module", params=LINE_IMPLS)
def line_impl(request):
    """Run the module's tests with each statement-line builder (module scope: hypothesis-friendly)."""
    saved = R.LINE_IMPL
    R.LINE_IMPL = request.param
    yield request.param
    R.LINE_IMPL = saved


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(key):
    return {"rec": key.public_key()}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rec_dir(tmp_path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
def factory(rec_dir, key, clock) -> RecorderFactory:
    return RecorderFactory(AuditConfig(dir=rec_dir, signing_kid="rec"), key, clock=clock)


START = dict(client_addr="10.0.0.7:51234", tls="TLSv1.3", user="alice", database="appdb",
             scope="read", reason="INC-42 stuck payments", ticket="INC-42", approver="bob",
             backend_pid=4242)


def write_sample(rec: SessionRecorder, clock: Clock, *, end: bool = True) -> SessionRecorder:
    """A session with every kind of record: 6 statements (1 introspection,
    1 denied, 1 error), a COPY, an expiry warning, the end."""
    rec.start(**START)
    t = clock.advance(1.0)
    clock.advance(0.002)
    rec.statement("select id, name from accounts where id = $1", params=["7"], statement_class="read",
                  rule="read.select", started=t, tag="SELECT 1", via="execute")
    t = clock.advance(0.5)
    clock.advance(0.001)
    rec.statement(INTROSPECTION_SQL, statement_class="read", rule="read.select", started=t, tag="SELECT 1")
    t = clock.advance(2.0)
    rec.statement("delete from accounts", statement_class="write", decision="denied", rule="write.delete",
                  started=t, duration=0.0, sqlstate="42501",
                  message="pgwarden: DELETE is write class; this grant's scope is read")
    t = clock.advance(1.0)
    clock.advance(0.003)
    rec.statement("select * from nope", statement_class="read", rule="read.select", started=t,
                  sqlstate="42P01", message='relation "nope" does not exist')
    t = clock.advance(1.0)
    clock.advance(0.05)
    rec.copy("out", 1234, rows=10)
    rec.statement("copy accounts to stdout", statement_class="read", rule="read.copy_to", started=t,
                  tag="COPY 10")
    clock.advance(10.0)
    rec.notice("expiry_warning", "pgwarden: this grant expires in 60 s", remaining_s=60)
    t = clock.advance(1.0)
    clock.advance(0.001)
    rec.statement("select count(*) from accounts", statement_class="read", rule="read.select", started=t,
                  tag="SELECT 1")
    if end:
        clock.advance(1.0)
        rec.end("client_closed")
    return rec


@pytest.fixture
def sample(factory, clock) -> Path:
    rec = write_sample(factory.open(grant="g-123", session_id="20260101T000000-a1b2c3d4e5f6"), clock)
    return rec.path


@dataclass
class KeyFiles:
    dir: Path
    private: Path
    public: Path
    config: Path
    recordings: Path


@pytest.fixture
def key_files(tmp_path) -> KeyFiles:
    from proxy.keys import generate_keypair

    kp = generate_keypair(tmp_path / "keys", kid="rec")
    recordings = tmp_path / "recordings"
    config = tmp_path / "pgwarden.toml"
    config.write_text('[audit]\ndir = "recordings"\nsigning_key = "keys/rec.key.pem"\n'
                      'signing_kid = "rec"\npublic_keys = { rec = "keys/rec.pub.pem" }\n')
    return KeyFiles(tmp_path / "keys", kp.private_path, kp.public_path, config, recordings)
