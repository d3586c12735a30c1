"""Load and validate pgwarden.toml into frozen dataclasses.

Every error names the key (as a dotted path) and what is wrong, so an
operator can fix the file without reading code. Relative paths resolve
against the config file's directory. Secrets are read here, once: a scope's
password comes from password_env or password_file, never inline.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; str() is the message shown to the operator."""


SSLMODES = ("disable", "prefer", "require", "verify-full")
REQUIRE_TLS = ("always", "off-loopback", "never")


@dataclass(frozen=True)
class ScopeConfig:
    name: str
    role: str
    password: str | None
    read_only: bool
    classes: tuple[str, ...] = ()        # statement classes the scope allows (policy.scopes names)


@dataclass(frozen=True)
class UpstreamConfig:
    host: str
    port: int
    sslmode: str
    sslrootcert: Path | None
    databases: dict[str, str] | None     # client db -> upstream db; None: pass through
    enforce: bool = True                 # False: shadow mode, would-be denials are logged and let through

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    def upstream_database(self, client_db: str) -> str | None:
        if self.databases is None:
            return client_db
        return self.databases.get(client_db)


@dataclass(frozen=True)
class Config:
    path: Path | None
    listen_host: str
    listen_port: int
    tls_cert: Path | None
    tls_key: Path | None
    require_tls: str
    startup_timeout: float
    connect_timeout: float
    max_message_size: int
    workers: int
    max_statement_length: int
    expiry_warnings: tuple[float, ...]
    drain_timeout: float
    audience: str
    public_keys: dict[str, Path]
    signing_key: Path | None
    signing_kid: str | None
    upstream: UpstreamConfig
    scopes: dict[str, ScopeConfig] = field(default_factory=dict)
    grants: Any = None                   # proxy.store.config.GrantsConfig when [grants] is present
    audit: Any = None                    # proxy.audit.config.AuditConfig when [audit] is present
    metrics_listen: str | None = None    # "host:port" of the Prometheus endpoint, None: off
    catalog: Any = None                  # policy.sql.catalog.Catalog with the operator's [classifier] lists

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def policy_scopes(self):
        """The configured scopes as policy.scopes.Scope values (name -> Scope)."""
        from policy.scopes import build_scopes
        return build_scopes({name: sc.classes for name, sc in self.scopes.items()})


_KNOWN = {
    "server": {"listen_host", "listen_port", "tls_cert", "tls_key", "require_tls", "startup_timeout",
               "connect_timeout", "max_message_size", "workers", "max_statement_length",
               "expiry_warnings", "drain_timeout", "metrics_listen"},
    "tokens": {"audience", "public_keys", "signing_key", "signing_kid"},
    "upstream": {"host", "port", "sslmode", "sslrootcert", "databases", "enforce"},
    "scope": {"role", "password_env", "password_file", "read_only", "classes"},
    "classifier": {"readsafe_functions", "write_functions", "admin_functions", "operators",
                   "harmless_settings", "guarded_settings", "allow_custom_settings"},
}


