"""The ``waq`` command: one front for the worker, the sandbox, the demo and the operators."""

from __future__ import annotations

from typing import Annotated

import typer

from sandbox import SandboxConfig, SandboxServer, WindowErrors
from waq.settings import Settings

app = typer.Typer(
    name="waq",
    help="WhatsApp send pipeline: validate, queue, deliver in order, dead-letter what cannot go.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """WhatsApp send pipeline: validate, queue, deliver in order, dead-letter what cannot go."""


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    webhook_url: Annotated[str | None, typer.Option(help="Where to post signed webhooks.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault and failure draws.")] = 0,
    window_errors: Annotated[
        WindowErrors, typer.Option(help="How closed-window sends fail: sync, async or mixed.")
    ] = WindowErrors.SYNC,
) -> None:
    """Serve a fake Meta Graph API (and its webhooks) for tests, demos and load tests.

    It accepts WAQ_ACCESS_TOKEN as the bearer token and signs webhooks with WAQ_APP_SECRET
    (the sandbox's well-known defaults when unset).
    """
    settings = Settings()
    config = SandboxConfig(webhook_url=webhook_url, seed=seed, window_errors=window_errors)
    if settings.access_token is not None:
        config.access_token = settings.access_token.get_secret_value()
    if settings.app_secret is not None:
        config.app_secret = settings.app_secret.get_secret_value()
    server = SandboxServer(config, host=host, port=port)
    version = settings.graph_api_version
    typer.echo(f"sandbox: Graph API at {server.url}/{version}, control at {server.url}/_sandbox")
    server.run()


def main() -> None:
    """Entry point for ``python -m waq``."""
    app()
