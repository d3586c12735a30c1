"""benchmarks/classify_cost.py runs (a quick smoke run: the numbers are not checked, the shape is)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_classify_cost_quick_run():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "classify_cost.py"), "--quick", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and "statement" not in ln]
    assert len(lines) >= 8, proc.stdout
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        cold, verdict = float(cells[4]), float(cells[7])
        assert cold > verdict, ln                     # a cached verdict is cheaper than a cold classify
    assert any("masked" in ln for ln in proc.stdout.splitlines()[:1])


@pytest.fixture(scope="module")
def c_relay(tmp_path_factory):
    """benchmarks/c_relay.c built (skipped where there is no C compiler or libcrypto to build it)."""
    from benchmarks.env import build_c_relay

    exe = build_c_relay(tmp_path_factory.mktemp("c_relay") / "c_relay")
    if exe is None:
        pytest.skip("the C relay does not build here (no C compiler or no libcrypto headers)")
    return exe


@pytest.fixture(params=["python", "c"])
def relay_cmd(request):
    """The command of each bare relay: benchmarks/bare_relay.py and the C relay, same options."""
    if request.param == "python":
        return [sys.executable, "-m", "benchmarks.bare_relay"]
    return [str(request.getfixturevalue("c_relay"))]


def _through_bare_relay(*args: str, send: bytes, answer, expect: int, after=None, cmd=None,
                        pause: float = 0) -> bytes:
    """Send ``send`` through benchmarks/bare_relay.py (or the relay ``cmd`` runs), with ``args``, to
    a one-connection upstream that replies ``answer(data)``; return the first ``expect`` bytes the
    client gets back, read ``pause`` seconds after sending.  With ``after``, ``after(client,
    relay)`` runs then, with the client still connected (the socket and the relay's Popen); the
    relay is stopped last (SIGTERM)."""
    import socket
    import threading
    import time

    echo = socket.create_server(("127.0.0.1", 0))
    up_port = echo.getsockname()[1]

    def serve():
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(answer(data))
    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = cmd or [sys.executable, "-m", "benchmarks.bare_relay"]
    relay = subprocess.Popen([*cmd, "--listen", str(port), "--upstream", f"127.0.0.1:{up_port}", *args], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline and relay.poll() is None, "the bare relay did not listen"
                time.sleep(0.1)
        with client:
            client.sendall(send)
            time.sleep(pause)
            got = bytearray()
            while len(got) < expect:
                chunk = client.recv(min(1 << 16, expect - len(got)))
                assert chunk, "the relay closed the connection"
                got += chunk
            if after is not None:
                after(client, relay)
        return bytes(got)
    finally:
        relay.terminate()
        relay.wait(10)
        echo.close()


def test_bare_relay_pipes_bytes_both_ways(relay_cmd):
    """benchmarks/bare_relay.py and the C relay, the suite's floors: what the client sends reaches
    the upstream and what the upstream answers reaches the client, byte for byte (an echo server as
    upstream)."""
    assert _through_bare_relay(send=b"hello, relay", answer=lambda d: d[::-1], expect=12,
                               cmd=relay_cmd) == b"yaler ,olleh"


def test_c_relay_holds_back_what_the_client_cannot_take_yet(c_relay):
    """The C relay's back-pressure: an answer of 32 MiB, more than the sockets on the way buffer,
    sent to a client that starts reading only a second later, reaches it whole and in order (the
    rest of a partial write is kept and written when the client's socket has room, and the server
    is not read meanwhile)."""
    import os

    big = os.urandom(32 << 20)
    got = _through_bare_relay(send=b"Q", answer=lambda d: big, expect=len(big), cmd=[str(c_relay)], pause=1)
    assert got == big


def _chained_lines(data: bytes) -> None:
    import hashlib
    import json

    lines = data.splitlines(keepends=True)
    assert [json.loads(ln)["seq"] for ln in lines] == [1, 2]
    assert json.loads(lines[0])["prev"] == "0" * 64
    assert json.loads(lines[1])["prev"] == hashlib.sha256(lines[0]).hexdigest()
    assert 350 <= len(lines[0]) <= 400, len(lines[0])                # a pgwarden statement record: ~380


_TWO_STATEMENTS = b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I" * 2


@pytest.mark.parametrize("mapped", [False, True], ids=["write", "mmap"])
def test_bare_relay_record_writes_one_chained_line_per_ready_for_query(tmp_path, mapped):
    """--record: the floor of a per-statement recording. Two ReadyForQuery in the answer give two
    lines in the session's file, each carrying the SHA-256 of the line before; the bytes still
    reach the client unchanged.  With --mmap too: the relay is killed (SIGKILL) with the session
    open, as a crash would, and the lines it stored are in the file, followed by the zero bytes of
    the megabyte it reserved."""
    _record_two_statements_and_crash(tmp_path, ["--record", str(tmp_path), *(["--mmap"] if mapped else [])],
                                     mapped=mapped)


def test_c_relay_record_writes_one_chained_line_per_ready_for_query(tmp_path, c_relay):
    """The C relay's --record: the same two chained lines, in the file when it is killed with the
    session open."""
    _record_two_statements_and_crash(tmp_path, ["--record", str(tmp_path)], cmd=[str(c_relay)])


def _record_two_statements_and_crash(tmp_path, args, *, mapped=False, cmd=None) -> None:
    def crash(client, relay):
        relay.kill()
        relay.wait(10)
    got = _through_bare_relay(*args, send=b"Q", answer=lambda d: _TWO_STATEMENTS, expect=len(_TWO_STATEMENTS),
                              after=crash, cmd=cmd)
    assert got == _TWO_STATEMENTS
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1
    data = files[0].read_bytes()
    if mapped:
        assert len(data) == 1 << 20 and data.endswith(b"\0")
        data = data.rstrip(b"\0")
    _chained_lines(data)


def test_bare_relay_mmap_cuts_the_file_to_its_lines_when_the_session_ends(tmp_path):
    """--record --mmap: once the session closes, the file holds the lines and nothing after them."""
    import time

    def closed(client, relay):
        client.close()
        deadline = time.monotonic() + 10
        while True:
            files = list(tmp_path.glob("*.jsonl"))
            if files and files[0].stat().st_size < 1 << 20:
                return
            assert time.monotonic() < deadline, "the file was not cut to its length"
            time.sleep(0.05)
    _through_bare_relay("--record", str(tmp_path), "--mmap", send=b"Q", answer=lambda d: _TWO_STATEMENTS,
                        expect=len(_TWO_STATEMENTS), after=closed)
    (f,) = tmp_path.glob("*.jsonl")
    data = f.read_bytes()
    assert b"\0" not in data
    _chained_lines(data)


def test_layer_table_gives_each_layer_as_a_ratio_to_pgbouncer():
    from benchmarks.suite import BARE, BARE_RECORD, NOREC, Results, norec_table

    res = Results(runs={"select-only-prepared-c8": {"pgbouncer": [100, 120, 110], BARE: [99], BARE_RECORD: [77],
                                                    NOREC: [88], "pgwarden": [55]}})
    rows = norec_table(res).splitlines()
    assert rows[0].split("|")[3:8] == [" PgBouncer ", " bare Python relay ", " bare relay + a chained line per statement ",
                                       " pgwarden, recording off ", " pgwarden, recording on "]
    assert rows[2].rstrip(" |").split(" | ")[-4:] == ["0.90", "0.70", "0.80", "0.50"]   # 99, 77, 88, 55 / 110
    res.runs["select-only-prepared-c8"].pop(BARE_RECORD)          # a run without it: no empty column
    assert "chained line" not in norec_table(res)
    assert norec_table(Results(runs={"select-only-prepared-c8": {"pgbouncer": [1], "pgwarden": [1]}})) == ""


def test_layer_table_gives_the_c_relays_beside_the_python_ones():
    """--c-relay: the C relay and the C relay with the line, each its own column, after the Python
    floors, as ratios to PgBouncer; a run of only the C floors still gives the table."""
    from benchmarks.suite import BARE, C_RELAY, C_RELAY_RECORD, Results, norec_table

    res = Results(runs={"select-only-prepared-c8": {"pgbouncer": [100], BARE: [90], C_RELAY: [130],
                                                    C_RELAY_RECORD: [95], "pgwarden": [70]}})
    rows = norec_table(res).splitlines()
    assert rows[0].split("|")[3:7] == [" PgBouncer ", " bare Python relay ", " bare C relay ",
                                       " C relay + a chained line per statement "]
    assert rows[2].rstrip(" |").split(" | ")[-4:] == ["0.90", "1.30", "0.95", "0.70"]
    only_c = Results(runs={"select-only-prepared-c8": {"pgbouncer": [100], C_RELAY_RECORD: [95], "pgwarden": [70]}})
    assert "C relay + a chained line" in norec_table(only_c)


def test_parts_hooks_switch_one_part_off_and_back(tmp_path, monkeypatch):
    """benchmarks/parts.py's two extra pgwardens: 'no-records' keeps the recorder's own records
    but writes nothing per statement; 'no-tracker' leaves a session without tracker or server hook.
    Each patch is undone by what apply() returns."""
    import types

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from benchmarks.parts_hooks import apply
    from proxy.audit.config import AuditConfig
    from proxy.audit.writer import RecorderFactory, SessionRecorder
    from proxy.net.client_conn import ClientConn

    from proxy.audit import writer

    shipped, shipped_sink = SessionRecorder.statement, writer.statement_sink
    undo = apply("no-records")
    try:
        assert writer.statement_sink is None          # the compiled sink would write regardless
        rec = RecorderFactory(AuditConfig(dir=tmp_path), Ed25519PrivateKey.generate()).open(grant="g")
        rec.start(user="alice")
        assert rec.statement("select 1", statement_class="read", tag="SELECT 1") is True
        rec.end("client_closed")
        types_written = [line.split(b'"type":"')[1].split(b'"')[0] for line in rec.path.read_bytes().splitlines()]
        assert types_written == [b"session_start", b"session_end"]
    finally:
        undo()
    assert SessionRecorder.statement is shipped and writer.statement_sink is shipped_sink

    def start_recording(self):                   # what the shipped method leaves behind
        self.tracker, self.stream.on_message = "tracker", "hook"
    monkeypatch.setattr(ClientConn, "_start_recording", start_recording)
    undo = apply("no-tracker")
    conn = types.SimpleNamespace(tracker=None, stream=types.SimpleNamespace(on_message=None))
    ClientConn._start_recording(conn)
    assert conn.tracker is None and conn.stream.on_message is None
    undo()
    assert ClientConn._start_recording is start_recording
    with pytest.raises(ValueError):
        apply("no-such-part")


def test_parts_hook_forward_first_forwards_a_read_before_writing_its_records(tmp_path):
    """'forward-first' (what writing the records after the answer would buy): the client's write comes
    before the records of the statements that read ends reach the file, and the recording is still
    whole and verifies. pgwarden as shipped writes them first (tests/audit/test_held.py)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from benchmarks.parts_hooks import apply
    from proxy.audit.verify import verify
    from proxy.net.client_conn import ClientConn
    from tests.audit.test_held import answers, pipeline, recording_conn

    key = Ed25519PrivateKey.generate()
    shipped = ClientConn.on_server_data
    undo = apply("forward-first")
    try:
        c = recording_conn(tmp_path, key)
        c.data_received(pipeline(3))
        on_disk_when_forwarded = []
        forward = c.transport.write

        def write(data):
            on_disk_when_forwarded.append(c.recorder.path.read_bytes().count(b"\n"))
            forward(data)
        c.transport.write = write
        c.on_server_data(b"".join(answers(3)))
        assert on_disk_when_forwarded == [1]                 # session_start only: the answers went first
        assert c.recorder.path.read_bytes().count(b"\n") == 4 and c.recorder._held is None
        assert b"".join(c.transport.writes) == b"".join(answers(3))
        path = c.recorder.path
        ClientConn._end_recording(c)
        report = verify(path, {"rec": key.public_key()})
        assert report.ok and report.statements == 3
    finally:
        undo()
    assert ClientConn.on_server_data is shipped


def test_parts_hook_compiled_glue_relays_and_records_as_shipped(tmp_path, monkeypatch):
    """'compiled-glue' (benchmarks/glue_proto.c: what compiling the per-read glue would buy) relays the
    same bytes both ways and records the same statements: whole reads taken in C, a server read split
    mid-message and a pipeline handed back to the shipped methods; undo restores them."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from benchmarks.env import build_glue_proto
    from benchmarks.parts_hooks import apply
    from benchmarks.test_micro_relay import PREPARE_ANSWER, PREPARE_TX, PREPARED_ANSWER, PREPARED_TX
    from proxy.audit.verify import verify
    from proxy.net.client_conn import ClientConn
    from proxy.net.upstream import UpstreamProtocol
    from proxy.wire import framing
    from tests.audit.test_held import answers, pipeline, recording_conn

    if framing.walk_client_c is None:
        pytest.skip("pgwarden's C extensions are not built")
    built = build_glue_proto(tmp_path / "glue")
    if built is None:
        pytest.skip("benchmarks/glue_proto.c does not build here")
    monkeypatch.syspath_prepend(str(built))
    shipped = (ClientConn.data_received, ClientConn.on_server_data, UpstreamProtocol.data_received)
    key = Ed25519PrivateKey.generate()
    undo = apply("compiled-glue")
    try:
        assert ClientConn.data_received is not shipped[0]
        c = recording_conn(tmp_path, key)
        c.data_received(PREPARE_TX)
        UpstreamProtocol(c).data_received(PREPARE_ANSWER)
        for _ in range(50):
            c.data_received(PREPARED_TX)
            c.on_server_data(PREPARED_ANSWER)
        c.data_received(PREPARED_TX[:7])                       # a read cut mid-message, then the rest
        c.data_received(PREPARED_TX[7:])
        c.on_server_data(PREPARED_ANSWER)
        c.data_received(PREPARED_TX + pipeline(3))             # walked in C up to the Parse, the rest shipped
        four = PREPARED_ANSWER + b"".join(answers(3))
        c.on_server_data(four[:30])
        c.on_server_data(four[30:])
        assert b"".join(w for w in c.up_transport.writes if isinstance(w, bytes)) == \
            PREPARE_TX + PREPARED_TX * 52 + pipeline(3)
        assert b"".join(w for w in c.transport.writes if isinstance(w, bytes)) == \
            PREPARE_ANSWER + PREPARED_ANSWER * 51 + four
        assert c.sync_points == c.stream.ready_count == 54
        path = c.recorder.path
        ClientConn._end_recording(c)
        report = verify(path, {"rec": key.public_key()})
        assert report.ok and report.statements == 1 + 52 + 3
    finally:
        undo()
    assert (ClientConn.data_received, ClientConn.on_server_data, UpstreamProtocol.data_received) == shipped


def test_parts_refuses_an_unknown_part_before_starting_anything(capsys):
    from benchmarks.parts import main

    with pytest.raises(SystemExit) as e:
        main(["--parts", "no-tracker,no-such-part"])
    assert e.value.code == 2 and "unknown no-such-part" in capsys.readouterr().err


def test_parts_python_takes_an_interpreter_that_runs_pgwarden_compiled(tmp_path):
    """--python: this interpreter passes the check (pgwarden's dependencies and this tree's compiled
    parts load in it); one without the dependencies, or no interpreter at all, is refused before
    anything starts, with what failed and what to do."""
    import venv

    from benchmarks.env import check_interpreter
    from benchmarks.parts import main
    from proxy.wire import framing

    if framing.walk_client_c is None:
        pytest.skip("pgwarden's C extensions are not built")
    check_interpreter(Path(sys.executable))                       # returns: nothing to refuse
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False)                              # the same Python, no site-packages
    for python, why in ((bare / "bin" / "python", "No module named"), (tmp_path / "no-python", "No such file")):
        with pytest.raises(SystemExit) as e:
            main(["--parts", "", "--python", str(python)])
        assert f"--python {python}: cannot run pgwarden" in str(e.value.code) and why in str(e.value.code)
        assert "pip install -e" in str(e.value.code)


def test_cpu_table_gives_each_proxys_cpu_per_transaction_and_per_core_rate():
    from benchmarks.suite import NOREC, Results, cpu_table

    res = Results(cpu={"select-only-prepared-c8": {"pgbouncer": [[2.0, 18.0], [1.0, 15.0], [3.0, 17.0]],
                                                   "pgwarden": [[10.0, 30.0], [12.0, 28.0]],
                                                   NOREC: [[5.0, 20.0]]},
                       "churn-c8": {"pgbouncer": [[2500.0, 900.0]], "pgwarden": [[2000.0, 500.0]]}})
    rows = cpu_table(res).splitlines()
    assert "recording off" in rows[0] and len(rows) == 4
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    # medians: PgBouncer 20 (2 + 17), pgwarden 40 (11 + 29); 1e6 / µs per core-second
    assert cells[2:] == ["20.0 (2.0 + 17.0)", "40.0 (11.0 + 29.0)", "25.0 (5.0 + 20.0)", "2.00", "50,000 / 25,000"]
    churn = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert churn[4:] == ["n/a", "0.74", "294 / 400"]
    assert cpu_table(Results(cpu={"churn-c8": {"pgbouncer": [[1.0, 1.0]]}})) == ""


def test_cost_table_gives_each_statements_round_trip_what_pgwarden_adds_and_its_cpu():
    from benchmarks.suite import Results, cost_table

    res = Results(runs={"select-only-prepared-c1": {"direct": [10000, 12500, 8000], "pgbouncer": [8000, 7000],
                                                    "pgwarden": [5000, 6250, 4000]},
                        "select-only-simple-c1": {"direct": [10000], "pgbouncer": [8000]}},
                  cpu={"select-only-prepared-c8": {"pgbouncer": [[2.0, 18.0]], "pgwarden": [[10.0, 20.0], [12.0, 24.0]]}})
    rows = cost_table(res).splitlines()
    assert len(rows) == 3          # header, rule, prepared; simple has no pgwarden run, extended no run at all
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    # round trip = 1e6 / median TPS: direct 100, PgBouncer 1e6 / 7500 = 133, pgwarden 200
    assert cells == ["-M prepared", "100", "133", "200", "+100", "+67", "20.0", "33.0"]
    assert cost_table(Results(runs={"churn-c8": {"pgwarden": [1.0]}})) == ""


def test_report_prints_a_saved_runs_tables_without_running_anything(tmp_path, capsys):
    import json
    from dataclasses import asdict

    from benchmarks.suite import Results, main

    res = Results(meta={"repeat": 3, "duration_s": 4, "scale": 10, "elapsed_s": 1},
                  runs={"select-only-prepared-c1": {"direct": [10000], "pgbouncer": [8000], "pgwarden": [5000]}})
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(asdict(res)))
    out_md = tmp_path / "run.md"
    assert main(["--report", str(saved), "--markdown", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert "| select-only -M prepared | 1 | 10000 | 8000 | 5000 | 0.50 | 0.62 |" in printed
    assert "| -M prepared | 100 | 125 | 200 | +100 | +75 |" in printed
    assert "| -M prepared | 100 | 125 | 200 | +100 | +75 |" in out_md.read_text()
    assert "nice" not in printed


def test_meta_text_says_when_every_proxy_ran_at_another_priority():
    from benchmarks.suite import Results, meta_text

    assert "every proxy at nice -10" in meta_text(Results(meta={"nice": -10}))
    assert "nice" not in meta_text(Results(meta={}))


def test_cpu_seconds_counts_a_process_and_its_children(tmp_path):
    """serve --workers: the parent only supervises; its workers' CPU is the proxy's too."""
    from benchmarks.env import cpu_seconds

    marker = tmp_path / "busy"
    child = tmp_path / "child.py"
    child.write_text("import sys, time\n"
                     "t = time.process_time()\n"
                     "while time.process_time() - t < 0.5:\n"
                     "    pass\n"
                     "open(sys.argv[1], 'w').close()\n"
                     "time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]]); time.sleep(30)",
                               str(child), str(marker)])
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        user, system = cpu_seconds(parent.pid)
        assert user + system >= 0.45      # the child's half second of CPU, the idle parent's next to nothing
    finally:
        for child in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_cpu_per_transaction_divides_what_the_process_spent_since_a_reading():
    from benchmarks.env import cpu_per_transaction, cpu_seconds

    before = cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    user, system = cpu_per_transaction(os.getpid(), before, 1000)
    assert 250 <= user + system <= 2000       # 0.3 s of CPU over 1,000 transactions: about 300 µs each
    assert cpu_per_transaction(os.getpid(), before, 0) is None


def test_parts_table_gives_medians_and_ratios_to_pgbouncer():
    from benchmarks.parts import table

    out = table({"pgbouncer": [100.0, 300.0, 200.0], "pgwarden": [50.0, 150.0, 100.0]},
                {"pgbouncer": [(2.0, 20.0)] * 3, "pgwarden": [(30.0, 25.0), (28.0, 26.0), (29.0, 30.0)]})
    lines = out.splitlines()
    assert lines[2].split("|")[2:4] == [" 200 ", " 1.00 "]
    assert lines[3].split("|")[2:6] == [" 100 ", " 0.50 ", " 28.0-30.0 ", " 25.0-30.0 "]


def test_parts_table_gives_the_machines_idle_share_per_path():
    from benchmarks.parts import table

    out = table({"pgbouncer": [100.0], "pgwarden": [50.0]},
                {"pgbouncer": [(2.0, 20.0)], "pgwarden": [(30.0, 25.0)]},
                {"pgbouncer": [0.10, 0.14, 0.12], "pgwarden": [0.2, 0.18]})
    lines = out.splitlines()
    assert lines[0].endswith("| machine idle |") and lines[1].count("---") == 6
    assert lines[2].endswith("| 12% |") and lines[3].endswith("| 19% |")


def test_renice_sets_every_thread_of_a_process_and_of_its_children(tmp_path):
    """parts --nice: a pgwarden's event loop may not be its first thread, and serve --workers' loops
    are child processes; each must run at the value asked for."""
    from benchmarks.env import _children, renice

    script = tmp_path / "tree.py"
    script.write_text("import subprocess, sys, threading, time\n"
                      "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
                      "print('ready', flush=True)\n"
                      "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        renice(proc.pid, 7)
        kids = _children(proc.pid)
        tasks = [int(t.name) for pid in (proc.pid, *kids) for t in Path(f"/proc/{pid}/task").iterdir()]
        assert len(kids) == 1 and len(tasks) >= 3
        assert all(os.getpriority(os.PRIO_PROCESS, t) == 7 for t in tasks)
    finally:
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_renice_all_ends_the_run_saying_why_when_the_kernel_refuses(monkeypatch):
    """--nice -10 without CAP_SYS_NICE: a clear message, not a traceback halfway through a run."""
    from benchmarks import env

    def refuse(which, who, value):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(env.os, "setpriority", refuse)
    with pytest.raises(SystemExit) as e:
        env.renice_all([os.getpid()], -10)
    assert "--nice -10" in str(e.value) and "CAP_SYS_NICE" in str(e.value)


def test_machine_idle_counts_idle_ticks_among_all():
    from benchmarks.env import machine_idle

    # user nice system idle iowait irq softirq steal guest guest_nice, then the per-CPU lines
    stat = "cpu  100 20 30 400 5 6 7 8 90 10\ncpu0 50 10 15 200 2 3 3 4 45 5\nintr 1 2 3\n"
    assert machine_idle(stat) == (576, 405)
    all0, idle0 = machine_idle()
    time.sleep(0.05)
    all1, idle1 = machine_idle()
    assert 0 < all0 < all1 and 0 <= idle0 <= idle1 and idle1 - idle0 <= all1 - all0


def test_bare_relay_mmap_grows_the_file_past_its_first_megabyte(tmp_path):
    """--record --mmap over more lines than the first reserved megabyte holds: the mapping grows and
    every line is there, chained, once the session ends."""
    import hashlib
    import json

    from benchmarks.bare_relay import _MAP_STEP, _READY, _Recording

    rec = _Recording(tmp_path, mapped=True)
    rec.server_data((_READY + b"I") * 3000)        # 3,000 lines of about 380 bytes
    rec.close()
    (f,) = tmp_path.glob("*.jsonl")
    lines = f.read_bytes().splitlines(keepends=True)
    assert f.stat().st_size > _MAP_STEP
    assert [json.loads(ln)["seq"] for ln in lines] == list(range(1, 3001))
    assert all(json.loads(b)["prev"] == hashlib.sha256(a).hexdigest() for a, b in zip(lines, lines[1:]))
