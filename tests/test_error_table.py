"""Meta's error table: every code has a decision and a hint; unknown codes use the HTTP status."""

from __future__ import annotations

import random

import pytest

from worker.backoff import backoff_s, pair_backoff_s
from worker.error_table import ERROR_TABLE, Action, Schedule, Suggestion, rule_for

RETRY = {1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133004, 133009, 133015}
PERMANENT = {
    100, 470, 130403, 130472, 130497, 131008, 131009, 131021, 131026, 131030, 131047, 131049,
    131050, 131051, 131052, 131053, 131062, 132000, 132001, 132005, 132007, 132012, 132015,
    132016, 132018, 132068, 132069, 135000, 137000,
}  # fmt: skip
PAUSE = {
    0, 3, 10, 33, 190, 368, 131005, 131031, 131037, 131042, 131045, 131048, 131063, 131064,
    133000, 133005, 133006, 133008, 133010, 133016, 134011,
    2500,  # Graph's OAuthException for a request with no token (not in WhatsApp's list)
}  # fmt: skip


def test_every_code_of_the_reference_is_in_the_table() -> None:
    """The table maps exactly the codes of reference section 3 (200-299 as a range), and
    Graph's 2500."""
    assert set(ERROR_TABLE) == RETRY | PERMANENT | PAUSE


@pytest.mark.parametrize(
    ("codes", "action"),
    [(RETRY, Action.RETRY), (PERMANENT, Action.PERMANENT), (PAUSE, Action.PAUSE)],
)
def test_action_per_code(codes: set[int], action: Action) -> None:
    """Each code gets the action the reference gives it, whatever the HTTP status says."""
    for code in codes:
        assert rule_for(code, http_status=400).action is action, code
        assert rule_for(code, http_status=500).action is action, code


def test_named_hints() -> None:
    """The operator hints the brief names are the ones shown."""
    assert rule_for(131047, http_status=400).suggestion is Suggestion.SEND_TEMPLATE
    assert "approved template" in rule_for(131047, http_status=400).hint
    assert rule_for(131026, http_status=400).suggestion is Suggestion.FIX_RECIPIENT
    assert "not a WhatsApp number" in rule_for(131026, http_status=400).hint
    assert rule_for(131056, http_status=400).schedule is Schedule.PAIR
    assert "refresh" in rule_for(190, http_status=401).hint
    assert rule_for(131057, http_status=400).min_delay_s == 60


def test_every_rule_has_a_hint() -> None:
    """No row leaves the operator without a sentence."""
    assert all(rule.hint for rule in ERROR_TABLE.values())


@pytest.mark.parametrize("code", [200, 250, 299])
def test_permission_range_pauses(code: int) -> None:
    """Codes 200-299 are permission problems: pause the number."""
    assert rule_for(code, http_status=403).action is Action.PAUSE


def test_unknown_phone_number_id_pauses() -> None:
    """100 with subcode 33 (no such phone number) pauses the number; plain 100 is permanent."""
    assert rule_for(100, http_status=400, subcode=33).action is Action.PAUSE
    assert rule_for(100, http_status=400).action is Action.PERMANENT


@pytest.mark.parametrize(
    ("status", "action"),
    [(500, Action.RETRY), (503, Action.RETRY), (429, Action.RETRY), (401, Action.PAUSE),
     (403, Action.PAUSE), (400, Action.PERMANENT), (404, Action.PERMANENT)],
)  # fmt: skip
def test_unknown_code_falls_back_on_http_status(status: int, action: Action) -> None:
    """A code Meta added after this table is classified by its HTTP status."""
    assert rule_for(999_999, http_status=status).action is action


def test_backoff_is_full_jitter_with_a_cap() -> None:
    """Delays stay in [0, min(cap, base*2^(n-1))] and actually vary."""
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 2 ** (attempt - 1))
        delays = [backoff_s(attempt, base_s=1, cap_s=30, rng=rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert max(backoff_s(20, base_s=1, cap_s=30, rng=rng) for _ in range(200)) > 15


def test_pair_backoff_follows_metas_four_to_the_x() -> None:
    """131056: 1, 4, 16, 64 seconds for the 1st to 4th failure, then capped."""
    assert [pair_backoff_s(n) for n in (1, 2, 3, 4)] == [1, 4, 16, 64]
    assert pair_backoff_s(20) == 1024
