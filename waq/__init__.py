"""The ``waq`` command and the settings every entrypoint reads."""

from waq.settings import Settings

__all__ = ["Settings"]
