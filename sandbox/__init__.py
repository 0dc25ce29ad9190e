"""A faithful fake of Meta's WhatsApp Cloud API and webhooks, for tests, demos and load tests.

Nothing in production imports this package.
"""

from sandbox.app import Sandbox, create_app
from sandbox.config import (
    DEFAULT_PHONE_NUMBER_ID,
    NumberConfig,
    SandboxConfig,
    TemplateSpec,
    WindowErrors,
    sender_ids,
)
from sandbox.control import SandboxClient
from sandbox.faults import Fault, Faults
from sandbox.meta import FakeMeta, LedgerEntry
from sandbox.meta_error import MetaError
from sandbox.server import BackgroundServer, SandboxProcess, SandboxServer, free_port
from sandbox.signature import sign, verify

__all__ = [
    "DEFAULT_PHONE_NUMBER_ID",
    "BackgroundServer",
    "FakeMeta",
    "Fault",
    "Faults",
    "LedgerEntry",
    "MetaError",
    "NumberConfig",
    "Sandbox",
    "SandboxClient",
    "SandboxConfig",
    "SandboxProcess",
    "SandboxServer",
    "TemplateSpec",
    "WindowErrors",
    "create_app",
    "free_port",
    "sender_ids",
    "sign",
    "verify",
]
