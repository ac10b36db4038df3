"""prices: newer genai-prices data, fetched and stored versioned in the home."""

from __future__ import annotations

import json

import click

from ._ui import fail


@click.group()
def prices() -> None:
    """Price data: the version in use, and updates from genai-prices' published file.

    \b
    Examples:
      halton-meter prices update
      halton-meter report --reprice     # price rows whose model was unknown
    """


@prices.command()
@click.option("--url", default=None, metavar="URL", help="Fetch from this URL instead of genai-prices' own (a mirror).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(1, 600), help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def update(url: str | None, timeout: float, as_json: bool) -> None:
    """Fetch genai-prices' newest data file and use it for new rows.

    The file is fetched with genai-prices' own updater, checked against its
    schema, and kept as a new version under <home>/prices/; the daemon uses it
    within seconds, no restart needed. Rows keep the price_version they were
    priced with; `halton-meter report --reprice` prices earlier rows whose
    model was unknown.
    """
    from hm_agent.home import paths
    from hm_agent.prices import PricesError
    from hm_agent.prices import update as do_update

    hp = paths()
    if not as_json:
        click.echo(f"Fetching {url or 'the genai-prices data file'}…", err=True)
    try:
        result = do_update(hp, url, timeout)
    except PricesError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot store the price data in {hp.home}: {exc.strerror or exc}. Check its permissions.")
    if as_json:
        click.echo(json.dumps({"version": result.label, "path": str(result.path), "providers": result.providers,
                               "models": result.models, "changed": result.changed}, indent=2))
        return
    if result.changed:
        click.echo(f"Price data {result.label}: {result.providers} providers, {result.models} models; "
                   "new rows use it now. `halton-meter report --reprice` prices earlier unknown costs.")
    else:
        click.echo(f"Price data is already current ({result.label}).")


@prices.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """The price data in use: bundled with genai-prices, or a fetched version."""
    from hm_agent.capture.pricing import price_version
    from hm_agent.home import paths
    from hm_agent.prices import current_label, prices_dir

    hp = paths()
    version = price_version()
    label = current_label(hp)
    if as_json:
        click.echo(json.dumps({"price_version": version, "stored": label,
                               "path": str(prices_dir(hp) / f"{label}.json") if label else None}, indent=2))
        return
    where = f"fetched data {label}" if label and label in version else "the data bundled with genai-prices"
    click.echo(f"{version} ({where})")
