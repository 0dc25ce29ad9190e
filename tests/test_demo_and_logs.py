"""`waq demo`'s scene end to end, the CLI's refusals, and the log masking."""

from __future__ import annotations

import json

import structlog
from typer.testing import CliRunner

from waq.cli import app
from waq.demo import run_demo
from worker.logs import SecretMasker, shorten_phone


async def test_demo_scene_ends_as_expected_and_the_same_every_run(redis_url: str) -> None:
    """The README's main command: every outcome of the scene is the expected one; its
    seeded faults give every message the same tries on every run; the summary counts only
    accepted messages among those that got through transient errors."""
    tables = []
    for _ in range(2):
        lines: list[str] = []
        assert await run_demo(redis_url, say=lines.append) == 0
        text = "\n".join(lines)
        assert "every outcome as expected" in text
        assert "131047" in text
        assert "131026" in text
        start = next(i for i, line in enumerate(lines) if line.startswith("message "))
        rows = [line for line in lines[start + 1 :] if line and not line.startswith("\n")]
        table = {row[:28].strip(): row[41:56].split() for row in rows if row[:28].strip()}
        tables.append(table)
        retried = sum(
            1 for outcome, tries in table.values() if outcome == "accepted" and int(tries) > 1
        )
        summary = lines[-1]
        assert f"{retried} of them after transient errors" in summary, summary
    assert tables[0] == tables[1]
    assert any(int(tries) > 1 for _, tries in tables[0].values()), "the faults hit something"


def test_worker_without_token_is_a_clear_error() -> None:
    """No WAQ_ACCESS_TOKEN: exit 2 with a sentence, not a stack trace."""
    result = CliRunner().invoke(app, ["worker"], env={"WAQ_ACCESS_TOKEN": ""})
    assert result.exit_code == 2
    assert "WAQ_ACCESS_TOKEN is not set" in result.output
    assert "Traceback" not in result.output


def test_masker_hides_secrets_and_shortens_numbers() -> None:
    """Secret keys and known secret values are masked; phone numbers are shortened."""
    masker = SecretMasker(["tok-123"])
    event = masker(
        structlog.get_logger(),
        "info",
        {
            "event": "x",
            "access_token": "tok-123",
            "to": "+16505551234",
            "error": {"title": "bad tok-123"},
        },
    )
    assert json.dumps(event).count("tok-123") == 0
    assert event["to"] == shorten_phone("+16505551234") == "+1650…34"
