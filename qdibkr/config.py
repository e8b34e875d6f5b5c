"""Connection settings: where TWS / IB Gateway listens, which client id and account.

Each setting comes from the first place that has it: an explicit argument, an
environment variable (``QDIBKR_HOST``, ``QDIBKR_PORT``, ``QDIBKR_CLIENT_ID``,
``QDIBKR_ACCOUNT``, ``QDIBKR_PRESET``, ``QDIBKR_LIVE``), the config file
(``QDIBKR_CONFIG``, else ``~/.config/qdibkr/config.toml``, section
``[connection]``), then the defaults: 127.0.0.1, port 7497 (TWS paper),
client id 1, the first managed account.

Paper is the default everywhere. A live port, or an account whose id does not
start with ``DU`` (IB's paper accounts), needs ``live=True`` / ``--live``.
"""

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, LiveTradingRefused

# IB's documented default API ports.
PRESETS = {"tws-paper": 7497, "tws-live": 7496, "gateway-paper": 4002, "gateway-live": 4001}
LIVE_PORTS = {PRESETS["tws-live"], PRESETS["gateway-live"]}
PRESET_LIST = ", ".join(f"{name} {port}" for name, port in PRESETS.items())
DEFAULT_CONFIG = Path("~/.config/qdibkr/config.toml")
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = PRESETS["tws-paper"]
    client_id: int = 1
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


def config_file() -> dict:
    path = Path(os.environ.get("QDIBKR_CONFIG") or DEFAULT_CONFIG).expanduser()
    if not path.exists():
        return {}
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
                  live=None, timeout=None) -> Settings:
    """Resolve every setting: arguments, then environment, then config file, then defaults."""
    env = os.environ
    file = config_file().get("connection", {})

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

    client = pick(client_id, "QDIBKR_CLIENT_ID", "client_id")
    live_value = pick(live, "QDIBKR_LIVE", "live")
    return Settings(
        host=str(pick(host, "QDIBKR_HOST", "host") or Settings.host),
        port=resolved_port,
        client_id=Settings.client_id if client is None else _int(client, "client_id"),
        account=str(pick(account, "QDIBKR_ACCOUNT", "account") or ""),
        live=live_value if isinstance(live_value, bool) else str(live_value or "").lower() in TRUE,
        timeout=float(timeout if timeout is not None else file.get("timeout", Settings.timeout)),
    )
