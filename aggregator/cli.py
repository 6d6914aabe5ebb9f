"""The `aggregator` command line: run the service, emit events from a shell, print the schema."""

import json
import logging
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aio_pika
import aiormq
import anyio
import msgspec
import typer
from yarl import URL

from aggregator.amqp import connection as amqp_connection
from aggregator.amqp.connection import CONNECT_ERRORS, explain, where
from aggregator.amqp.dlq import DeadLetterQueue, ReplayRefused
from aggregator.amqp.topology import TopologyError, leave_shard, ready_messages
from aggregator.checkpoint import CheckpointError
from aggregator.config import AmqpSettings, ConfigError, load_settings, split_urls
from aggregator.custom import Declarations
from aggregator.version import build_info
from schemas.asyncapi import asyncapi_text
from schemas.events import EVENT_TYPES, KINDS, Event, Metric, kind_of
from schemas.jsonschema import event_json_schema
from schemas.labels import LabelCheck
from schemas.wire import CONTENT_TYPE_JSON, DEFAULT_AMQP_URL, DEFAULT_EXCHANGE, HEADER_SOURCE, routing_key_for

T = TypeVar("T")

app = typer.Typer(
    name="aggregator",
    help="tickbus: typed metric events over RabbitMQ, served as one Prometheus scrape target.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

AmqpUrl = Annotated[
    str | None,
    typer.Option(
        "--amqp-url",
        envvar="TICKBUS_AMQP_URL",
        help=f"RabbitMQ URL (default {DEFAULT_AMQP_URL}); the nodes of a cluster separated by commas.",
    ),
]
Exchange = Annotated[
    str | None,
    typer.Option("--exchange", envvar="TICKBUS_EXCHANGE", help=f"Exchange events go to (default {DEFAULT_EXCHANGE})."),
]
AmqpCaFile = Annotated[
    str | None,
    typer.Option(
        "--amqp-ca-file",
        envvar="TICKBUS_AMQP_CA_FILE",
        help="amqps://: the CA certificate (PEM) that signed the broker's (default: the system's CAs).",
    ),
]
AmqpCertFile = Annotated[
    str | None,
    typer.Option(
        "--amqp-cert-file",
        envvar="TICKBUS_AMQP_CERT_FILE",
        help="amqps://: a client certificate (PEM) for a broker that asks for one; with --amqp-key-file.",
    ),
]
AmqpKeyFile = Annotated[
    str | None,
    typer.Option("--amqp-key-file", envvar="TICKBUS_AMQP_KEY_FILE", help="The client certificate's private key (PEM)."),
]
AmqpPasswordFile = Annotated[
    str | None,
    typer.Option(
        "--amqp-password-file",
        envvar="TICKBUS_AMQP_PASSWORD_FILE",
        help="A file holding the password of the URL's user (a Docker or Kubernetes secret); the URL then has none.",
    ),
]


def _amqp_overrides(
    url: str | None, ca_file: str | None, cert_file: str | None, key_file: str | None, password_file: str | None
) -> dict[str, Any]:
    """The AMQP connection flags as settings overrides (None: not given)."""
    urls = split_urls(url) if url is not None else None
    return {
        "amqp.url": urls[0] if urls else url,
        "amqp.urls": urls,
        "amqp.ca_file": ca_file,
        "amqp.cert_file": cert_file,
        "amqp.key_file": key_file,
        "amqp.password_file": password_file,
    }


def _checked(amqp: AmqpSettings) -> AmqpSettings:
    """The settings, once their password and TLS files have been read: a mistake in them exits 2 up front."""
    try:
        amqp_connection.check(amqp)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    return amqp


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(build_info().line())
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version, revision and Python; exit."
        ),
    ] = False,
) -> None:
    """tickbus: typed metric events over RabbitMQ, served as one Prometheus scrape target."""


