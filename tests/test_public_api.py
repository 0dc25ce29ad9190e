"""Public APIs: sorted `__all__` lists that resolve, documented settings, import boundaries."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from waq.settings import Settings

PACKAGES = ["producer", "worker", "gateway", "sandbox", "waq"]


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions.
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("name", PACKAGES)
def test_exported_members(name: str) -> None:
    """__all__ is sorted, unique, and names only things the package really has."""
    package = importlib.import_module(name)
    exported = list(package.__all__)
    assert exported == sorted(exported, key=_isort_key)
    assert len(set(exported)) == len(exported)
    for member in exported:
        assert hasattr(package, member), f"{name}.{member}"


def test_every_setting_is_documented_once() -> None:
    """docs/configuration.md has exactly one row per WAQ_* variable, and no stale rows."""
    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    documented = re.findall(r"^\| `(WAQ_[A-Z0-9_]+)` \|", text, flags=re.MULTILINE)
    expected = [f"WAQ_{field.upper()}" for field in Settings.model_fields]
    assert sorted(documented) == sorted(expected)


def test_producer_imports_nothing_of_waqs() -> None:
    """Services depend on producer/ alone: it imports no other waq package."""
    root = Path(__file__).parent.parent / "producer"
    for path in root.glob("*.py"):
        source = path.read_text()
        assert not re.search(
            r"^\s*(from|import) (worker|gateway|sandbox|waq)\b", source, re.MULTILINE
        ), path


def test_sandbox_does_not_import_the_contract() -> None:
    """The sandbox's rules are an independent reading of Meta's: it imports no producer code."""
    root = Path(__file__).parent.parent / "sandbox"
    for path in root.glob("*.py"):
        source = path.read_text()
        assert not re.search(
            r"^\s*(from|import) (producer|worker|gateway)\b", source, re.MULTILINE
        ), path


def test_secrets_are_masked_in_settings_repr() -> None:
    """Printing the settings never shows a token, secret or key."""
    settings = Settings(
        access_token="tok-123",
        app_secret="sec-456",
        api_keys="k1,k2",
    )
    text = repr(settings) + str(settings.model_dump())
    for secret in ("tok-123", "sec-456", "k1", "k2"):
        assert secret not in text
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
