"""opspush: a WebSocket push service that replaces browser polling in an operations console."""

__version__ = "0.2.0"
