"""proxy.config: every error names the key an operator has to fix, and `pgwarden serve` says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, load
from proxy.keys import generate_keypair

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path):
    kp = generate_keypair(tmp_path / "keys", "k1")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.crt").write_text("cert")
    (tmp_path / "tls" / "server.key").write_text("key")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "read").write_text("read-pw\n")
    return tmp_path, kp


SERVER = '[server]\nlisten_host = "127.0.0.1"\nlisten_port = 6432\n'
TOKENS = '[tokens]\naudience = "pgwarden"\n[tokens.public_keys]\nk1 = "keys/k1.pub.pem"\n'
UPSTREAM = '[upstream]\nhost = "127.0.0.1"\nport = 5432\nsslmode = "prefer"\n'
SCOPES = ('[scopes.read]\nrole = "pgw_read"\npassword_file = "secrets/read"\n'
          '[scopes.write]\nrole = "pgw_write"\npassword_env = "PGW_TEST_WRITE_PW"\n')
ENV = {"PGW_TEST_WRITE_PW": "write-pw"}


def write(d: Path, *, server=SERVER, tokens=TOKENS, upstream=UPSTREAM, scopes=SCOPES, extra="") -> Path:
    p = d / "pgwarden.toml"
    p.write_text("\n".join([server, tokens, upstream, scopes, extra]))
    return p


def error(path: Path, env=ENV) -> str:
    with pytest.raises(ConfigError) as ei:
        load(path, env=env)
    return str(ei.value)


# --------------------------------------------------------------------------- a good file


def test_valid_config_loads(files):
    d, kp = files
    cfg = load(write(d), env=ENV)
    assert cfg.listen_host == "127.0.0.1" and cfg.listen_port == 6432
    assert cfg.upstream.host == "127.0.0.1" and cfg.upstream.port == 5432 and cfg.upstream.sslmode == "prefer"
    assert cfg.public_keys == {"k1": d / "keys" / "k1.pub.pem"}      # relative to the config's directory
    assert cfg.scopes["read"].password == "read-pw" and cfg.scopes["read"].read_only is True
    assert cfg.scopes["write"].password == "write-pw" and cfg.scopes["write"].read_only is False
    assert cfg.tls_enabled is False and cfg.require_tls == "off-loopback"
    assert cfg.startup_timeout == 30 and cfg.connect_timeout == 10 and cfg.max_message_size == 64 << 20
    assert cfg.audience == "pgwarden"


def test_relative_paths_resolve_against_the_config_directory(files, monkeypatch, tmp_path_factory):
    d, _ = files
    path = write(d, server=SERVER + 'tls_cert = "tls/server.crt"\ntls_key = "tls/server.key"\n')
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cfg = load(path, env=ENV)
    assert cfg.tls_cert == d / "tls" / "server.crt" and cfg.tls_enabled


# --------------------------------------------------------------------------- errors name the key


def test_missing_upstream_host(files):
    d, _ = files
    msg = error(write(d, upstream='[upstream]\nport = 5432\n'))
    assert "upstream.host" in msg and "required" in msg


def test_empty_upstream_host(files):
    d, _ = files
    assert "upstream.host" in error(write(d, upstream='[upstream]\nhost = ""\n'))


def test_bad_sslmode(files):
    d, _ = files
    msg = error(write(d, upstream=UPSTREAM.replace('"prefer"', '"verify-ca-please"')))
    assert "upstream.sslmode" in msg and "verify-ca-please" in msg and "verify-full" in msg


def test_tls_cert_without_key(files):
    d, _ = files
    msg = error(write(d, server=SERVER + 'tls_cert = "tls/server.crt"\n'))
    assert "server.tls_cert" in msg and "server.tls_key" in msg


def test_tls_key_without_cert(files):
    d, _ = files
    msg = error(write(d, server=SERVER + 'tls_key = "tls/server.key"\n'))
    assert "server.tls_cert" in msg and "server.tls_key" in msg


def test_tls_cert_file_missing(files):
    d, _ = files
    msg = error(write(d, server=SERVER + 'tls_cert = "tls/nope.crt"\ntls_key = "tls/server.key"\n'))
    assert "server.tls_cert" in msg and "nope.crt" in msg


def test_password_env_not_set(files):
    d, _ = files
    msg = error(write(d), env={})
    assert "scopes.write.password_env" in msg and "PGW_TEST_WRITE_PW" in msg
    assert "write-pw" not in msg


def test_password_file_missing(files):
    d, _ = files
    msg = error(write(d, scopes=SCOPES.replace("secrets/read", "secrets/missing")))
    assert "scopes.read.password_file" in msg and "missing" in msg


def test_password_env_and_file_both(files):
    d, _ = files
    scopes = '[scopes.read]\nrole = "r"\npassword_file = "secrets/read"\npassword_env = "X"\n'
    msg = error(write(d, scopes=scopes))
    assert "scopes.read" in msg and "password_env" in msg and "password_file" in msg


@pytest.mark.parametrize("section, text, needles", [
    ("server", SERVER + "listen_hots = \"127.0.0.1\"\n", ["server", "listen_hots"]),
    ("tokens", TOKENS.replace("[tokens.public_keys]", 'audiance = "x"\n[tokens.public_keys]'), ["tokens", "audiance"]),
    ("upstream", UPSTREAM + "sslmod = \"require\"\n", ["upstream", "sslmod"]),
    ("scopes", SCOPES + "raed_only = true\n", ["scopes.write", "raed_only"]),
])
def test_unknown_key(files, section, text, needles):
    d, _ = files
    msg = error(write(d, **{section: text}))
    for needle in needles:
        assert needle in msg, msg


def test_unknown_section(files):
    d, _ = files
    msg = error(write(d, extra='[sevrer]\nlisten_port = 1\n'))
    assert "sevrer" in msg


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "db-proxy.example.com"])
def test_non_loopback_listen_without_tls(files, host):
    d, _ = files
    msg = error(write(d, server=SERVER.replace('"127.0.0.1"', f'"{host}"')))
    assert "server.listen_host" in msg and host in msg and "tls_cert" in msg


def test_non_loopback_listen_with_tls_or_require_never(files):
    d, _ = files
    tls = 'tls_cert = "tls/server.crt"\ntls_key = "tls/server.key"\n'
    assert load(write(d, server=SERVER.replace('"127.0.0.1"', '"0.0.0.0"') + tls), env=ENV).listen_host == "0.0.0.0"
    never = SERVER.replace('"127.0.0.1"', '"0.0.0.0"') + 'require_tls = "never"\n'
    assert load(write(d, server=never), env=ENV).require_tls == "never"


@pytest.mark.parametrize("line, key", [
    ('listen_port = "6432"', "server.listen_port"),
    ("listen_port = 70000", "server.listen_port"),
    ("startup_timeout = 0", "server.startup_timeout"),
    ("connect_timeout = -1", "server.connect_timeout"),
    ("connect_timeout = true", "server.connect_timeout"),
    ("max_message_size = 10", "server.max_message_size"),
    ("max_message_size = 2147483647", "server.max_message_size"),
    ("workers = 0", "server.workers"),
    ('require_tls = "sometimes"', "server.require_tls"),
])
def test_bad_server_values(files, line, key):
    d, _ = files
    server = "\n".join(x for x in SERVER.splitlines() if not x.startswith(line.split(" ")[0])) + "\n" + line + "\n"
    assert key in error(write(d, server=server))


def test_upstream_port_out_of_range(files):
    d, _ = files
    assert "upstream.port" in error(write(d, upstream=UPSTREAM.replace("5432", "0")))


def test_public_keys_missing_or_absent_file(files):
    d, _ = files
    assert "tokens.public_keys" in error(write(d, tokens='[tokens]\naudience = "x"\n'))
    msg = error(write(d, tokens=TOKENS.replace("keys/k1.pub.pem", "keys/nope.pub.pem")))
    assert "tokens.public_keys.k1" in msg and "nope.pub.pem" in msg


def test_scopes_required_and_role_required(files):
    d, _ = files
    assert "scopes" in error(write(d, scopes=""))
    assert "scopes.read.role" in error(write(d, scopes='[scopes.read]\npassword_file = "secrets/read"\n'))
    assert "scopes.read.read_only" in error(write(d, scopes=SCOPES.replace(
        'password_file = "secrets/read"', 'password_file = "secrets/read"\nread_only = "yes"')))


def test_verify_full_over_unix_socket(files):
    d, _ = files
    msg = error(write(d, upstream='[upstream]\nhost = "/var/run/postgresql"\nsslmode = "verify-full"\n'))
    assert "upstream.sslmode" in msg


def test_not_toml_and_missing_file(files):
    d, _ = files
    bad = d / "bad.toml"
    bad.write_text("[server\nlisten_port = ")
    assert "not valid TOML" in error(bad) and str(bad) in error(bad)
    assert "does not exist" in error(d / "nope.toml")


# --------------------------------------------------------------------------- the CLI


def _pgwarden(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PGW_TEST_WRITE_PW"}
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


@pytest.mark.parametrize("case, needle", [
    ("no_host", "upstream.host"),
    ("bad_sslmode", "upstream.sslmode"),
    ("cert_no_key", "server.tls_key"),
    ("env_unset", "PGW_TEST_WRITE_PW"),
    ("unknown_key", "listen_hots"),
    ("public_listen", "server.listen_host"),
])
def test_serve_exits_nonzero_naming_the_key(files, case, needle):
    d, _ = files
    kwargs = {
        "no_host": {"upstream": "[upstream]\nport = 5432\n"},
        "bad_sslmode": {"upstream": UPSTREAM.replace('"prefer"', '"nope"')},
        "cert_no_key": {"server": SERVER + 'tls_cert = "tls/server.crt"\n'},
        "env_unset": {},
        "unknown_key": {"server": SERVER + 'listen_hots = "x"\n'},
        "public_listen": {"server": SERVER.replace('"127.0.0.1"', '"0.0.0.0"')},
    }[case]
    path = write(d, **kwargs)
    bad = path.rename(d / "bad.toml")
    proc = _pgwarden("serve", "--config", str(bad))
    assert proc.returncode != 0
    assert "invalid configuration" in proc.stderr and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_serve_missing_config_file(tmp_path):
    proc = _pgwarden("serve", "--config", str(tmp_path / "absent.toml"))
    assert proc.returncode != 0 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_check_config(files):
    d, _ = files
    good = write(d)
    env_ok = subprocess.run([sys.executable, "-m", "proxy", "check-config", "--config", str(good)],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **ENV})
    assert env_ok.returncode == 0 and "ok" in env_ok.stdout, env_ok.stderr
    proc = _pgwarden("check-config", "--config", str(good))
    assert proc.returncode != 0 and "scopes.write.password_env" in proc.stderr


# --------------------------------------------------------------------------- scope classes, classifier lists, shadow mode


def test_default_scopes_get_policys_classes(files):
    from policy.scopes import DEFAULT_SCOPES

    d, _ = files
    cfg = load(write(d, scopes=SCOPES + '[scopes.ddl]\nrole = "pgw_ddl"\npassword_env = "PGW_TEST_WRITE_PW"\n'),
               env=ENV)
    for name in ("read", "write", "ddl"):
        assert cfg.policy_scopes[name].classes == DEFAULT_SCOPES[name].classes
    assert cfg.scopes["read"].read_only and not cfg.scopes["ddl"].read_only
    assert cfg.upstream.enforce is True


def test_scope_classes_are_configurable(files):
    from policy.sql.classes import StatementClass as C

    d, _ = files
    scopes = SCOPES + ('[scopes.analyst]\nrole = "pgw_read"\npassword_file = "secrets/read"\n'
                       'classes = ["read", "transaction"]\n'
                       '[scopes.loader]\nrole = "pgw_write"\npassword_env = "PGW_TEST_WRITE_PW"\n'
                       'classes = ["READ", "write", "transaction"]\n'
                       '[scopes.read_tight]\nrole = "pgw_read"\npassword_file = "secrets/read"\n'
                       'classes = ["read"]\n')
    cfg = load(write(d, scopes=scopes), env=ENV)
    assert cfg.policy_scopes["analyst"].classes == {C.READ, C.TRANSACTION}
    assert cfg.policy_scopes["loader"].classes == {C.READ, C.WRITE, C.TRANSACTION}
    assert cfg.policy_scopes["read_tight"].classes == {C.READ}
    # read_only follows the classes: no write/ddl/two-phase class -> the session starts read-only
    assert cfg.scopes["analyst"].read_only and cfg.scopes["read_tight"].read_only
    assert not cfg.scopes["loader"].read_only


def test_write_scope_can_be_narrowed(files):
    from policy.sql.classes import StatementClass as C

    d, _ = files
    cfg = load(write(d, scopes=SCOPES.replace('password_env = "PGW_TEST_WRITE_PW"\n',
                                              'password_env = "PGW_TEST_WRITE_PW"\nclasses = ["read"]\n')), env=ENV)
    assert cfg.policy_scopes["write"].classes == {C.READ}
    assert cfg.scopes["write"].read_only


@pytest.mark.parametrize("classes, needles", [
    (None, ["scopes.custom.classes", "required"]),
    ('["read", "admin"]', ["scopes.custom.classes", "admin", "never"]),
    ('["read", "unknown"]', ["scopes.custom.classes", "unknown", "never"]),
    ('["read", "superpowers"]', ["scopes.custom.classes", "superpowers", "one of"]),
    ('[]', ["scopes.custom.classes", "non-empty list"]),
    ('"read"', ["scopes.custom.classes", "list"]),
])
def test_scope_classes_errors_name_the_key(files, classes, needles):
    d, _ = files
    extra = '[scopes.custom]\nrole = "r"\npassword_env = "PGW_TEST_WRITE_PW"\n'
    if classes is not None:
        extra += f"classes = {classes}\n"
    msg = error(write(d, scopes=SCOPES + extra))
    for needle in needles:
        assert needle in msg, msg


def test_read_only_false_refused_for_a_read_only_scope(files):
    d, _ = files
    msg = error(write(d, scopes=SCOPES.replace('password_file = "secrets/read"\n',
                                               'password_file = "secrets/read"\nread_only = false\n')))
    assert "scopes.read.read_only" in msg and "read-only" in msg, msg


def test_read_only_true_may_narrow_a_write_scope(files):
    d, _ = files
    cfg = load(write(d, scopes=SCOPES + 'read_only = true\n'), env=ENV)
    assert cfg.scopes["write"].read_only is True


def test_shadow_mode_flag(files):
    d, _ = files
    assert load(write(d, upstream=UPSTREAM + "enforce = false\n"), env=ENV).upstream.enforce is False
    msg = error(write(d, upstream=UPSTREAM + 'enforce = "no"\n'))
    assert "upstream.enforce" in msg and "shadow" in msg, msg


def test_classifier_lists_extend_the_catalog(files):
    from policy.sql.classes import StatementClass as C
    from policy.sql.classify import classify

    d, _ = files
    extra = ('[classifier]\nreadsafe_functions = ["reports.monthly_totals"]\n'
             'write_functions = ["audit.log_event"]\nadmin_functions = ["app.run_sql", "pg_sleep"]\n'
             'harmless_settings = ["work_mem"]\nguarded_settings = ["app.tenant"]\n')
    cfg = load(write(d, extra=extra), env=ENV)
    cat = cfg.catalog

    def cls(sql):
        return classify(sql, catalog=cat).statements[0].statement_class

    assert cls("SELECT reports.monthly_totals()") is C.READ
    assert classify("SELECT reports.monthly_totals()").statements[0].statement_class is C.WRITE   # built-in: unvouched
    assert cls("SELECT audit.log_event('x')") is C.WRITE
    assert cls("SELECT app.run_sql('delete from t')") is C.ADMIN
    assert cls("SELECT pg_sleep(1)") is C.ADMIN                # the operator may deny a vouched built-in
    assert cls("SET app.tenant = 'other'") is C.ADMIN
    assert classify("SET app.tenant = 'other'").statements[0].statement_class is C.TRANSACTION
    # the operator's guarded settings are refused in the startup packet too
    from policy.startup import StartupRefused, filter_startup
    with pytest.raises(StartupRefused, match="app.tenant"):
        filter_startup({"user": "u", "options": "-c app.tenant=other"}, cat)
    assert filter_startup({"user": "u", "options": "-c app.tenant=other"}) == {"app.tenant": "other"}


def test_classifier_cannot_lift_a_deny_list(files):
    from policy.sql.classes import StatementClass as C
    from policy.sql.classify import classify

    d, _ = files
    cfg = load(write(d, extra='[classifier]\nreadsafe_functions = ["pg_read_file", "nextval"]\n'), env=ENV)
    assert classify("SELECT pg_read_file('/etc/passwd')", catalog=cfg.catalog).statements[0].statement_class is C.ADMIN
    assert classify("SELECT nextval('s')", catalog=cfg.catalog).statements[0].statement_class is C.WRITE


@pytest.mark.parametrize("extra, needle", [
    ('[classifier]\nadmin_functions = "dblink"\n', "classifier.admin_functions"),
    ('[classifier]\nwrite_functions = [1]\n', "classifier.write_functions"),
    ('[classifier]\nreadsafe_function = ["x"]\n', "classifier: unknown key"),
    ('[classifier]\nallow_custom_settings = "yes"\n', "classifier.allow_custom_settings"),
])
def test_classifier_errors_name_the_key(files, extra, needle):
    d, _ = files
    assert needle in error(write(d, extra=extra))


def test_without_classifier_section_the_builtin_catalog(files):
    from policy.sql.catalog import DEFAULT_CATALOG

    d, _ = files
    assert load(write(d), env=ENV).catalog is DEFAULT_CATALOG
