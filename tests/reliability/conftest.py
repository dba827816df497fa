"""Shared pieces of the reliability suite: the table recorder, log capture, leak counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import RunningServer
from tests.reliability.report import Row

HERE = Path(__file__).resolve().parent
_rows: dict[tuple[str, str], Row] = {}
_outcomes: dict[str, str] = {}
_state: dict[str, Any] = {"complete": False}


# -- the table ---------------------------------------------------------------------------


class Recorder:
    def __init__(self, test: str) -> None:
        self.test = test

    def __call__(self, area: str, name: str, tries: int, result: str) -> None:
        assert area in ("fault", "hostile")
        _rows[(self.test, name)] = Row(area, name, tries, result, self.test)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Recorder:
    """record(area, name, tries, result): call once the assertions about it have passed."""
    return Recorder(request.node.originalname or request.node.name)


def recorded_rows() -> list[Row]:
    return list(_rows.values())


def suite_complete() -> bool:
    """Every test module of this folder was collected, nothing deselected, all passed."""
    return bool(_state["complete"]) and all(
        outcome == "passed"
        for nodeid, outcome in _outcomes.items()
        if "test_zz_report" not in nodeid
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    mine = [item for item in items if Path(str(item.fspath)).parent == HERE]
    modules = {Path(str(item.fspath)).name for item in mine}
    expected = {path.name for path in HERE.glob("test_*.py")}
    _state["complete"] = bool(mine) and modules == expected
    _state["collected"] = {item.nodeid for item in mine}


def pytest_deselected(items: list[pytest.Item]) -> None:
    if any(Path(str(item.fspath)).parent == HERE for item in items):
        _state["complete"] = False


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _state.get("collected", ()):
        return
    if report.when == "call" or report.outcome != "passed":
        if _outcomes.get(report.nodeid) in ("failed", "skipped") and report.when == "teardown":
            return
        expected_failure = getattr(report, "wasxfail", None) is not None
        _outcomes[report.nodeid] = "passed" if expected_failure else report.outcome


# -- waiting for events ------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = ""
) -> None:
    """Wait for a condition of the running system (polled; never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


# -- logs ----------------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """Every record of the server's loggers while attached (uvicorn, opspush, asyncio)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self) -> list[str]:
        """ERROR records and tracebacks: what must never appear.

        asyncpg's pool logs its own reconnection attempts at WARNING with a traceback while
        the database is away: expected during a database fault, and not an ERROR.
        """
        bad = []
        for record in self.records:
            traceback = record.exc_info and not record.name.startswith("asyncpg")
            if record.levelno >= logging.ERROR or traceback:
                bad.append(f"{record.name} {record.levelname}: {self.format(record)}")
        return bad

    def text(self) -> str:
        return "\n".join(self.format(record) for record in self.records)

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, "server logged errors:\n" + "\n".join(problems)


@contextlib.contextmanager
def watch_logs(verbose: bool = False) -> Iterator[LogWatch]:
    """Attach after the server started: uvicorn's logging config replaces handlers then."""
    handler = LogWatch()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    levels = {}
    if verbose:
        for name in ("opspush", "uvicorn.error"):
            logger = logging.getLogger(name)
            levels[name] = logger.level
            # INFO, the production level (DEBUG has its own test:
            # test_debug_logs_hold_no_secrets).
            logger.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# -- leaks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    tasks: int
    sessions: int
    per_user: int
    per_address: int
    watches: int
    fds: int
    server_sockets: int

    def __str__(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.__dict__.items())


def server_sockets(server: RunningServer) -> int:
    """Open TCP connections on the server's port, server side (this process holds both ends)."""
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.laddr and conn.laddr.port == server.port and conn.status != psutil.CONN_LISTEN
    )


def counts(server: RunningServer) -> Counts:
    service = server.service
    return Counts(
        tasks=len(asyncio.all_tasks()),
        sessions=len(service.sessions),
        per_user=sum(service.per_user.values()),
        per_address=sum(service.per_address.values()),
        watches=len(service.engine.watches),
        # The server's pool may have grown meanwhile (reads of several kinds run at once):
        # its connections are not a leak, so they are not counted.
        fds=psutil.Process().num_fds() - service.pool.get_size(),
        server_sockets=server_sockets(server),
    )


async def assert_no_leak(
    server: RunningServer, before: Counts, timeout: float = 20.0, fd_slack: int = 0
) -> Counts:
    """Wait until every count is back to (at most) its value before the fault.

    `fd_slack`: after a database restart the test's own factory pool (in this process too)
    may hold a different number of connections; the server's sockets are counted exactly.
    """

    def back() -> bool:
        now = counts(server)
        slack = {"fds": fd_slack}
        return all(
            getattr(now, key) <= getattr(before, key) + slack.get(key, 0) for key in before.__dict__
        )

    try:
        await wait_until(back, timeout, "counts back to their baseline")
    except AssertionError:
        raise AssertionError(f"leak: before {before}; after {counts(server)}") from None
    return counts(server)
