"""decode_bind: the Bind body the session recording keeps, in C and in Python.

What the recording relies on: the portal, the statement and every parameter
(its bytes, or None for NULL, and whether it is binary) exactly as the
client sent them, and a ClientProtocolError for a malformed Bind, never
another exception and never a guess.

The compiled ``proxy.wire._scan.decode_bind`` must give the reference's
(``decode_bind_py``) answer whenever it answers, and answer (not None) for
every well-formed Bind; the public ``decode_bind`` falls back to the
reference when it does not.  The behaviour tests run once per
implementation, as tests/wire/test_server_stream.py does with its walks.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.wire import decode
from proxy.wire.decode import decode_bind_c, decode_bind_py
from proxy.wire.errors import ClientProtocolError

BINDS = [pytest.param(decode_bind_py, id="python")]
if decode_bind_c is not None:
    BINDS.append(pytest.param(decode.decode_bind, id="c"))     # C, falling back to the reference

needs_c = pytest.mark.skipif(decode_bind_c is None, reason="the C extension was not built")


def bind_body(portal: str | bytes, stmt: str | bytes, params: list, formats: list[int],
              result_formats: list[int] = (), nparams: int | None = None) -> bytes:
    """A Bind body; names given as bytes are used raw (to build invalid UTF-8)."""
    def cstr(s):
        return (s if isinstance(s, bytes) else s.encode("utf-8")) + b"\x00"
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", len(formats))
    body += b"".join(struct.pack("!H", f) for f in formats)
    body += struct.pack("!H", len(params) if nparams is None else nparams)
    for p in params:
        if isinstance(p, int):                   # a raw length word (negative sizes)
            body += struct.pack("!i", p)
        else:
            body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return body + struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!H", f) for f in result_formats)


PGBENCH = bind_body("", "P0_1", [b"12345"], [], [0])
FIVE = bind_body("", "P0_2", [b"12345", b"67", None, b"", b"-4711"], [], [0])


def reference(buf, start, end):
    """The reference's answer, or ClientProtocolError (the class) when it raises."""
    try:
        return decode_bind_py(buf, start, end)
    except ClientProtocolError:
        return ClientProtocolError


def assert_types(result):
    portal, stmt, params = result
    assert type(portal) is str and type(stmt) is str and type(params) is list
    for item in params:
        assert type(item) is tuple and len(item) == 2
        assert type(item[0]) in (bytes, type(None)) and type(item[1]) is bool


# -- behaviour, once per implementation --------------------------------------------------------------------------

@pytest.mark.parametrize("bind", BINDS)
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=8), st.sampled_from(["none", "one", "each"]))
def test_round_trip(bind, params, fmt):
    formats = {"none": [], "one": [1], "each": [i % 2 for i in range(len(params))]}[fmt]
    body = bind_body("p", "s", params, formats)
    buf = b"junk" + body + b"next message"
    portal, stmt, got = bind(buf, 4, 4 + len(body))
    assert (portal, stmt) == ("p", "s")
    expect_binary = [bool(formats[i]) if len(formats) > 1 else bool(formats[0]) if formats else False
                     for i in range(len(params))]
    assert got == list(zip(params, expect_binary))


@pytest.mark.parametrize("bind", BINDS)
def test_truncated_is_a_protocol_error(bind):
    body = bind_body("", "", [b"abcdef"], [])
    with pytest.raises(ClientProtocolError):
        bind(body + b"more", 0, len(body) - 6)


@pytest.mark.parametrize("bind", BINDS)
def test_pgbench_binds(bind):
    buf = bytearray(b"B\x00\x00\x00\x00" + PGBENCH + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00")
    assert bind(buf, 5, 5 + len(PGBENCH)) == ("", "P0_1", [(b"12345", False)])
    assert bind(bytearray(FIVE), 0, len(FIVE)) == (
        "", "P0_2", [(b"12345", False), (b"67", False), (None, False), (b"", False), (b"-4711", False)])


@pytest.mark.parametrize("bind", BINDS)
def test_named_portal_non_ascii_names_and_binary(bind):
    body = bind_body("curseur_é", "requête_1", [b"\x00\x00\x00\x2a", None], [1], [1, 0])
    result = bind(memoryview(body).tobytes(), 0, len(body))
    assert result == ("curseur_é", "requête_1", [(b"\x00\x00\x00\x2a", True), (None, True)])
    assert_types(result)


@pytest.mark.parametrize("bind", BINDS)
@pytest.mark.parametrize("body", [
    b"",                                                            # nothing at all
    b"portal-without-nul",
    b"\x00stmt-without-nul",
    b"\x00\x00",                                                    # no format count
    b"\x00\x00\x00\x02\x00\x00",                                    # two format codes, one present
    b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05abc",                 # value runs past the end
    bind_body("", "", [b"x", b"y", b"z"], [0, 1]),                  # fewer format codes than parameters
])
def test_malformed_is_a_protocol_error(bind, body):
    with pytest.raises(ClientProtocolError):
        bind(bytearray(body), 0, len(body))


@pytest.mark.parametrize("bind", BINDS)
def test_invalid_utf8_name_is_a_protocol_error(bind):
    body = bind_body(b"\xff", "s", [], [])
    with pytest.raises(ClientProtocolError):
        bind(body, 0, len(body))
    body = bind_body("", b"\xed\xa0\x80", [], [])               # an encoded surrogate
    with pytest.raises(ClientProtocolError):
        bind(body, 0, len(body))


def test_bind_impl_is_reported():
    assert decode.BIND_IMPL == ("c" if decode_bind_c is not None else "python")
    assert (decode.decode_bind is decode_bind_py) == (decode_bind_c is None)


# -- the compiled decoder against the reference ------------------------------------------------------------------

name = st.one_of(st.just(""), st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                                      max_size=12))
ascii_name = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=12)


