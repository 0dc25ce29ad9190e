"""The HTTP door: send API, Meta's webhooks, health and dead-letter admin (its own issue)."""
