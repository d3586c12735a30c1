"""The benchmark environment: one throwaway PostgreSQL, pgwarden and PgBouncer.

``BenchEnv`` starts, in a temporary directory:

- PostgreSQL (``proxy.embedded``), TLS on (a self-signed certificate), with
  pgbench tables at the chosen scale and ``max_connections`` high enough for
  the idle-session test;
- ``pgwarden serve`` as users run it: policy on (the write scope, every
  statement classified), uvloop, recording on when ``[audit]`` is supported
  (``proxy.audit.config``; recordings signed with a key made by
  ``proxy.keys``), TLS offered (loopback clients may skip it), upstream
  plaintext TCP;
- PgBouncer (Debian package ``pgbouncer``) in session mode, SCRAM auth for
  clients, TLS offered, upstream plaintext TCP;
- optionally (``norec``) a second pgwarden with recording off, to show what
  the recording costs on its own;
- optionally (``parts``) more pgwarden processes, each with one part of the
  recording switched off (``benchmarks/parts_hooks.py``, for
  ``benchmarks/parts.py``).

``targets(tls=...)`` gives libpq environments (``PGHOST``, ``PGPORT`` ...)
for ``direct``, ``pgwarden`` and ``pgbouncer``, so every client (pgbench,
psql, asyncpg) reaches the three the same way.  All three use TCP on
127.0.0.1.  ``ensure_pgbouncer()`` installs the package with apt-get when it
is missing and we are root.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from policy.tokens import mint                                   # noqa: E402
from proxy.demo import write_config                              # noqa: E402
from proxy.embedded import EmbeddedPostgres, create_scope_roles, find_pg_bindir  # noqa: E402
from proxy.keys import generate_keypair, load_private_key        # noqa: E402
from proxy.tlsutil import make_self_signed_cert                  # noqa: E402

DB = "appdb"
USER = "alice"
SCOPE = "write"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or 'nothing'} listening on {port} after {timeout} s")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (``serve --workers``' workers), from /proc/<pid>/task/*/children."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by ``pid`` and its child processes, from /proc/<pid>/stat
    (clock ticks: 10 ms steps, which a few seconds of pgbench make small)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / hz, int(fields[12]) / hz
    for child in _children(pid):
        try:
            u, s = cpu_seconds(child)
        except OSError:
            continue
        user, system = user + u, system + s
    return user, system


def cpu_per_transaction(pid: int, before: tuple[float, float], transactions: float) -> tuple[float, float] | None:
    """(user, system) CPU µs per transaction that ``pid`` (and its children) spent since ``before``, a
    ``cpu_seconds(pid)`` reading; None when no transaction ran."""
    if transactions <= 0:
        return None
    user, system = cpu_seconds(pid)
    return (user - before[0]) / transactions * 1e6, (system - before[1]) / transactions * 1e6


def renice(pid: int, nice: int) -> None:
    """Set the nice value of every thread of ``pid`` and of its child processes (lower: scheduled
    sooner; below 0 needs root or CAP_SYS_NICE)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
    for child in _children(pid):
        renice(child, nice)


def renice_all(pids, nice: int) -> None:
    """``renice`` each of ``pids`` (the suite's and parts' ``--nice``); a refusal ends the run with why."""
    try:
        for pid in pids:
            renice(pid, nice)
    except PermissionError as e:
        raise SystemExit(f"--nice {nice}: {e} (a value below 0 needs root or CAP_SYS_NICE)") from None
    log(f"every proxy at nice {nice}")