def read_toml(path: str | Path) -> dict[str, Any]:
    """The whole TOML document at ``path``; a missing, unreadable or invalid file is a ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load(path: str | Path, *, env: dict[str, str] | None = None) -> Config:
    path = Path(path)
    raw = read_toml(path)
    return from_dict(raw, base=path.resolve().parent, path=path, env=os.environ if env is None else env)


def from_dict(raw: dict, *, base: Path, path: Path | None = None, env=None) -> Config:
    env = os.environ if env is None else env
    unknown = set(raw) - {"server", "tokens", "upstream", "scopes", "grants", "audit", "classifier"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; "
                          "expected server, tokens, upstream, scopes, classifier, grants, audit")
    server = _table(raw, "server")
    tokens = _table(raw, "tokens")
    up = _table(raw, "upstream")
    _check_keys(server, "server", _KNOWN["server"])
    _check_keys(tokens, "tokens", _KNOWN["tokens"])
    _check_keys(up, "upstream", _KNOWN["upstream"])

    def p(value, key):
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a file path string")
        q = Path(value)
        return q if q.is_absolute() else base / q

    tls_cert = p(server.get("tls_cert"), "server.tls_cert")
    tls_key = p(server.get("tls_key"), "server.tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("server.tls_cert and server.tls_key must be set together")
    for key, fp in (("server.tls_cert", tls_cert), ("server.tls_key", tls_key)):
        if fp is not None and not fp.is_file():
            raise ConfigError(f"{key}: file {fp} does not exist")
    require_tls = _str(server, "require_tls", "server", "off-loopback")
    if require_tls not in REQUIRE_TLS:
        raise ConfigError(f"server.require_tls: must be one of {', '.join(REQUIRE_TLS)}, not {require_tls!r}")
    listen_host = _str(server, "listen_host", "server", "127.0.0.1")
    if require_tls != "never" and tls_cert is None and not _is_loopback(listen_host):
        raise ConfigError(
            f"server.listen_host is {listen_host!r} (not loopback) but no TLS certificate is configured: "
            "set server.tls_cert and server.tls_key, or server.require_tls = \"never\"")

    public_keys_raw = tokens.get("public_keys")
    if not isinstance(public_keys_raw, dict) or not public_keys_raw:
        raise ConfigError("tokens.public_keys: required table of kid = \"path/to/key.pub.pem\"")
    public_keys = {}
    for kid, fp in public_keys_raw.items():
        fpp = p(fp, f"tokens.public_keys.{kid}")
        if not fpp.is_file():
            raise ConfigError(f"tokens.public_keys.{kid}: file {fpp} does not exist")
        public_keys[kid] = fpp

    sslmode = _str(up, "sslmode", "upstream", "prefer")
    if sslmode not in SSLMODES:
        raise ConfigError(f"upstream.sslmode: must be one of {', '.join(SSLMODES)}, not {sslmode!r}")
    databases = up.get("databases")
    if databases is not None:
        if not isinstance(databases, dict) or not all(isinstance(v, str) for v in databases.values()):
            raise ConfigError("upstream.databases: expected a table of client_name = \"upstream_name\"")
    host = _str(up, "host", "upstream", None)
    if not host:
        raise ConfigError("upstream.host: required (a host name, IP address or unix-socket directory)")
    enforce = up.get("enforce", True)
    if not isinstance(enforce, bool):
        raise ConfigError("upstream.enforce: expected true (deny statements outside the scope) or false "
                          "(shadow mode: log would-be denials and let them through)")
    upstream = UpstreamConfig(
        host=host,
        port=_int(up, "port", "upstream", 5432, 1, 65535),
        sslmode=sslmode,
        sslrootcert=p(up.get("sslrootcert"), "upstream.sslrootcert"),
        databases=dict(databases) if databases is not None else None,
        enforce=enforce,
    )
    if sslmode == "verify-full" and upstream.is_unix:
        raise ConfigError("upstream.sslmode: verify-full makes no sense over a unix socket")

    scopes_raw = raw.get("scopes")
    if not isinstance(scopes_raw, dict) or not scopes_raw:
        raise ConfigError("scopes: at least one [scopes.NAME] table is required (read, write, ddl)")
    scopes = {}
    for name, t in scopes_raw.items():
        key = f"scopes.{name}"
        if not isinstance(t, dict):
            raise ConfigError(f"{key}: expected a table")
        _check_keys(t, key, _KNOWN["scope"])
        role = _str(t, "role", key, None)
        if not role:
            raise ConfigError(f"{key}.role: required (the upstream role this scope logs in as)")
        if "password_env" in t and "password_file" in t:
            raise ConfigError(f"{key}: set password_env or password_file, not both")
        password = None
        if "password_env" in t:
            var = _str(t, "password_env", key, None)
            if var not in env:
                raise ConfigError(f"{key}.password_env: environment variable {var} is not set")
            password = env[var]
        elif "password_file" in t:
            fp = p(t["password_file"], f"{key}.password_file")
            try:
                password = fp.read_text().rstrip("\r\n")
            except OSError as e:
                raise ConfigError(f"{key}.password_file: cannot read {fp}: {e.strerror}") from None
        classes = _scope_classes(t, key, name)
        derived = _policy_scope(name, classes, key).read_only
        read_only = t.get("read_only", derived)
        if not isinstance(read_only, bool):
            raise ConfigError(f"{key}.read_only: expected true or false")
        if derived and not read_only:
            raise ConfigError(f"{key}.read_only: the scope allows no write, two-phase or ddl statement, so its "
                              "sessions always start read-only; read_only = false is not allowed")
        scopes[name] = ScopeConfig(name, role, password, read_only, classes)

    catalog = _classifier_catalog(raw.get("classifier"))
    signing_key = p(tokens.get("signing_key"), "tokens.signing_key")
    from .audit.config import from_table as audit_from_table
    from .store.config import grants_config_from_dict
    grants = grants_config_from_dict(raw, path=path, base=base) if "grants" in raw else None
    audit = audit_from_table(raw.get("audit"), base=base)
    metrics_listen = _str(server, "metrics_listen", "server", None)
    if metrics_listen is not None:
        mhost, _, mport = metrics_listen.rpartition(":")
        if not mhost or not mport.isdigit() or not 0 <= int(mport) <= 65535:
            raise ConfigError(f"server.metrics_listen: expected \"host:port\" (e.g. \"127.0.0.1:9187\"), "
                              f"got {metrics_listen!r}")
    return Config(
        path=path,
        listen_host=listen_host,
        listen_port=_int(server, "listen_port", "server", 6432, 0, 65535),
        tls_cert=tls_cert,
        tls_key=tls_key,
        require_tls=require_tls,
        startup_timeout=_num(server, "startup_timeout", "server", 30.0),
        connect_timeout=_num(server, "connect_timeout", "server", 10.0),
        max_message_size=_int(server, "max_message_size", "server", 64 << 20, 1024, 1 << 30),
        workers=_int(server, "workers", "server", 1, 1, 256),
        max_statement_length=_int(server, "max_statement_length", "server", 65536, 64, 16 << 20),
        expiry_warnings=_warnings(server.get("expiry_warnings", [300, 60])),
        drain_timeout=_num(server, "drain_timeout", "server", 30.0),
        audience=_str(tokens, "audience", "tokens", "pgwarden"),
        public_keys=public_keys,
        signing_key=signing_key,
        signing_kid=_str(tokens, "signing_kid", "tokens", None),
        upstream=upstream,
        scopes=scopes,
        grants=grants,
        audit=audit,
        metrics_listen=metrics_listen,
        catalog=catalog,
    )


def _scope_classes(t: dict, key: str, name: str) -> tuple[str, ...]:
    """A scope's statement classes: `classes = [...]`, or policy's default for read, write and ddl."""
    from policy.scopes import DEFAULT_SCOPES
    from policy.sql.classes import RANK
    raw = t.get("classes")
    if raw is None:
        default = DEFAULT_SCOPES.get(name)
        if default is None:
            known = ", ".join(DEFAULT_SCOPES)
            raise ConfigError(f"{key}.classes: required for a scope not named {known} "
                              "(e.g. classes = [\"read\", \"transaction\"])")
        return tuple(c.value for c in sorted(default.classes, key=RANK.__getitem__))
    if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
        raise ConfigError(f"{key}.classes: expected a non-empty list of statement classes, "
                          "e.g. [\"read\", \"transaction\"]")
    _policy_scope(name, raw, key)
    return tuple(dict.fromkeys(c.strip().lower() for c in raw))


def _policy_scope(name: str, classes, key: str):
    from policy.scopes import build_scopes
    try:
        return build_scopes({name: list(classes)})[name]
    except ValueError as e:
        raise ConfigError(f"{key}.classes: {e}") from None


_CATALOG_LISTS = ("readsafe_functions", "write_functions", "admin_functions", "operators",
                  "harmless_settings", "guarded_settings")


def _classifier_catalog(t):
    """policy's built-in catalog extended with the operator's [classifier] lists."""
    from policy.sql.catalog import DEFAULT_CATALOG
    if t is None:
        return DEFAULT_CATALOG
    if not isinstance(t, dict):
        raise ConfigError("classifier: expected a table [classifier]")
    _check_keys(t, "classifier", _KNOWN["classifier"])
    lists = {}
    for name in _CATALOG_LISTS:
        value = t.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"classifier.{name}: expected a list of names (\"name\" or \"schema.name\")")
        lists[name] = [v.strip() for v in value]
    custom = t.get("allow_custom_settings")
    if custom is not None and not isinstance(custom, bool):
        raise ConfigError("classifier.allow_custom_settings: expected true or false")
    return DEFAULT_CATALOG.extended(**lists, allow_custom_settings=custom)


def _warnings(value) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                              for v in value):
        raise ConfigError("server.expiry_warnings: expected a list of positive numbers of seconds before expiry, "
                          f"e.g. [300, 60]; got {value!r}")
    return tuple(sorted({float(v) for v in value}, reverse=True))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _table(raw: dict, name: str) -> dict:
    t = raw.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{name}: expected a table [{name}]")
    return t


def _check_keys(t: dict, where: str, known: set[str]) -> None:
    extra = set(t) - known
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(known)}")


def _str(t: dict, key: str, where: str, default):
    v = t.get(key, default)
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{where}.{key}: expected a string, got {type(v).__name__}")
    return v


def _int(t: dict, key: str, where: str, default: int, lo: int, hi: int) -> int:
    v = t.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(f"{where}.{key}: expected an integer from {lo} to {hi}, got {v!r}")
    return v


def _num(t: dict, key: str, where: str, default: float) -> float:
    v = t.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive number of seconds, got {v!r}")
    return float(v)