@st.composite
def well_formed(draw, names=name):
    """A Bind PostgreSQL would decode: (body, expected result)."""
    params = draw(st.lists(st.one_of(st.none(), st.binary(max_size=24)), max_size=10))
    mode = draw(st.sampled_from(["none", "one", "each"]))
    if mode == "none":
        formats = []
    elif mode == "one":
        formats = [draw(st.integers(0, 1))]
    else:
        formats = draw(st.lists(st.integers(0, 1), min_size=len(params), max_size=len(params)))
    portal, stmt = draw(names), draw(names)
    result_formats = draw(st.lists(st.integers(0, 1), max_size=4))
    binary = [bool(formats[0] if len(formats) == 1 else formats[i]) if formats else False for i in range(len(params))]
    return bind_body(portal, stmt, params, formats, result_formats), (portal, stmt, list(zip(params, binary)))


@st.composite
def malformed(draw):
    """Mostly-Bind bodies broken in one of the ways a client (or a bug) could break them."""
    body, _ = draw(well_formed())
    how = draw(st.sampled_from(["truncate", "trailing", "overwrite", "negative", "fmt_mismatch", "fmt_code",
                                "bad_utf8", "huge_count", "random"]))
    if how == "truncate":
        return body[:draw(st.integers(0, max(len(body) - 1, 0)))]
    if how == "trailing":
        return body + draw(st.binary(min_size=1, max_size=6))
    if how == "overwrite":
        pos = draw(st.integers(0, max(len(body) - 1, 0)))
        patch = draw(st.binary(min_size=1, max_size=4))
        return (body[:pos] + patch + body[pos + len(patch):])[:len(body)]
    params = draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=1, max_size=5))
    if how == "negative":
        i = draw(st.integers(0, len(params) - 1))
        params[i] = draw(st.sampled_from([-2, -4, -1000, -2**31]))
        return bind_body("", "s", params, [])
    if how == "fmt_mismatch":
        n = draw(st.integers(2, 8).filter(lambda k: k != len(params)))
        return bind_body("", "s", params, [0] * n)
    if how == "fmt_code":
        code = draw(st.integers(2, 0xFFFF))
        which = draw(st.sampled_from(["one", "each", "result"]))
        if which == "one":
            return bind_body("", "s", params, [code])
        if which == "each":
            return bind_body("", "s", params, [code] + [0] * (len(params) - 1))
        return bind_body("", "s", params, [], [0, code])
    if how == "bad_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"a\x80b", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]))
        return bind_body(bad, "s", params, []) if draw(st.booleans()) else bind_body("", bad, params, [])
    if how == "huge_count":
        return bind_body("", "s", params, [], nparams=draw(st.integers(len(params) + 1, 0xFFFF)))
    return draw(st.binary(max_size=60))


def check(body: bytes, prefix: bytes, suffix: bytes):
    buf = bytearray(prefix + body + suffix)
    start, end = len(prefix), len(prefix) + len(body)
    ref = reference(buf, start, end)
    got = decode_bind_c(buf, start, end)
    if ref is ClientProtocolError:
        assert got is None
        with pytest.raises(ClientProtocolError):
            decode.decode_bind(buf, start, end)
    else:
        if got is not None:
            assert got == ref
            assert_types(got)
        assert decode.decode_bind(buf, start, end) == ref
    return got, ref


@needs_c
@settings(max_examples=1500, deadline=None)
@given(st.one_of(well_formed().map(lambda x: x[0]), malformed()), st.binary(max_size=8), st.binary(max_size=8))
@example(PGBENCH, b"", b"")
@example(PGBENCH[:-1], b"", PGBENCH[-1:])
def test_compiled_equals_the_reference_or_declines(body, prefix, suffix):
    check(body, prefix, suffix)


