"""Where this machine can build the optional C extensions, they are built and in use.

Each compiled part falls back to its Python reference when it is missing or fails
its import-time self-check, and the tests of a compiled part skip when it is not
in use.  That keeps pgwarden running without a compiler; it must not also hide a
build that broke (or a self-check that now refuses the C code) on a machine that
has one, where every differential test would then skip.  ``pip install -e .``
(the README's commands) builds them in place.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import sysconfig
from pathlib import Path

import pytest

PARTS = [
    ("proxy.wire.server_stream", "SCANNER_IMPL"),
    ("proxy.wire.decode", "BIND_IMPL"),
    ("proxy.wire.framing", "WALK_IMPL"),
    ("proxy.net.gate", "STATEMENT_WALK_IMPL"),
    ("proxy.wire.server_stream", "DELIVER_IMPL"),
    ("policy.sql.masked", "KEY_IMPL"),
    ("proxy.session.track", "TRACKER_IMPL"),
    ("proxy.audit.record", "LINE_IMPL"),
    ("proxy.audit.writer", "SINK_IMPL"),
    ("proxy.audit.writer", "RELEASE_IMPL"),
]


def can_build() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


pytestmark = pytest.mark.skipif(not can_build(), reason="no C compiler or Python headers: the Python references run")


@pytest.mark.parametrize("module, attr", PARTS, ids=[a for _, a in PARTS])
def test_each_compiled_part_is_in_use(module, attr):
    assert getattr(importlib.import_module(module), attr) == "c", (
        f"{module}.{attr} fell back to Python on a machine with a C compiler: "
        "the extension did not build, or failed its self-check (pip install -e . builds them)")


def test_the_record_digest_calls_libcrypto_where_hashlib_uses_it():
    from proxy.audit import record
    if "openssl" not in hashlib.sha256.__module__ + getattr(hashlib.sha256, "__name__", ""):
        pytest.skip("hashlib's SHA-256 is not OpenSSL's here")
    assert record.DIGEST_IMPL == "libcrypto"
