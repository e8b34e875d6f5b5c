"""Errors in plain words, each naming what went wrong and how to fix it."""


class QdibkrError(Exception):
    """Base of every error qdibkr raises on purpose."""


class InputError(QdibkrError, ValueError):
    """Bad input from the user: names the field and the fix; nothing was changed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownOrder(InputError):
    """No open order of this client has that id (the HTTP API answers 404)."""


class ConnectError(QdibkrError, ConnectionError):
    """TWS / IB Gateway could not be reached, or refused us (``code``: TWS's error code, if it said one)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class NotConnectedError(QdibkrError, ConnectionError):
    """An operation needs a connection and there is none."""


class LiveTradingRefused(QdibkrError):
    """A live port or live account without the explicit opt-in."""


class TWSError(QdibkrError):
    """An error TWS reported, with its code and our explanation."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class ContractError(TWSError):
    """IB has no such contract (error 200)."""


class OrderRejected(TWSError):
    """TWS rejected an order (error 201 and friends); the message carries IB's reason."""


class PacingError(TWSError):
    """IB's pacing limits were hit (errors 100, 162)."""
