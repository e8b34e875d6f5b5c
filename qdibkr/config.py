"""The configuration, resolved once per process and passed down: ``load_config()`` / ``current()``.

Each setting comes from the first place that has it: an explicit argument, an
environment variable (``QDIBKR_HOST``, ``QDIBKR_PORT``, ``QDIBKR_CLIENT_ID``,
``QDIBKR_ACCOUNT``, ``QDIBKR_PRESET``, ``QDIBKR_LIVE``, ``QDIBKR_DB``), the config file
(``QDIBKR_CONFIG``, else ``~/.config/qdibkr/config.toml``: ``[connection]``,
``[queue] db``, ``[risk]``, ``[runner]``, ``[api]``, ``[widgets]``), then the
defaults: 127.0.0.1, port 7497 (TWS paper), the first managed account, the
queue at ``~/.local/share/qdibkr/queue.sqlite``.

Client ids: each face has its own default, so that they can all be connected at
once: the CLI 1, the HTTP API 2, the widgets 3, the Python API (``qdibkr.connect()``,
notebooks) 4, the runner 90. The CLI and Python take ``QDIBKR_CLIENT_ID`` or
``[connection] client_id``; the others ``QDIBKR_API_CLIENT_ID``,
``QDIBKR_WIDGETS_CLIENT_ID``, ``QDIBKR_RUNNER_CLIENT_ID`` or their section's ``client_id``.

Paper is the default everywhere. A live port, or an account whose id does not
start with ``DU`` (IB's paper accounts), needs ``live=True`` / ``--live``.

The ``[risk]`` limits are re-read when the config file changes (``RiskSource``): a
running runner or HTTP server needs no restart, and logs what changed.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, LiveTradingRefused
from .risk import RiskConfig, load_risk

log = logging.getLogger("qdibkr.config")

# IB's documented default API ports.
PRESETS = {"tws-paper": 7497, "tws-live": 7496, "gateway-paper": 4002, "gateway-live": 4001}
LIVE_PORTS = {PRESETS["tws-live"], PRESETS["gateway-live"]}
PRESET_LIST = ", ".join(f"{name} {port}" for name, port in PRESETS.items())
DEFAULT_CONFIG = Path("~/.config/qdibkr/config.toml")
DEFAULT_DB = Path("~/.local/share/qdibkr/queue.sqlite")
# Seconds a run may take, kernel start included, before it is stopped and recorded failed. A live
# strategy run takes about a second, a research run fetching a few years of bars through IB's
# pacing a few minutes; ten minutes is ample for both, yet frees a hung scheduled job well before
# its next slot (a daily one, or one every quarter of an hour) instead of holding it for ever.
RUN_TIMEOUT = 600.0
TRUE = ("1", "true", "yes", "on")
# Each face's own client id, so that all of them can be connected to one TWS at once.
CLIENT_IDS = {"cli": 1, "api": 2, "widgets": 3, "python": 4, "runner": 90}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = PRESETS["tws-paper"]
    client_id: int = CLIENT_IDS["python"]
    account: str = ""
    live: bool = False
    timeout: float = 4.0

    @property
    def live_port(self) -> bool:
        return self.port in LIVE_PORTS

    def check_port(self):
        """Refuse a live port unless live trading was asked for; nothing is sent before this."""
        if self.live_port and not self.live:
            name = next(n for n, p in PRESETS.items() if p == self.port)
            raise LiveTradingRefused(
                f"port {self.port} is IB's {name} port, which trades real money. qdibkr uses paper accounts "
                f"unless you opt in: pass live=True (--live on the command line, QDIBKR_LIVE=1 in the environment). "
                f"Paper ports: tws-paper {PRESETS['tws-paper']}, gateway-paper {PRESETS['gateway-paper']}.")

    def check_account(self, account: str):
        """Refuse a non-paper account (ids not starting with DU) unless live trading was asked for."""
        if not account.startswith("DU") and not self.live:
            raise LiveTradingRefused(
                f"account {account} is not a paper account (paper ids start with DU). To trade it, opt in "
                f"to live trading: live=True, --live, or QDIBKR_LIVE=1.")


def config_path() -> Path:
    return Path(os.environ.get("QDIBKR_CONFIG") or DEFAULT_CONFIG).expanduser()


def config_file(path: Path | None = None) -> dict:
    """The parsed config file ({} when there is none)."""
    path = path or config_path()
    if not path.exists():
        return {}
    import tomllib  # here, not at the top: without a config file the queue commands never parse TOML

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError("config", f"{path} is not valid TOML: {e}") from None


def preset_port(name: str, field: str = "preset") -> int:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise InputError(field, f"unknown preset {name!r}; presets are {PRESET_LIST}") from None


def _int(value, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(field, f"{value!r} is not a whole number") from None


def load_settings(host=None, port=None, client_id=None, account=None, preset=None,
                  live=None, timeout=None, face: str = "python", file: dict | None = None) -> Settings:
    """Resolve the connection settings of one face (see ``CLIENT_IDS``): arguments, then environment,
    then the config file (``file``, already parsed, or read now), then defaults."""
    env = os.environ
    parsed = config_file() if file is None else file
    file = parsed.get("connection", {})

    def pick(arg, env_name, file_key):
        if arg is not None:
            return arg
        if env.get(env_name):
            return env[env_name]
        return file.get(file_key)

    # A port given anywhere beats a preset from the same place; an argument beats both.
    if port is not None:
        resolved_port = _int(port, "port")
    elif preset is not None:
        resolved_port = preset_port(preset)
    elif env.get("QDIBKR_PORT"):
        resolved_port = _int(env["QDIBKR_PORT"], "QDIBKR_PORT")
    elif env.get("QDIBKR_PRESET"):
        resolved_port = preset_port(env["QDIBKR_PRESET"], "QDIBKR_PRESET")
    elif file.get("port") is not None:
        resolved_port = _int(file["port"], "port")
    elif file.get("preset"):
        resolved_port = preset_port(file["preset"])
    else:
        resolved_port = Settings.port
    if not 0 < resolved_port < 65536:
        raise InputError("port", f"{resolved_port} is not a TCP port; presets are {PRESET_LIST}")

    if face in ("cli", "python"):
        client = pick(client_id, "QDIBKR_CLIENT_ID", "client_id")
    else:
        client = client_id if client_id is not None else (
            env.get(f"QDIBKR_{face.upper()}_CLIENT_ID") or parsed.get(face, {}).get("client_id"))
    live_value = pick(live, "QDIBKR_LIVE", "live")
    return Settings(
        host=str(pick(host, "QDIBKR_HOST", "host") or Settings.host),
        port=resolved_port,
        client_id=CLIENT_IDS[face] if client is None else _int(client, "client_id"),
        account=str(pick(account, "QDIBKR_ACCOUNT", "account") or ""),
        live=live_value if isinstance(live_value, bool) else str(live_value or "").lower() in TRUE,
        timeout=float(timeout if timeout is not None else file.get("timeout", Settings.timeout)),
    )


@dataclass(frozen=True)
class Heartbeat:
    """When the runner probes a silent TWS, and how long it waits for a sign of life.

    Configured in the config file's ``[runner]`` section as ``heartbeat_interval``
    and ``heartbeat_timeout`` (seconds). A dead connection is noticed at most
    interval + timeout after TWS last sent anything."""

    interval: float = 10.0  # seconds without a message from TWS before the runner asks it something
    timeout: float = 5.0  # seconds to wait for any message after asking, before the connection counts as dead


def load_heartbeat(config: dict) -> Heartbeat:
    """The heartbeat settings of a parsed config file's ``[runner]`` section; defaults for those missing."""
    section = config.get("runner", {})
    values = {}
    for name in ("interval", "timeout"):
        key = f"heartbeat_{name}"
        if key in section:
            value = section[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"runner.{key}", f"{value!r} must be a number of seconds > 0")
            values[name] = float(value)
    return Heartbeat(**values)


