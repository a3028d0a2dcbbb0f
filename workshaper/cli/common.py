"""What the console scripts, the demo and the Kafka bridge share: setup errors that exit with
status 2 and one line on stderr, options read from the environment, logging, and the command
line that starts a ``workshaper-worker`` process. It imports nothing of the commands, so the
modules that need these pieces do not import each other (the demo and the bridge used to
import the command line module that imports them)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_SETUP_ERROR = 2
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SetupError(Exception):
    """A problem the operator must fix before the process can run (exit status 2)."""


def fail(message: str) -> NoReturn:
    print(f"workshaper: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_SETUP_ERROR)


def load_callable(path: str) -> Callable[..., Any]:
    """Import ``module:attribute`` (attribute may be dotted), as gunicorn and rq do."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise SetupError(f"handler {path!r} must look like MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SetupError(
            f"cannot import module {module_name!r} of handler {path!r}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SetupError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise SetupError(f"handler {path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"WORKSHAPER_{name}", default)


def number(kind: type, flag: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None

    return parse


def setup_logging(level: str, log_format: str = "text", worker: str | None = None) -> None:
    """Text lines, or ``log_format="json"``: one JSON object per line (workshaper.ops.logjson).
    ValueError names an unknown level or format."""
    from workshaper.ops.logjson import configure_logging  # noqa: PLC0415

    configure_logging(level, log_format, worker)


def add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=env("LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line (time, level, worker, partition, "
        "offset, event); env WORKSHAPER_LOG_FORMAT",
    )


def worker_command() -> list[str]:
    """argv that starts ``workshaper-worker`` with this interpreter (no PATH lookup)."""
    return [
        sys.executable,
        "-c",
        "import sys; from workshaper.cli.worker import worker_main; worker_main(sys.argv[1:])",
    ]


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    """``--redis`` and the TLS files, each also read from the environment
    (``WORKSHAPER_REDIS_URL``, ``WORKSHAPER_TLS_CA``, ``_CERT``, ``_KEY``, ``_VERIFY``)."""
    parser.add_argument(
        "--redis",
        default=env("REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis URL: redis://, rediss:// (TLS), unix://, redis+sentinel://HOST:PORT[,...]/"
        "SERVICE[/DB], redis+cluster://HOST:PORT[,...] (Redis Cluster) "
        f"(default: $WORKSHAPER_REDIS_URL, else {DEFAULT_REDIS_URL})",
    )
    tls = parser.add_argument_group("TLS (rediss:// URLs; the same as the URL's ssl_* options)")
    tls.add_argument(
        "--tls-ca",
        default=env("TLS_CA"),
        metavar="FILE",
        help="CA certificates (PEM) that signed the server's certificate (ssl_ca_certs)",
    )
    tls.add_argument(
        "--tls-cert",
        default=env("TLS_CERT"),
        metavar="FILE",
        help="client certificate (PEM), for mutual TLS (ssl_certfile)",
    )
    tls.add_argument(
        "--tls-key",
        default=env("TLS_KEY"),
        metavar="FILE",
        help="the client certificate's private key (PEM) (ssl_keyfile)",
    )
    tls.add_argument(
        "--tls-verify",
        default=env("TLS_VERIFY"),
        choices=["required", "optional", "none"],
        help="verification of the server's certificate (ssl_cert_reqs; default required)",
    )


def redis_url(args: argparse.Namespace) -> str:
    """``--redis`` with the TLS flags added to its query (a flag that contradicts the URL is a
    BackendUnavailable naming the setting)."""
    from workshaper.connection import TLSFiles, with_tls  # noqa: PLC0415 - keep --help fast

    tls = TLSFiles(args.tls_ca, args.tls_cert, args.tls_key, args.tls_verify)
    return with_tls(args.redis, tls)
