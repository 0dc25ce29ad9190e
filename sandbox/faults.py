"""Injectable faults: what can go wrong between waq and Meta, drawn from a seeded generator."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Fault", "Faults"]


class Fault(StrEnum):
    """What happens to one send request."""

    NONE = "none"
    """Answered normally."""
    SERVER_ERROR = "server_error"
    """A 5xx with Meta's body; the message was not accepted."""
    HANG = "hang"
    """No answer until the client times out; the message was not accepted."""
    DROP = "drop"
    """Accepted (in the ledger, statuses follow), then the connection drops unanswered."""


@dataclass(slots=True)
class Faults:
    """Ratios are probabilities per send request; ``latency_ms`` is added to every answer."""

    latency_ms: float = 0.0
    server_error_ratio: float = 0.0
    hang_ratio: float = 0.0
    hang_s: float = 30.0
    drop_ratio: float = 0.0
    duplicate_webhook_ratio: float = 0.0
    server_error_next: float = 0.0
    """The next N send requests fail with a 5xx, whatever the ratios: deterministic retries."""

    def draw(self, rng: random.Random) -> Fault:
        """Pick this request's fault."""
        if self.server_error_next >= 1:
            self.server_error_next -= 1
            return Fault.SERVER_ERROR
        roll = rng.random()
        for fault, ratio in (
            (Fault.SERVER_ERROR, self.server_error_ratio),
            (Fault.HANG, self.hang_ratio),
            (Fault.DROP, self.drop_ratio),
        ):
            if roll < ratio:
                return fault
            roll -= ratio
        return Fault.NONE

    def update(self, changes: dict[str, Any]) -> None:
        """Apply the fields given; unknown names and bad values raise ``ValueError``."""
        known = asdict(self)
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
            number = float(value)
            if number < 0 or (name.endswith("_ratio") and number > 1):
                raise ValueError(f"{name} must be {'0..1' if name.endswith('_ratio') else '>= 0'}")
            setattr(self, name, number)

    def as_dict(self) -> dict[str, float]:
        """The current faults as JSON."""
        return asdict(self)
