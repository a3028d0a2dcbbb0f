"""docker-compose.yml without a Docker engine: every service built from this repository runs a
real console script with flags its parser accepts, and Prometheus scrapes what the services
serve."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from workshaper.cli.common import load_callable
from workshaper.cli.main import build_parser
from workshaper.cli.worker import worker_parser

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _dockerfile_entrypoint() -> list[str]:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return yaml.safe_load(line.removeprefix("ENTRYPOINT").strip())  # type: ignore[no-any-return]
    raise AssertionError("the Dockerfile has no ENTRYPOINT")


def _argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint (the service's, else the image's) + command."""
    entrypoint = service.get("entrypoint", _dockerfile_entrypoint())
    return [*entrypoint, *service.get("command", [])]


def _parse(argv: list[str]) -> Any:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]!r} is not a console script of pyproject.toml"
    parser = worker_parser() if argv[0] == "workshaper-worker" else build_parser()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{' '.join(argv)}: the parser refused these flags")
    if argv[0] == "workshaper-worker":
        load_callable(args.handler)  # the handler imports
    return args


def _built_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if s.get("build")}


def test_every_built_service_runs_a_console_script_with_real_flags() -> None:
    services = _built_services()
    assert {"worker", "producer", "exporter", "dashboard"} <= set(services)
    commands = {name: _parse(_argv(service)) for name, service in services.items()}
    assert commands["exporter"].command == "exporter"
    assert commands["dashboard"].command == "dashboard"
    assert commands["worker"].metrics_port is not None


def test_prometheus_scrapes_the_workers_and_the_exporter() -> None:
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    [mount] = [v for v in prometheus["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro")]
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = _parse(_argv(compose["services"]["worker"]))
    [workers_sd] = jobs["workshaper-workers"]["dns_sd_configs"]
    assert workers_sd["names"] == ["worker"] and workers_sd["port"] == worker.metrics_port
    exporter = _parse(_argv(compose["services"]["exporter"]))
    [target] = jobs["workshaper-exporter"]["static_configs"][0]["targets"]
    assert target == f"exporter:{exporter.port}"


def test_the_image_installs_the_dashboard_extra() -> None:
    assert "[dashboard]" in (ROOT / "Dockerfile").read_text()
