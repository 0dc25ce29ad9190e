"""docker-compose.yml stays true to the settings class: names, required secrets, healthchecks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from waq.settings import Settings

ROOT = Path(__file__).parent.parent
SECRETS_BY_SERVICE = {
    "worker": {"WAQ_ACCESS_TOKEN"},
    "gateway": {"WAQ_APP_SECRET", "WAQ_VERIFY_TOKEN", "WAQ_API_KEYS"},
}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_services_and_profiles() -> None:
    """redis, a scalable worker, the gateway; the sandbox only under the dev profile."""
    services = compose()["services"]
    assert set(services) == {"redis", "worker", "gateway", "sandbox"}
    assert services["sandbox"]["profiles"] == ["dev"]
    assert "container_name" not in services["worker"]  # a fixed name would forbid --scale


def test_redis_keeps_an_append_only_file_and_is_health_checked() -> None:
    """AOF on, a healthcheck, and the others wait for it to be healthy."""
    services = compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert "healthcheck" in services["redis"]
    for name in ("worker", "gateway"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["gateway"]


def test_every_variable_is_a_setting_and_secrets_are_required() -> None:
    """Each WAQ_* name exists in Settings; each required secret fails fast when unset."""
    known = {f"WAQ_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        assert set(env) <= known, (name, set(env) - known)
        for secret in SECRETS_BY_SERVICE.get(name, set()):
            assert re.fullmatch(r"\$\{" + secret + r":\?.+\}", env[secret]), (name, secret)


def test_dockerfile_installs_every_package() -> None:
    """The image carries each top-level package the console script imports."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("producer", "worker", "gateway", "sandbox", "waq"):
        assert f"COPY {package} {package}" in dockerfile
