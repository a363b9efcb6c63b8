"""docker-compose.yml, the Dockerfile and examples/guard.toml, checked without Docker
(none runs here): the YAML parses, every service uses a real image or the local build,
has a health check whose command the image has, and mounts declared volumes; the
guard's command is a real `guard` invocation, proven through the CLI's own --help."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from typer.testing import CliRunner

from guard.cli import app
from guard.config import load_config
from guard.engines import open_engine
from guard.stores import open_store

REPO = Path(__file__).resolve().parents[1]
# Published images and the executable each health check may rely on inside it.
IMAGES = {
    "qdrant": ("qdrant/qdrant:v", "bash"),  # no curl or wget in it
    "postgres": ("pgvector/pgvector:pg17", "pg_isready"),
    "embedder": ("ghcr.io/ggml-org/llama.cpp:server", "curl"),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_services_use_real_images_and_probe_with_tools_they_have(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {
        "qdrant",
        "postgres",
        "embedder",
        "guard",
        "guard-serve",
        "ray-head",
        "ray-worker",
    }
    for name, (image, tool) in IMAGES.items():
        assert services[name]["image"].startswith(image)
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == tool
    assert "/readyz" in services["qdrant"]["healthcheck"]["test"][-1]
    assert services["guard"]["build"] == "."
    assert services["guard"]["healthcheck"]["test"][1] == "python"
    assert "/healthz" in services["guard"]["healthcheck"]["test"][-1]
    assert {name: {"condition": "service_healthy"} for name in IMAGES} == services["guard"][
        "depends_on"
    ]


def test_named_volumes_are_declared_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert source == "./models" or (REPO / source).exists(), volume
            else:
                used.add(source)
    assert used == declared


def test_the_embedder_serves_the_mounted_model_for_embeddings(compose: dict[str, Any]) -> None:
    embedder = compose["services"]["embedder"]
    command = embedder["command"]
    model = command[command.index("-m") + 1]
    assert "--embedding" in command
    assert any(v.endswith(":/models:ro") for v in embedder["volumes"])
    assert model.startswith("/models/")


def test_the_guard_command_is_a_real_invocation(compose: dict[str, Any]) -> None:
    guard = compose["services"]["guard"]
    command = guard["command"]
    assert command[0] == "guard"
    shown = CliRunner().invoke(app, [*command[1:], "--help"])
    assert shown.exit_code == 0, shown.output
    assert "--once" in shown.output
    config = command[command.index("--config") + 1]
    assert f"./examples/guard.toml:{config}:ro" in guard["volumes"]


def test_guard_serve_serves_the_mounted_model_with_a_real_invocation(
    compose: dict[str, Any],
) -> None:
    """The same GGUF as the embedder, in-process behind `guard serve`, probed on /healthz."""
    serve = compose["services"]["guard-serve"]
    command = serve["command"]
    assert (command[0], serve["build"]) == ("guard", ".")
    shown = CliRunner().invoke(app, [*command[1:], "--help"])
    assert shown.exit_code == 0, shown.output
    engine = command[command.index("--engine") + 1]
    assert engine == "llamacpp:/models/model.gguf"
    open_engine(engine).close()  # the URI parses; nothing loads before the first call
    port = command[command.index("--port") + 1]
    assert (command[command.index("--host") + 1], [f"{port}:{port}"]) == (
        "0.0.0.0",
        serve["ports"],
    )
    assert "./models:/models:ro" in serve["volumes"]
    probe = serve["healthcheck"]["test"]
    assert probe[1] == "python" and f"127.0.0.1:{port}/healthz" in probe[-1]


def test_the_dockerfile_installs_the_serve_and_ray_extras() -> None:
    assert (
        'pip wheel --no-cache-dir --wheel-dir /wheels ".[serve,ray]"'
        in (REPO / "Dockerfile").read_text()
    )


def test_the_ray_services_form_one_cluster_on_the_guards_image(compose: dict[str, Any]) -> None:
    """`ray start` on the head and a worker joining it, built from this image (which has
    Ray), with the ledger's DSN, only under the `ray` profile."""
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert (head["build"], worker["build"], head["profiles"], worker["profiles"]) == (
        ".", ".", ["ray"], ["ray"]
    )  # fmt: skip
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    port = next(a for a in head["command"] if a.startswith("--port=")).split("=")[1]
    assert f"--address=ray-head:{port}" in worker["command"]
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    for service in (head, worker):
        assert service["environment"]["GUARD_STATE_DSN"].endswith("@postgres:5432/vectors")
        assert service["healthcheck"]["test"][1:3] == ["ray", "health-check"]


def test_the_dockerfile_runs_the_same_command_unprivileged() -> None:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    shown = CliRunner().invoke(app, [*cmd[1:], "--help"])
    assert (cmd[0], shown.exit_code) == ("guard", 0), shown.output
    assert any(re.match(r"USER (?!root)\w+", line) for line in lines)
    assert any("GGML_NATIVE=OFF" in line for line in lines)  # portable CPU flags
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".cache", ".git"} <= set(ignored)


def test_the_sample_config_loads_and_its_uris_parse() -> None:
    config = load_config(REPO / "examples" / "guard.toml")
    assert [w.name for w in config.watch] == ["qdrant-docs", "pgvector-docs"]
    assert config.monitor.port == 9108
    for watch in config.watch:
        open_store(watch.store).close()  # nothing connects before the first call
        open_engine(watch.engine).close()
        assert watch.store.split("://")[1].split("/")[0].split("@")[-1].split(":")[0] in {
            "qdrant", "postgres"
        }  # fmt: skip