def _print_or_write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command(epilog="Example:  aggregator run --config tickbus.toml --port 10464  (then: curl localhost:10464/metrics)")
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar="TICKBUS_CONFIG", help="TOML config file.")
    ] = None,
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    exchange: Exchange = None,
    queue: Annotated[
        str | None, typer.Option(envvar="TICKBUS_QUEUE", help="Queue to consume (default tickbus.aggregator).")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            envvar="TICKBUS_HTTP_HOST",
            help="Address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: all, as in a container).",
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="TICKBUS_HTTP_PORT", help="Port to serve /metrics on (default 10464).")
    ] = None,
    web_config_file: Annotated[
        str | None,
        typer.Option(
            "--web.config.file",
            "--web-config-file",
            envvar="TICKBUS_WEB_CONFIG_FILE",
            help="Web config file (exporter-toolkit format): TLS and basic auth for /metrics. Reloaded on change.",
        ),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(envvar="TICKBUS_NAMESPACE", help="Prefix of the trading metrics (default trading).")
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(envvar="TICKBUS_STATE_DIR", help="Directory for checkpoints (default none: counts restart at 0)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(envvar="TICKBUS_LOG_LEVEL", help="debug, info, warning, error.")
    ] = None,
    crash_on_body: Annotated[
        str | None,
        typer.Option(
            envvar="TICKBUS_CRASH_ON_BODY",
            hidden=True,
            help="Fault injection for drills: die (SIGKILL) when a message body holds this text.",
        ),
    ] = None,
) -> None:
    """Consume metric events from RabbitMQ and serve them on /metrics (plus /healthz and /readyz).

    Settings come from defaults, then the --config file, then flags and TICKBUS_* environment variables.
    SIGHUP reloads the config file: custom metrics, limits and the log level change live. The web config
    (--web.config.file) is reloaded on SIGHUP and whenever it or a file it names changes.
    Exits 1 if it stopped without committing what it applied (the broker redelivers it).
    """
    from aggregator.service import Aggregator

    overrides: dict[str, Any] = {
        **_amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file),
        "amqp.exchange": exchange,
        "amqp.queue": queue,
        "http.host": host,
        "http.port": port,
        "http.web_config_file": web_config_file,
        "catalog.namespace": namespace,
        "state.dir": state_dir,
        "log_level": log_level,
    }
    try:
        settings = load_settings(config, overrides)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    _checked(settings.amqp)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        aggregator = Aggregator(
            settings,
            load_settings=lambda: load_settings(config, overrides),
            crash_marker=crash_on_body.encode() if crash_on_body else None,
        )
    except ValueError as error:
        raise _fail(f"invalid configuration: {error}", 2) from None
    except CheckpointError as error:
        raise _fail(str(error)) from None
    try:
        committed = anyio.run(aggregator.run)
    except KeyboardInterrupt:
        committed = True
    except BaseException as raised:
        # Task groups wrap what a task raised; a user needs the one line that says what is wrong.
        cause = _innermost(raised)
        if isinstance(cause, TopologyError | CheckpointError):
            raise _fail(str(cause)) from None
        if isinstance(cause, OSError) and not isinstance(cause, ConnectionError):
            raise _fail(f"cannot serve on {settings.http.host}:{settings.http.port}: {cause}") from None
        raise
    if not committed:
        raise typer.Exit(1)


def _innermost(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = next(
            (e for e in error.exceptions if isinstance(e, TopologyError | CheckpointError)), error.exceptions[0]
        )
    return error


def parse_assignments(kind: str, assignments: list[str], source: str) -> dict[str, Any]:
    """`field=value` words into an event object; `labels.NAME=value` fills the labels of a metric event."""
    event: dict[str, Any] = {"kind": kind, "source": source, "ts": time.time()}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator or not name:
            raise ValueError(f"expected field=value, got {assignment!r}")
        if name.startswith("labels."):
            event.setdefault("labels", {})[name.removeprefix("labels.")] = value
        else:
            event[name] = value
    return event


@app.command(
    epilog=(
        "Examples:\n\n"
        "  aggregator emit signal strategy=momentum symbol=BTCUSDT side=buy outcome=accepted confidence=0.8\n\n"
        "  aggregator emit order symbol=ETHUSDT side=sell status=filled latency=0.012 slippage_bps=1.5\n\n"
        "  aggregator emit metric name=kill_switch_active value=1 labels.reason=drawdown"
    )
)
def emit(
    kind: Annotated[str, typer.Argument(help=f"Event kind: {', '.join(KINDS)}.")],
    fields: Annotated[list[str] | None, typer.Argument(help="field=value pairs (see `aggregator schema`).")] = None,
    source: Annotated[
        str | None, typer.Option(envvar="TICKBUS_SOURCE", help="Source name (default: this host's name).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", envvar="TICKBUS_CONFIG", help="The aggregator's config: its broker, exchange and metrics."
        ),
    ] = None,
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    exchange: Exchange = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker's confirm.")] = 10.0,
) -> None:
    """Publish one event, for shell scripts and smoke tests; exits non-zero if it is invalid or not delivered.

    With --config, a `metric` event is checked against the metrics the aggregator declares.
    """
    if kind not in KINDS:
        raise _fail(f"unknown kind {kind!r}; one of: {', '.join(KINDS)}", 2)
    try:
        overrides = _amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file)
        settings = load_settings(config, {**overrides, "amqp.exchange": exchange})
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    source_name = source or socket.gethostname().split(".")[0]
    try:
        event = build_event(kind, fields or [], source_name)
    except (ValueError, msgspec.ValidationError) as error:
        raise _fail(f"invalid {kind} event: {str(error).replace('`$.', '`')}", 2) from None
    if config is not None and isinstance(event, Metric):
        problem = Declarations(settings.metrics).problem(event)
        if problem is not None:
            raise _fail(f"the aggregator would refuse this event ({problem[0]}): {problem[1]}", 2)
    amqp = _checked(settings.amqp)
    try:
        anyio.run(publish_once, amqp, event, timeout)
    except PublishRefused as error:
        raise _fail(str(error)) from None
    except (*CONNECT_ERRORS, TimeoutError) as error:
        raise _fail(
            f"could not deliver to RabbitMQ at {where(amqp)} within {timeout:g}s: "
            f"{explain(error, amqp, amqp.addresses[-1])}"
        ) from None
    typer.echo(msgspec.json.encode(event).decode())