def queue_location(file: dict, db=None) -> str:
    """Where the queue is: ``db`` given, else ``QDIBKR_DB``, else ``[queue] db``, else the default. A
    ``postgresql://`` URL names a PostgreSQL database; anything else a SQLite file (``~`` expanded)."""
    where = str(db or os.environ.get("QDIBKR_DB") or file.get("queue", {}).get("db") or DEFAULT_DB)
    return where if is_database_url(where) else str(Path(where).expanduser())


def is_database_url(where) -> bool:
    """Whether a queue's location names a PostgreSQL database (else it is a SQLite file's path)."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


class RiskSource:
    """The ``[risk]`` limits as they are now: re-read when the config file changes (its modification
    time is checked on each call, one ``stat``), or on ``reload()`` (the runner's SIGHUP). A file that
    no longer parses keeps the limits in force, with an error logged: a typo must not lift them."""

    def __init__(self, path: Path, risk: RiskConfig):
        self.path, self._risk = path, risk
        self._stamp = self._mtime()

    @classmethod
    def fixed(cls, risk: RiskConfig) -> "RiskSource":
        """Limits that never change (tests, the demo)."""
        source = cls(Path("/nonexistent/qdibkr-fixed-risk"), risk)
        source.reload = lambda: risk
        return source

    def _mtime(self):
        try:
            stat = self.path.stat()
            return stat.st_mtime_ns, stat.st_size
        except OSError:
            return None

    def __call__(self) -> RiskConfig:
        if self._mtime() != self._stamp:
            self.reload()
        return self._risk

    def reload(self) -> RiskConfig:
        self._stamp = self._mtime()
        try:
            new = load_risk(config_file(self.path))
        except InputError as e:
            log.error("risk limits NOT reloaded from %s, the previous ones stay in force: %s", self.path, e)
            return self._risk
        if new != self._risk:
            log.warning("risk limits reloaded from %s: %s", self.path, _differences(self._risk, new))
            self._risk = new
        return self._risk


def _differences(old: RiskConfig, new: RiskConfig) -> str:
    changes = []
    for name in ("limits", "on_breach", "outside_hours"):
        if getattr(old, name) != getattr(new, name):
            changes.append(f"{name} {getattr(old, name)} -> {getattr(new, name)}")
    if (old.strategies or {}) != (new.strategies or {}):
        changes.append(f"strategies {old.strategies or {}} -> {new.strategies or {}}")
    return "; ".join(changes)


@dataclass(frozen=True)
class Config:
    """Every setting of one process, resolved once (``load_config``) and passed down."""

    connection: Settings
    queue_db: str  # a SQLite file's path or a PostgreSQL URL
    risk: RiskSource = field(compare=False)
    heartbeat: Heartbeat
    file: dict = field(compare=False, repr=False)  # the parsed config file, for a face's own section

    def section(self, name: str) -> dict:
        return self.file.get(name, {})


def load_config(face: str = "python", db=None, **connection) -> Config:
    """Resolve the configuration of one face (cli, api, widgets, python, runner): the connection
    arguments and ``db`` given, then ``QDIBKR_*`` variables, then the config file, then defaults."""
    path = config_path()
    file = config_file(path)
    return Config(connection=load_settings(face=face, file=file, **connection), queue_db=queue_location(file, db),
                  risk=RiskSource(path, load_risk(file)), heartbeat=load_heartbeat(file), file=file)


_current: tuple[tuple, Config] | None = None


def current() -> Config:
    """This process's configuration, resolved on first use: what ``qdibkr.emit`` and the widgets use
    when given nothing else, so that they find the same queue as the CLI and the runner. Resolved
    again only if what locates it changes (``QDIBKR_CONFIG``, ``QDIBKR_DB``, the file itself)."""
    global _current
    path = config_path()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (path, stamp, os.environ.get("QDIBKR_DB"))
    if _current is None or _current[0] != key:
        _current = key, load_config()
    return _current[1]