def machine_idle(stat: str | None = None) -> tuple[int, int]:
    """(all, idle) clock ticks the machine's CPUs have counted so far, from /proc/stat (or ``stat``, its
    text): the share of idle ticks between two readings is how much of the machine sat unused.

    The first line's columns are user, nice, system, idle, iowait, irq, softirq, steal, guest and
    guest_nice; idle counts idle and iowait, and all counts the first eight (the kernel already
    counts guest time in user and guest_nice in nice)."""
    if stat is None:
        stat = Path("/proc/stat").read_text()
    ticks = [int(x) for x in stat.split("\n", 1)[0].split()[1:9]]
    return sum(ticks), ticks[3] + ticks[4]


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` and its child processes (``serve --workers``) in KiB (VmRSS)."""
    total = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                total = int(line.split()[1])
                break
    for child in _children(pid):
        try:
            total += rss_kb(child)
        except OSError:
            pass
    return total


def pgbouncer_path() -> str | None:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return exe if os.path.exists(exe) else None


def ensure_pgbouncer(install: bool = True) -> str | None:
    """The pgbouncer binary; installed from Debian's packages when missing (root only)."""
    exe = pgbouncer_path()
    if exe or not install:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("pgbouncer is not installed and cannot be installed here (not root, or no apt-get)")
        return None
    log("installing pgbouncer (apt-get install -y pgbouncer)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"], env=env,
                   check=False, stdout=subprocess.DEVNULL)
    # the package's own service must not hold port 6432 behind our back
    if shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
        subprocess.run(["systemctl", "disable", "--now", "pgbouncer"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return pgbouncer_path()


def pgbench_path() -> str:
    try:
        candidate = find_pg_bindir() / "pgbench"
        if candidate.exists():
            return str(candidate)
    except Exception:  # noqa: BLE001 - fall back to PATH
        pass
    exe = shutil.which("pgbench")
    if exe is None:
        raise RuntimeError("pgbench not found (install postgresql-15 or postgresql-client-15)")
    return exe


def _cc(what: str, args: list[str]) -> bool:
    """Run the machine's C compiler with ``args``; False (and a line saying why) where there is
    none or it fails, and ``what``'s paths are then skipped."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log(f"no C compiler: {what}'s paths are skipped")
        return False
    proc = subprocess.run([cc, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        log(f"{what} did not build ({err}): its paths are skipped")
        return False
    return True


def build_c_relay(out: Path) -> Path | None:
    """benchmarks/c_relay.c compiled to ``out``; None where there is no C compiler or no libcrypto
    to build it with."""
    ok = _cc("the C relay", ["-O2", "-o", str(out), str(ROOT / "benchmarks" / "c_relay.c"), "-lcrypto"])
    return out if ok else None


def build_glue_proto(out_dir: Path) -> Path | None:
    """benchmarks/glue_proto.c compiled into ``out_dir`` as the module ``_glue_proto`` for this
    Python (parts_hooks' "compiled-glue"); ``out_dir``, or None where it does not build."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"_glue_proto{sysconfig.get_config_var('EXT_SUFFIX')}"
    ok = _cc("the compiled glue", ["-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", "-o",
                                   str(target), str(ROOT / "benchmarks" / "glue_proto.c")])
    return out_dir if ok else None


#: pgwarden's compiled parts: another interpreter must load this tree's builds of each, or it would
#: measure the pure-Python fallbacks.
COMPILED = ("proxy.wire._scan", "proxy.session._track", "proxy.audit._recline", "policy.sql._maskkey")


def check_interpreter(python: Path) -> None:
    """Refuse (SystemExit) an interpreter that cannot run pgwarden from this tree with its compiled parts:
    it needs pgwarden's dependencies installed, and C extensions built for its ABI."""
    probe = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; import uvloop, proxy.cli"
    try:
        r = subprocess.run([str(python), "-c", probe, *COMPILED], cwd=str(ROOT), capture_output=True, text=True)
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1] if r.returncode else ""
    except OSError as e:
        last = str(e)
    if last:
        raise SystemExit(f"--python {python}: cannot run pgwarden from {ROOT} with its compiled parts: {last}\n"
                         f"  give it pgwarden's dependencies (a venv of it: V/bin/pip install -e '{ROOT}'), "
                         f"and C extensions built for it if its ABI differs (setup.py build_ext --inplace)")


def recording_supported() -> bool:
    """True when this pgwarden can record sessions ([audit] section and write_config(record=...))."""
    try:
        import proxy.audit.config  # noqa: F401
    except ImportError:
        return False
    return "record" in inspect.signature(write_config).parameters


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    pid: int                       # the server process itself (not runuser's)
    port: int
    log_path: Path


@dataclass
class BenchEnv:
    scale: int = 10
    max_connections: int = 1200
    record: bool = True
    pgbouncer: bool = True
    install: bool = True
    workers: int = 1
    norec: bool = False
    bare: bool = False              # also a bare Python relay (benchmarks/bare_relay.py): the floor
    bare_record: bool = False       # also the bare relay writing one chained line per statement (--record)
    bare_record_mmap: bool = False  # ... and storing it into a mapping of the file instead (--record --mmap)
    c_relays: bool = False          # also the C relay (benchmarks/c_relay.c), alone and with --record, if it builds
    parts: tuple[str, ...] = ()     # also a pgwarden per part switched off (benchmarks/parts_hooks.PARTS)
    baseline: Path | None = None    # also a pgwarden (recording on) run from this other source tree
    python: Path | None = None      # also a pgwarden (recording on) run from this tree by this other interpreter
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgwarden-bench-")))

    def __post_init__(self) -> None:
        self.pg: EmbeddedPostgres | None = None
        self.procs: list[Proc] = []
        self.pgwarden: Proc | None = None
        self.pgwarden_norec: Proc | None = None
        self.bouncer: Proc | None = None
        self.bare_relay: Proc | None = None
        self.bare_relay_record: Proc | None = None
        self.bare_relay_record_mmap: Proc | None = None
        self.c_relay: Proc | None = None
        self.c_relay_record: Proc | None = None
        self.part_procs: dict[str, Proc] = {}
        self.baseline_proc: Proc | None = None
        self.python_proc: Proc | None = None
        if self.baseline is not None and not (Path(self.baseline) / "proxy" / "__main__.py").is_file():
            raise SystemExit(f"--baseline {self.baseline}: not a pgwarden source tree (no proxy/__main__.py)")
        if self.python is not None:
            check_interpreter(Path(self.python))
        self.role = self.password = ""
        self.token = ""
        self.recording = False
        self.cert = self.key = Path()

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> BenchEnv:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.work.chmod(0o755)
        tls_dir = self.work / "tls"
        tls_dir.mkdir()
        tls_dir.chmod(0o755)
        self.cert, self.key = make_self_signed_cert(tls_dir)
        pg_tls = self._server_tls_copy("pg")
        log(f"starting PostgreSQL (max_connections {self.max_connections}) in {self.work}")
        self.pg = EmbeddedPostgres(max_connections=self.max_connections, extra_conf={
            "shared_buffers": "256MB", "ssl": "on", "ssl_cert_file": str(pg_tls[0]),
            "ssl_key_file": str(pg_tls[1]), "max_wal_size": "2GB", "checkpoint_timeout": "30min",
        }).start()
        roles = create_scope_roles(self.pg, DB)
        self.role, self.password = roles[SCOPE]
        log(f"pgbench -i -s {self.scale}")
        env = dict(os.environ, PGPASSWORD=self.pg.superuser_password, PGSSLMODE="disable")
        subprocess.run([pgbench_path(), "-i", "-q", "-s", str(self.scale), "-h", "127.0.0.1", "-p",
                        str(self.pg.port), "-U", "postgres", DB], env=env, check=True, capture_output=True)
        kp = generate_keypair(self.work / "keys", "bench")
        self.private_key = load_private_key(kp.private_path)
        self.kid = kp.kid
        self.token = self.mint()
        self.recording = self.record and recording_supported()
        if self.record and not self.recording:
            log("this pgwarden has no [audit] recording: measuring with policy on, recording off")
        self.pgwarden = self._start_pgwarden(roles, kp, "pgwarden", self.recording)
        if self.norec and self.recording:
            self.pgwarden_norec = self._start_pgwarden(roles, kp, "pgwarden-norec", False)
        for part in self.parts:
            site = str(ROOT / "benchmarks" / "parts_site")
            if part == "compiled-glue":
                built = build_glue_proto(self.work / "glue")
                if built is None:
                    continue
                site = os.pathsep.join((site, str(built)))
            self.part_procs[part] = self._start_pgwarden(roles, kp, f"pgwarden-{part}", self.recording, env={
                "PGWARDEN_BENCH_PART": part,
                "PYTHONPATH": os.pathsep.join(filter(None, (site, os.environ.get("PYTHONPATH"))))})
        if self.baseline is not None:
            tree = Path(self.baseline).resolve()
            self.baseline_proc = self._start_pgwarden(roles, kp, "pgwarden-baseline", self.recording, root=tree,
                                                      env={"PYTHONPATH": str(tree)})
        if self.python is not None:
            self.python_proc = self._start_pgwarden(roles, kp, "pgwarden-python", self.recording,
                                                    python=Path(self.python))
        if self.bare:
            self.bare_relay = self._start_bare_relay("bare-relay")
        if self.bare_record:
            records = self.work / "bare-relay-records"
            records.mkdir()
            self.bare_relay_record = self._start_bare_relay("bare-relay-record", "--record", str(records))
        if self.bare_record_mmap:
            records = self.work / "bare-relay-records-mmap"
            records.mkdir()
            self.bare_relay_record_mmap = self._start_bare_relay("bare-relay-record-mmap", "--record", str(records),
                                                                 "--mmap")
        if self.c_relays and (exe := build_c_relay(self.work / "c_relay")) is not None:
            self.c_relay = self._start_bare_relay("c-relay", exe=exe)
            records = self.work / "c-relay-records"
            records.mkdir()
            self.c_relay_record = self._start_bare_relay("c-relay-record", "--record", str(records), exe=exe)
        if self.pgbouncer:
            exe = ensure_pgbouncer(self.install)
            if exe:
                self._start_pgbouncer(exe)
            else:
                log("PgBouncer unavailable: comparing with a direct connection only")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
                try:
                    p.popen.wait(15)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait()
        self.procs.clear()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None
        shutil.rmtree(self.work, ignore_errors=True)

    # ---------------------------------------------------------------- pieces

    def _server_tls_copy(self, name: str) -> tuple[Path, Path]:
        """cert/key copies a server running as the postgres user can read (key 0600, its owner)."""
        d = self.work / f"tls-{name}"
        d.mkdir()
        cert, key = d / "server.crt", d / "server.key"
        shutil.copy(self.cert, cert)
        shutil.copy(self.key, key)
        key.chmod(0o600)
        if os.geteuid() == 0:
            for path in (d, cert, key):
                shutil.chown(path, "postgres", "postgres")
        return cert, key

    def _start_pgwarden(self, roles, kp, name: str, record: bool, env: dict[str, str] | None = None,
                        root: Path = ROOT, python: Path | None = None) -> Proc:
        """One ``pgwarden serve``; ``root``: the source tree it runs from (``-m proxy`` in that directory);
        ``python``: the interpreter (default this one)."""
        port = free_port()
        wdir = self.work / name
        wdir.mkdir()
        kwargs = {"record": True} if record else {}
        server = {"workers": self.workers} if self.workers > 1 else None
        cfg = write_config(wdir, pg_host="127.0.0.1", pg_port=self.pg.port, scope_roles=roles, listen_port=port,
                           kid=kp.kid, private_path=kp.private_path, public_path=kp.public_path,
                           cert=self.cert, key=self.key, extra_server=server, **kwargs)
        text = cfg.read_text().replace('sslmode = "prefer"', 'sslmode = "disable"')
        cfg.write_text(text)
        log_path = wdir / "pgwarden.log"
        popen = subprocess.Popen([str(python or sys.executable), "-m", "proxy", "serve", "--config", str(cfg),
                                  "--log-level", "warning", "--log-format", "json"], stdout=subprocess.DEVNULL,
                                 stderr=open(log_path, "wb"), cwd=str(root),
                                 env=dict(os.environ, **env) if env else None)
        proc = Proc(name, popen, popen.pid, port, log_path)
        self.procs.append(proc)
        wait_port(port, proc=popen, what=name)
        return proc

    def _start_bare_relay(self, name: str, *args: str, exe: Path | None = None) -> Proc:
        """benchmarks/bare_relay.py, or with ``exe`` the C relay built from benchmarks/c_relay.c."""
        port = free_port()
        log_path = self.work / f"{name}.log"
        cmd = [str(exe)] if exe is not None else [sys.executable, "-m", "benchmarks.bare_relay"]
        popen = subprocess.Popen([*cmd, "--listen", str(port),
                                  "--upstream", f"127.0.0.1:{self.pg.port}", *args], stdout=subprocess.DEVNULL,
                                 stderr=open(log_path, "wb"), cwd=str(ROOT))
        proc = Proc(name, popen, popen.pid, port, log_path)
        self.procs.append(proc)
        wait_port(port, proc=popen, what=name)
        return proc

    def mint(self, ttl: float = 24 * 3600) -> str:
        return mint(self.private_key, kid=self.kid, sub=USER, db=DB, scope=SCOPE, audience="pgwarden",
                    now=time.time(), ttl=ttl, reason="benchmark")

    def _start_pgbouncer(self, exe: str) -> None:
        port = free_port()
        d = self.work / "pgbouncer"
        d.mkdir()
        cert, key = self._server_tls_copy("pgbouncer")
        users = d / "userlist.txt"
        users.write_text(f'"{self.role}" "{self.password}"\n')
        ini = d / "pgbouncer.ini"
        ini.write_text(f"""[databases]
{DB} = host=127.0.0.1 port={self.pg.port} dbname={DB} user={self.role} password={self.password}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = session
max_client_conn = {self.max_connections + 200}
default_pool_size = {self.max_connections - 50}
client_tls_sslmode = allow
client_tls_cert_file = {cert}
client_tls_key_file = {key}
server_tls_sslmode = disable
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
""")
        cmd = [exe, str(ini)]
        if os.geteuid() == 0:                  # pgbouncer refuses to run as root
            for path in (d, users, ini):
                shutil.chown(path, "postgres", "postgres")
            users.chmod(0o600)
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc=popen, what="pgbouncer")
        except RuntimeError as e:
            logf = d / "pgbouncer.log"
            raise RuntimeError(f"{e}: {logf.read_text() if logf.exists() else 'no log'}") from None
        pid = popen.pid
        pidfile = d / "pgbouncer.pid"
        for _ in range(50):
            if pidfile.exists() and pidfile.read_text().strip():
                pid = int(pidfile.read_text().strip())
                break
            time.sleep(0.05)
        self.bouncer = Proc("pgbouncer", popen, pid, port, d / "pgbouncer.log")
        self.procs.append(self.bouncer)

    # ---------------------------------------------------------------- clients

    def targets(self, *, tls: bool = False) -> dict[str, dict[str, str]]:
        """libpq environments for each path, in the order runs are interleaved."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        base.update(PGDATABASE=DB, PGHOST="127.0.0.1", PGSSLMODE="require" if tls else "disable",
                    PGCONNECT_TIMEOUT="30")
        out = {"direct": dict(base, PGPORT=str(self.pg.port), PGUSER=self.role, PGPASSWORD=self.password)}
        if self.bouncer is not None:
            out["pgbouncer"] = dict(base, PGPORT=str(self.bouncer.port), PGUSER=self.role,
                                    PGPASSWORD=self.password)
        for name, proc in self.pgwardens().items():
            out[name] = dict(base, PGPORT=str(proc.port), PGUSER=USER, PGPASSWORD=self.token)
        for proc in self.relays():                  # logs in upstream as the direct path does, through it
            out[proc.name] = dict(out["direct"], PGPORT=str(proc.port))
        return out

    def pgwardens(self) -> dict[str, Proc]:
        """Every pgwarden process running (as shipped, recording off, parts, --baseline, --python), by
        its path's name, in the order runs are interleaved."""
        procs = {"pgwarden": self.pgwarden, "pgwarden-norec": self.pgwarden_norec,
                 **{f"pgwarden-{part}": proc for part, proc in self.part_procs.items()},
                 "pgwarden-baseline": self.baseline_proc, "pgwarden-python": self.python_proc}
        return {name: proc for name, proc in procs.items() if proc is not None}

    def proxy_pids(self) -> dict[str, int]:
        """The process of each path that is a proxy (all but direct), by the path's name in targets()."""
        procs = [*([("pgbouncer", self.bouncer)] if self.bouncer is not None else []), *self.pgwardens().items(),
                 *((proc.name, proc) for proc in self.relays())]
        return {name: proc.pid for name, proc in procs}

    def relays(self) -> list[Proc]:
        """The bare relays running (Python and C, alone and recording); each Proc's name is its path's."""
        return [p for p in (self.bare_relay, self.bare_relay_record, self.bare_relay_record_mmap, self.c_relay,
                            self.c_relay_record) if p is not None]

    def versions(self) -> dict[str, str]:
        import platform

        def first_line(cmd: list[str]) -> str:
            try:
                return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
            except Exception:  # noqa: BLE001
                return "?"

        import pglast
        out = {
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, {_cpu_model()}, "
                       f"{_mem_gb():.0f} GB RAM, {platform.system()} {platform.release()}",
            "python": python_build(),
            "postgresql": first_line([str(find_pg_bindir() / "postgres"), "--version"]),
            "pgbench": first_line([pgbench_path(), "--version"]),
            "pglast": pglast.__version__,
        }
        try:
            import uvloop
            out["uvloop"] = uvloop.__version__
        except ImportError:
            out["uvloop"] = "not installed"
        if self.bouncer is not None:
            out["pgbouncer"] = first_line([pgbouncer_path() or "pgbouncer", "--version"])
        # which of the optional C extensions this pgwarden runs ("c") or their Python references
        for label, module, attr in (("header scanner", "proxy.wire.server_stream", "SCANNER_IMPL"),
                                    ("bind decoder", "proxy.wire.decode", "BIND_IMPL"),
                                    ("client walk", "proxy.wire.framing", "WALK_IMPL"),
                                    ("statement walk", "proxy.net.gate", "STATEMENT_WALK_IMPL"),
                                    ("watched delivery", "proxy.wire.server_stream", "DELIVER_IMPL"),
                                    ("masked key", "policy.sql.masked", "KEY_IMPL"),
                                    ("statement tracker", "proxy.session.track", "TRACKER_IMPL"),
                                    ("record line", "proxy.audit.record", "LINE_IMPL"),
                                    ("record digest", "proxy.audit.record", "DIGEST_IMPL"),
                                    ("statement sink", "proxy.audit.writer", "SINK_IMPL"),
                                    ("held records' release", "proxy.audit.writer", "RELEASE_IMPL")):
            try:
                out[label] = getattr(importlib.import_module(module), attr)
            except Exception:  # noqa: BLE001
                pass
        out["recording"] = "on" if self.recording else "off (no [audit] support)"
        return out


def python_build() -> str:
    """The interpreter that runs pgwarden and the bare relay here: its version, executable, and whether
    libpython is a shared library or linked into the executable.  The build matters: pgwarden spends
    10-20% less user CPU per statement under Debian's python3.11 (PGO and LTO, libpython linked in)
    than under a pyenv build without them (docs/benchmarks.md)."""
    import platform

    try:
        shared = "libpython" in Path("/proc/self/maps").read_text()
    except OSError:
        shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
    return (f"{platform.python_version()} ({os.path.realpath(sys.executable)}, "
            f"{'libpython shared' if shared else 'libpython linked in'})")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _mem_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 1024 / 1024
    except OSError:
        return 0.0