def build_event(kind: str, assignments: list[str], source: str) -> Event:
    """A validated event from `field=value` words: unknown fields and bad values are errors, not ignored."""
    event_type = next(event_type for event_type in EVENT_TYPES if kind_of(event_type) == kind)
    known = {field.name for field in msgspec.structs.fields(event_type)}
    raw = parse_assignments(kind, assignments, source)
    for name in raw:
        if name == "kind" and raw[name] != kind:
            raise ValueError("the kind is the first argument, not a field")
        if name not in known and name != "kind":
            raise ValueError(f"{kind} events have no field {name!r}; they have: {', '.join(sorted(known))}")
    event: Event = msgspec.convert(raw, Event, strict=False)
    problem = LabelCheck().problem(event)
    if problem is not None:
        raise ValueError(problem)
    return event


class PublishRefused(RuntimeError):
    """The broker took the connection but cannot route the event anywhere."""


async def publish_once(amqp: AmqpSettings, event: Event, timeout: float) -> None:
    """Publish one event with a confirm, refusing to let it vanish on an unbound or missing exchange."""
    connection = await amqp_connection.connect(amqp, f"tickbus-emit {event.source}", timeout)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            exchange = await channel.get_exchange(amqp.exchange, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise PublishRefused(
                f"exchange {amqp.exchange!r} does not exist: is the aggregator running with --exchange {amqp.exchange}?"
            ) from None
        message = aio_pika.Message(
            msgspec.json.encode(event),
            content_type=CONTENT_TYPE_JSON,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
            timestamp=time.time(),
            app_id=event.source,
            # What a sharded deployment's consistent-hash exchange routes on.
            headers={HEADER_SOURCE: event.source},
            # The broker refuses a user_id other than the connection's user: it vouches for the publisher
            # (authenticated sources).
            user_id=URL(amqp.url).user or None,
        )
        routing_key = routing_key_for([event])
        try:
            await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout)
        except aiormq.exceptions.ChannelAccessRefused as error:
            raise PublishRefused(
                f"RabbitMQ refused the publish to exchange {amqp.exchange!r} with routing key {routing_key!r} "
                f"({error.args[0] if error.args else error}): the user's permissions do not allow it"
            ) from None
        except aiormq.exceptions.PublishError:
            raise PublishRefused(
                f"no queue is bound to exchange {amqp.exchange!r} for routing key {routing_key!r}: the event would be "
                "lost (the aggregator binds its queue when it runs)"
            ) from None


