"""Wall displays, the pure parts (server/core/displays.py): codes, limits, decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import cycle

import pytest

from opspush.core import displays as rules
from opspush.core.access import CapabilityTable, UserFacts

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_the_alphabet_has_no_look_alikes_and_no_vowels() -> None:
    assert len(set(rules.ALPHABET)) == len(rules.ALPHABET) == 20
    assert not set(rules.ALPHABET) & set("AEIOUY0123456789")  # no vowels, no digits
    assert rules.ALPHABET.isupper() and rules.ALPHABET.isascii()


def test_a_new_code_is_eight_characters_of_the_alphabet_shown_as_two_fours() -> None:
    for _ in range(200):
        code = rules.new_user_code()
        assert len(code) == 8 and set(code) <= set(rules.ALPHABET)
        shown = rules.format_code(code)
        assert len(shown) == 9 and shown[4] == "-" and rules.normalize_code(shown) == code
    letters = cycle("BCD")
    assert rules.new_user_code(lambda _: next(letters)) == "BCDBCDBC"


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("BCDF-GHJK", "BCDFGHJK"),
        ("bcdf-ghjk", "BCDFGHJK"),
        (" bcdf ghjk ", "BCDFGHJK"),
        ("BCDFGHJK", "BCDFGHJK"),
        ("BCDF-GHJ", None),  # too short
        ("BCDF-GHJKL", None),  # too long
        ("BCDF-GHJA", None),  # a vowel: never in a code
        ("BCDF-GHJ0", None),  # a digit
        ("", None),
        (None, None),
        (12345678, None),
        ("B" * 100, None),
    ],
)
def test_a_typed_code_is_normalized_or_refused(typed: object, code: str | None) -> None:
    assert rules.normalize_code(typed) == code


def test_secrets_are_256_bits_and_stored_as_hashes() -> None:
    credential = rules.new_credential()
    assert credential.startswith("opd_") and len(credential) >= 4 + 43  # 32 bytes in base64url
    assert rules.new_credential() != credential
    assert rules.digest(credential) != credential and len(rules.digest(credential)) == 64
    assert rules.plausible_secret(credential) and not rules.plausible_secret("short")
    assert not rules.plausible_secret(None) and not rules.plausible_secret("é" * 30)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("NOC wall", "NOC wall"),
        ("  NOC  ", "NOC"),
        ("", None),
        ("   ", None),
        ("x" * 101, None),
        ("a\nb", None),
        (3, None),
        ("Salle d'opérations", "Salle d'opérations"),
    ],
)
def test_display_names(name: object, kept: str | None) -> None:
    assert rules.valid_name(name) == kept


@pytest.mark.parametrize(
    ("recent", "pending", "rate", "max_pending", "refusal"),
    [
        (0, 0, 10, 3, None),
        (9, 2, 10, 3, None),
        (10, 0, 10, 3, "rate_limited"),
        (3, 3, 10, 3, "too_many_pending"),
        (10, 3, 10, 3, "rate_limited"),  # the rate first
        (50, 0, 0, 3, None),  # 0: no rate limit
        (0, 50, 10, 0, None),  # 0: no pending limit
    ],
)
def test_pairing_limits_per_address(
    recent: int, pending: int, rate: int, max_pending: int, refusal: str | None
) -> None:
    assert rules.pairing_refusal(recent, pending, rate=rate, max_pending=max_pending) == refusal


def test_the_sliding_window_counts_only_the_last_seconds() -> None:
    times = [NOW - timedelta(seconds=s) for s in (0, 10, 59.9, 60, 61, 600)]
    assert rules.within_window(times, NOW, 60) == 3
    assert rules.within_window(times, NOW, 601) == 6
    assert rules.within_window([NOW + timedelta(seconds=5)], NOW, 60) == 0  # not in the past


@pytest.mark.parametrize(("failures", "blocked"), [(0, False), (4, False), (5, True), (9, True)])
def test_wrong_codes_per_approver(failures: int, blocked: bool) -> None:
    assert rules.approvals_blocked(failures) is blocked


LATER = NOW + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("pairing", "state"),
    [
        (None, "expired"),  # unknown: the same answer as expired
        (rules.Pairing(LATER, None, False), "pending"),
        (rules.Pairing(NOW, None, False), "expired"),
        (rules.Pairing(LATER, 7, False), "approved"),
        (rules.Pairing(NOW - timedelta(seconds=1), 7, False), "approved"),  # approved in time
        (rules.Pairing(LATER, 7, True), "expired"),  # single use
        (rules.Pairing(LATER, None, True), "expired"),
    ],
)
def test_the_state_of_a_pairing(pairing: rules.Pairing | None, state: str) -> None:
    assert rules.pairing_state(pairing, NOW) == state


CAPS = CapabilityTable(by_role={"viewer": frozenset({"operations.view"}), "guest": frozenset()})
DISPLAY = rules.Display(id=1, workspace_id=3, approver_id=7, revoked=False)


def facts(roles: dict[int, str], exists: bool = True, user_id: int = 7) -> UserFacts:
    return UserFacts(user_id=user_id, exists=exists, roles=roles)


@pytest.mark.parametrize(
    ("display", "approver", "exists", "decision"),
    [
        (DISPLAY, facts({3: "viewer"}), True, "allowed"),
        (DISPLAY, facts({3: "owner"}), True, "allowed"),
        (None, facts({3: "viewer"}), True, "unknown"),
        (rules.Display(1, 3, 7, revoked=True), facts({3: "viewer"}), True, "revoked"),
        (DISPLAY, facts({3: "guest"}), True, "revoked"),  # lost the capability
        (DISPLAY, facts({}), True, "revoked"),  # left the workspace
        (DISPLAY, facts({4: "owner"}), True, "revoked"),  # another workspace's owner
        (DISPLAY, facts({3: "viewer"}, exists=False), True, "revoked"),  # deleted user
        (DISPLAY, facts({3: "viewer"}), False, "revoked"),  # the workspace is gone
        (DISPLAY, facts({3: "viewer"}, user_id=8), True, "revoked"),  # not its approver
    ],
)
def test_the_access_decision_of_a_display(
    display: rules.Display | None, approver: UserFacts, exists: bool, decision: str
) -> None:
    assert rules.decide_display(display, approver, CAPS, exists) == decision


@pytest.mark.parametrize(
    ("approver", "exists", "decision"),
    [
        (facts({3: "viewer"}), True, "allowed"),
        (facts({3: "guest"}), True, "forbidden"),
        (facts({}), True, "not_found"),
        (facts({3: "viewer"}), False, "not_found"),
        (facts({3: "owner"}, exists=False), True, "not_found"),
    ],
)
def test_who_may_approve_a_display(approver: UserFacts, exists: bool, decision: str) -> None:
    assert rules.approver_decision(approver, CAPS, 3, exists) == decision