@needs_c
@settings(max_examples=500, deadline=None)
@given(well_formed(), st.binary(max_size=8), st.binary(max_size=8))
def test_compiled_decodes_every_well_formed_bind(case, prefix, suffix):
    body, expected = case
    got, ref = check(body, prefix, suffix)
    assert ref == expected
    assert got == expected


@needs_c
@settings(max_examples=300, deadline=None)
@given(well_formed(ascii_name))
def test_compiled_stays_inside_start_end(case):
    """Every cut of a well-formed Bind, followed in the buffer by the rest of it, is declined.

    Reading one byte past ``end`` would find exactly the bytes that make the
    message whole, so a decoder that strays past ``end`` answers here.
    """
    body, _ = case
    buf = bytearray(body)
    for cut in range(len(body)):
        assert decode_bind_c(buf, 0, cut) is None
    assert decode_bind_c(buf, 0, len(body)) is not None


# Run in a child process: a stray read is a segfault there, a failed test here.
GUARD_PAGE_SCRIPT = r"""
import ctypes, mmap, sys
from proxy.wire.decode import decode_bind_c
page = mmap.PAGESIZE
m = mmap.mmap(-1, 2 * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
if libc.mprotect(base + page, page, 0) != 0:          # PROT_NONE: the page after end
    sys.exit("mprotect failed")
answered = 0
for body in map(bytes.fromhex, sys.argv[1:]):
    for cut in range(len(body) + 1):                   # every prefix, ending right at the guard page
        m[page - cut:page] = body[:cut]
        answered += decode_bind_c(m, page - cut, page) is not None
print(answered)
"""


@needs_c
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through ctypes")
def test_compiled_never_reads_past_end():
    """Bodies cut anywhere, ending where the next page is unreadable: declined, never a crash."""
    bodies = [PGBENCH, FIVE, bind_body("curseur_é", "requête", [b"x" * 40, None, b""], [0, 1, 1], [1, 0]),
              bind_body("", "s", [b"abc", b"defgh"], [1], [0, 1, 0]),
              bind_body("", "s", [b"abc", -2, 0x7FFFFFFF], []),
              bind_body("", "s", [b"abc"], [], nparams=0xFFFF)]
    done = subprocess.run([sys.executable, "-c", GUARD_PAGE_SCRIPT, *(b.hex() for b in bodies)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert int(done.stdout) == 4            # only the four whole, well-formed bodies are answered


@needs_c
def test_compiled_declines_bad_offsets():
    buf = bytearray(b"xx" + PGBENCH)
    n = len(buf)
    for start, end in [(-1, n), (2, n + 1), (n, 2), (3, 2), (2, 2**70), (-2**70, n), (True, n)]:
        assert decode_bind_c(buf, start, end) is None
    assert decode_bind_c(buf, 2, 2.0 + len(PGBENCH)) is None
    assert decode_bind_c(buf, 2, n) == ("", "P0_1", [(b"12345", False)])


@needs_c
def test_compiled_rejects_bad_arguments():
    with pytest.raises(TypeError):
        decode_bind_c(PGBENCH, 0)
    with pytest.raises(TypeError):
        decode_bind_c(PGBENCH, 0, len(PGBENCH), 0)
    with pytest.raises(TypeError):
        decode_bind_c("not a buffer", 0, 3)
    with pytest.raises(TypeError):
        decode_bind_c(None, 0, 0)


@needs_c
def test_compiled_accepts_any_buffer_and_releases_it():
    buf = bytearray(PGBENCH)
    expected = ("", "P0_1", [(b"12345", False)])
    assert decode_bind_c(bytes(buf), 0, len(buf)) == expected
    assert decode_bind_c(memoryview(buf), 0, len(buf)) == expected
    assert decode_bind_c(buf, 0, len(buf) - 1) is None
    buf += b"more"                   # would raise BufferError if a path kept the buffer exported
    del buf[:4]


@needs_c
def test_compiled_does_not_leak():
    """Millions of calls a day: answered, declined and non-ASCII paths must free what they allocate."""
    cases = [(bytearray(PGBENCH), len(PGBENCH)), (bytearray(FIVE), len(FIVE)),
             (bytearray(FIVE), len(FIVE) - 3),                                      # declined mid-parameters
             (bytearray(bind_body("é", b"\xff", [], [])), 7),                      # declined name
             (bytearray(bind_body("curseur_é", "s", [b"x"] * 20, [1])), None)]
    for buf, end in cases:
        end = len(buf) if end is None else end
        for _ in range(1000):                # warm up caches and free lists
            decode_bind_c(buf, 0, end)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20000):
                decode_bind_c(buf, 0, end)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 4096, (bytes(buf), end, grown)