@app.command(
    epilog="Examples:  aggregator schema --output schemas/events.schema.json\n\n"
    "           aggregator schema --asyncapi --output schemas/asyncapi.json"
)
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    asyncapi: Annotated[
        bool, typer.Option("--asyncapi", help="The AsyncAPI 3.0 document (exchange, channels, messages) instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of every event (or the AsyncAPI document), for producers in other languages."""
    text = asyncapi_text() if asyncapi else json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    _print_or_write(text, output)


@app.command(
    "check-config",
    epilog="Examples:  aggregator check-config deploy/tickbus.toml\n\n"
    "           docker compose run --rm aggregator check-config /etc/tickbus/tickbus.toml",
)
def check_config(
    config: Annotated[Path, typer.Argument(help="The TOML config file to check.", show_default=False)],
) -> None:
    """Check a config file before deploying it: exit 0 and what it declares, or exit 2 and every problem.

    Each problem names its key. Checks the file alone: flags and TICKBUS_* variables given to
    `aggregator run` may still override it.
    """
    from aggregator.configcheck import check_config as check

    result = check(config)
    if result.ok:
        typer.echo(result.summary())
        return
    count = len(result.problems)
    typer.echo(f"{config}: {count} problem{'s' if count > 1 else ''}", err=True)
    for problem in result.problems:
        typer.echo(f"{config}: {problem}", err=True)
    raise typer.Exit(2)


@app.command(epilog="Example:  aggregator catalog --output docs/metrics.md")
def catalog(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar="TICKBUS_CONFIG", help="Include this config's metrics.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the metric catalog (every metric, its type, labels and help) as Markdown."""
    from aggregator.catalogdoc import render_catalog

    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    text = render_catalog(settings)
    _print_or_write(text, output)


@app.command(
    epilog="Examples:  aggregator bench --output bench-results.json\n\n"
    "           aggregator bench --quick --picture bench.svg\n\n"
    "           aggregator bench --only series --only collectd"
)
def bench(
    amqp_url: AmqpUrl = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Write the figures here as JSON.")] = Path(
        "bench-results.json"
    ),
    quick: Annotated[bool, typer.Option(help="Half the volumes: a faster, noisier run.")] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="SECTION",
            help="Run only this section (repeat for several): single, batched, ceiling, collectd, emit, render, "
            "scraped, memory, freshness, series.",
        ),
    ] = None,
    picture: Annotated[
        Path | None,
        typer.Option(
            help="Also draw the results (each ratio against its target, and freshness) as PNG or SVG, by the "
            "file's suffix. Needs matplotlib. From a saved run: python -m benchmarks.picture RESULTS.json FILE."
        ),
    ] = None,
) -> None:
    """Benchmark tickbus side by side with its baselines on the local broker, every section or those named.

    Baselines: a plain aio-pika consumer (the bus ceiling), prometheus_client, collectd (bash
    scripts/install-collectd). The series-scale section drains 1k, 100k and 1M label sets and restarts from each.
    """
    import importlib.util

    from rich.console import Console

    from benchmarks import harness as benchmarks

    if picture is not None:
        from benchmarks.picture import FORMATS

        if picture.suffix.lower() not in FORMATS:
            raise _fail(f"--picture {picture}: name a .png or .svg file", 2)
        if importlib.util.find_spec("matplotlib") is None:
            raise _fail("--picture needs matplotlib: pip install matplotlib (the dev extra has it)", 2)
    unknown = sorted(set(only or ()) - set(benchmarks.SECTIONS))
    if unknown:
        raise _fail(f"--only {', '.join(unknown)}: no such section; choose from {', '.join(benchmarks.SECTIONS)}", 2)
    console = Console(stderr=True)
    with console.status("starting", spinner="dots") as status:

        def progress(step: str) -> None:
            console.log(step)
            status.update(step)

        report = benchmarks.run(amqp_url or DEFAULT_AMQP_URL, quick, progress, only)
    results = benchmarks.as_json(report)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    typer.echo(benchmarks.table(report))
    typer.echo(f"\nwritten to {output}")
    if picture is not None:
        from benchmarks.picture import draw

        typer.echo(f"picture: {draw(results, picture)}")


@app.command(
    epilog="Examples:  aggregator top\n\n"
    "           aggregator top http://metrics-host:10464 --interval 5\n\n"
    "           aggregator top http://user:password@metrics-host:10464"
)
def top(
    url: Annotated[
        str, typer.Argument(envvar="TICKBUS_URL", help="The aggregator's HTTP address (its /metrics and /status.json).")
    ] = "http://127.0.0.1:10464",
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
    sources: Annotated[int, typer.Option(min=1, help="How many of the busiest sources to show.")] = 15,
    once: Annotated[bool, typer.Option("--once", help="Print one screen and exit (for scripts and logs).")] = False,
) -> None:
    """A live view of a running aggregator, local or remote; Ctrl-C quits.

    Events/s by kind and source, rejections with their latest example, sources up and down, queue depth,
    checkpoint age: from its /metrics, and its /status.json where it serves one.
    """
    from rich.console import Console
    from rich.live import Live

    from aggregator.top import Target, TopView

    view = TopView(Target.parse(url), sources, live=not once)
    view.refresh()
    if once:
        if view.current is None:
            raise _fail(view.error)
        Console().print(view.render())
        return
    try:
        with Live(view.render(), screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                view.refresh()
                live.update(view.render(), refresh=True)
    except KeyboardInterrupt:
        pass


dlq_app = typer.Typer(
    help="Inspect and act on dead-lettered messages: list, show, replay, purge.",
    no_args_is_help=True,
    epilog="Example:  aggregator dlq list --queue tickbus.aggregator",
)
app.add_typer(dlq_app, name="dlq")

ConfigPath = Annotated[
    Path | None, typer.Option("--config", "-c", envvar="TICKBUS_CONFIG", help="The aggregator's TOML config file.")
]
Queue = Annotated[str | None, typer.Option(envvar="TICKBUS_QUEUE", help="The aggregator's queue (its .dead queue).")]


def _amqp_settings(
    config: Path | None, connection: dict[str, Any], exchange: str | None, queue: str | None
) -> AmqpSettings:
    try:
        settings = load_settings(config, {**connection, "amqp.exchange": exchange, "amqp.queue": queue})
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    return _checked(settings.amqp)


def _with_dlq(amqp: AmqpSettings, action: Callable[[DeadLetterQueue], Awaitable[T]]) -> T:
    async def run() -> T:
        async with DeadLetterQueue.open(amqp) as dlq:
            return await action(dlq)

    try:
        return anyio.run(run)
    except aiormq.exceptions.ChannelNotFoundEntity as error:
        raise _fail(
            f"{error.args[0] if error.args else error} on the broker: check --queue / --exchange "
            f"(dead-letter queue {amqp.dead_letter_queue_name!r}, exchange {amqp.exchange!r}); "
            "the aggregator declares them when it first runs"
        ) from None
    except aiormq.exceptions.ChannelAccessRefused as error:
        raise _fail(
            f"RabbitMQ refused access ({error.args[0] if error.args else error}): the user in --amqp-url needs read "
            f"access to {amqp.dead_letter_queue_name!r} (and, to replay, write access to {amqp.exchange!r})"
        ) from None
    except CONNECT_ERRORS as error:
        raise _fail(f"cannot reach RabbitMQ at {where(amqp)}: {explain(error, amqp, amqp.addresses[-1])}") from None


@dlq_app.command("list", epilog="Example:  aggregator dlq list --limit 20")
def dlq_list(
    config: ConfigPath = None,
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    queue: Queue = None,
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array for scripts: every field, the body as text and base64.")
    ] = False,
) -> None:
    """List dead letters with their reason, leaving them in the queue."""
    amqp = _amqp_settings(
        config, _amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file), None, queue
    )
    views = _with_dlq(amqp, lambda dlq: dlq.peek(limit))
    if as_json:
        typer.echo(json.dumps([view.as_json() for view in views], indent=2))
        return
    if not views:
        typer.echo(f"{amqp.dead_letter_queue_name}: empty")
        return
    typer.echo(f"{'#':>4}  {'reason':<24} {'routing key':<12} {'message id':<24} detail")
    for view in views:
        index = "" if view.batch_index is None else f"[{view.batch_index}]"
        typer.echo(
            f"{view.position:>4}  {view.reason:<24} {view.routing_key:<12} {view.message_id + index:<24} "
            f"{view.detail[:80]}"
        )


@dlq_app.command("show", epilog="Example:  aggregator dlq show 3")
def dlq_show(
    position: Annotated[int, typer.Argument(help="Position in `aggregator dlq list` (1 is the oldest).")],
    config: ConfigPath = None,
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    queue: Queue = None,
) -> None:
    """Show one dead letter in full: reason, detail, routing key, message id and body."""
    amqp = _amqp_settings(
        config, _amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file), None, queue
    )
    views = _with_dlq(amqp, lambda dlq: dlq.peek(position))
    if len(views) < position or position < 1:
        raise _fail(f"there is no dead letter #{position} ({len(views)} in the queue)")
    view = views[position - 1]
    typer.echo(
        f"reason:       {view.reason}\ndetail:       {view.detail}\nrouting key:  {view.routing_key}\n"
        f"message id:   {view.message_id}\nbatch index:  {view.batch_index}\n"
        f"content type: {view.content_type}\nbody:         {view.body_text()}"
    )


@dlq_app.command("replay", epilog="Example:  aggregator dlq replay --reason undeclared_metric")
def dlq_replay(
    config: ConfigPath = None,
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    exchange: Exchange = None,
    queue: Queue = None,
    reason: Annotated[str | None, typer.Option(help="Only dead letters with this reason.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 10_000,
) -> None:
    """Publish dead letters back to the exchange (after fixing the config, say); replaying twice counts once."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    amqp = _amqp_settings(
        config,
        _amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file),
        exchange,
        queue,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"replaying from {amqp.dead_letter_queue_name}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            replayed = _with_dlq(amqp, lambda dlq: dlq.replay(limit, reason, progress))
        except ReplayRefused as error:
            refused = str(error)
        else:
            refused = ""
    if refused:
        raise _fail(refused)
    typer.echo(f"replayed {replayed} dead letter(s) to exchange {amqp.exchange!r}")


@dlq_app.command("purge", epilog="Example:  aggregator dlq purge --yes")
def dlq_purge(
    config: ConfigPath = None,
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    queue: Queue = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter."""
    amqp = _amqp_settings(
        config, _amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file), None, queue
    )
    if not yes and not typer.confirm(f"Delete every message in {amqp.dead_letter_queue_name!r}?"):
        raise typer.Exit(1)
    purged = _with_dlq(amqp, lambda dlq: dlq.purge())
    typer.echo(f"purged {purged} dead letter(s)")


shard_app = typer.Typer(
    help="Sharded deployments ([shard] in the config): take a replica's queue out of the hash ring.",
    no_args_is_help=True,
)
app.add_typer(shard_app, name="shard")


@shard_app.command(
    "leave", epilog="Example:  aggregator shard leave --config shard-3.toml  (then stop that replica, delete its queue)"
)
def shard_leave(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="TICKBUS_CONFIG", help="The replica's config.")],
    amqp_url: AmqpUrl = None,
    amqp_ca_file: AmqpCaFile = None,
    amqp_cert_file: AmqpCertFile = None,
    amqp_key_file: AmqpKeyFile = None,
    amqp_password_file: AmqpPasswordFile = None,
    exchange: Exchange = None,
    queue: Queue = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the queue to drain.")] = 600.0,
) -> None:
    """Unbind this replica's queue from the shard exchange, then wait until its replica has drained it.

    Its sources go to the other replicas from the next message on; what is already in its queue is still
    applied by the replica, which must keep running until this returns. Then stop the replica (its counts stay
    exact: they are what it applied) and delete its queue.
    """
    overrides = _amqp_overrides(amqp_url, amqp_ca_file, amqp_cert_file, amqp_key_file, amqp_password_file)
    try:
        settings = load_settings(config, {**overrides, "amqp.exchange": exchange, "amqp.queue": queue})
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    if not settings.shard.enabled:
        raise _fail(f"{config}: [shard] is not enabled: the queue is not in a hash ring", 2)
    amqp = _checked(settings.amqp)

    async def leave() -> int:
        connection = await amqp_connection.connect(amqp, f"tickbus-shard-leave {amqp.queue}")
        async with connection:
            channel = await connection.channel()
            await leave_shard(channel, amqp, settings.shard)
            typer.echo(f"unbound queue {amqp.queue!r} from {settings.shard.exchange_name(amqp)!r}; draining")
            deadline = time.monotonic() + timeout
            # Empty twice, a commit interval apart: what was delivered last is acked by then.
            empty = 0
            while empty < 2:
                waiting = await ready_messages(channel, amqp.queue)
                empty = empty + 1 if waiting == 0 else 0
                if time.monotonic() > deadline:
                    return waiting
                await anyio.sleep(1.0)
        return 0

    try:
        left = anyio.run(leave)
    except aiormq.exceptions.ChannelNotFoundEntity as error:
        raise _fail(
            f"{error.args[0] if error.args else error}: check --exchange / --queue; has this replica ever run?"
        ) from None
    except CONNECT_ERRORS as error:
        raise _fail(f"cannot reach RabbitMQ at {where(amqp)}: {explain(error, amqp, amqp.addresses[-1])}") from None
    if left:
        raise _fail(f"{left} message(s) still wait in {amqp.queue!r} after {timeout:g}s: is its replica running?")
    typer.echo(
        f"queue {amqp.queue!r} is drained: stop its replica, then `rabbitmqctl delete_queue {amqp.queue}` "
        f"(and its {amqp.dead_letter_queue_name!r} once its dead letters are dealt with)"
    )


def main() -> None:
    # The AMQP libraries log every failed attempt; the commands say what went wrong themselves.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    app()
