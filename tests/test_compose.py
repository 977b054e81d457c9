"""docker-compose.yml, .env.example and the Dockerfile agree with the code. No Docker needed."""

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
GIH = str(Path(sys.executable).parent / "gih")
STANDARD_VARS = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_DEFAULT_REGION"}
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
SERVICES: dict[str, dict] = yaml.safe_load(COMPOSE_TEXT)["services"]
APP_SERVICES = sorted(n for n, s in SERVICES.items() if "build" in s)
OTHER_SERVICES = sorted(set(SERVICES) - set(APP_SERVICES))
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    found = {}
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert lines[i - 1].startswith("#"), f"{name}: no comment above it in .env.example"
            found[name.strip()] = value.strip()
    return found


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; $$ is a literal $."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        value = values.get(name)
        if op in (":-", "-") and (value is None or (op == ":-" and not value)):
            return arg
        assert value or not op or "?" not in op, f"${{{name}}} is required: {arg}"
        return value or ""
    return "$".join(INTERPOLATION.sub(one, part) for part in text.split("$$"))


@cache
def gih_help(*words: str) -> str:
    run = subprocess.run([GIH, *words, "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert run.returncode == 0, f"`gih {' '.join(words)}` is not a gih command: {run.stderr}"
    return run.stdout


def assert_gih_command(argv: list[str]) -> None:
    assert argv[0] == "gih", argv
    words = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            break
        words.append(arg)
    text = gih_help(*words)
    for option in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert option in text, f"`gih {' '.join(words)}` has no {option} option"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def http_paths(text: str) -> list[str]:
    return re.findall(r"http://127\.0\.0\.1:[^/\s]*(/\w+)", text)


@cache
def is_get_route(path: str) -> bool:
    """Asks the routes themselves: FastAPI may nest included routers (no flat .path list)."""
    from starlette.routing import Match

    from app.main import create_app
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [],
             "query_string": b""}
    return any(r.matches(scope)[0] == Match.FULL for r in create_app(Settings()).routes)


def test_services_exist() -> None:
    expected = {"postgres", "redis", "minio", "createbucket", "migrate", "api", "worker"}
    assert expected <= set(SERVICES)
    assert {"migrate", "api", "worker"} <= set(APP_SERVICES)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_commands_are_real_gih_commands(name: str) -> None:
    assert_gih_command(SERVICES[name]["command"])


def test_api_and_worker_share_one_image() -> None:
    api, worker = SERVICES["api"], SERVICES["worker"]
    assert api["image"] == worker["image"] and api["build"] == worker["build"]
    assert {s["image"] for n, s in SERVICES.items() if n in APP_SERVICES} == {api["image"]}


def test_worker_is_scalable_and_checked() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["healthcheck"]["test"] == ["CMD", "gih", "worker", "--check"]
    assert_gih_command(worker["healthcheck"]["test"][1:])


@pytest.mark.parametrize("name", ["api", "worker"])
def test_waits_for_one_shots_and_stops_gracefully(name: str) -> None:
    deps = SERVICES[name]["depends_on"]
    for one_shot in ("migrate", "createbucket"):
        assert deps[one_shot]["condition"] == "service_completed_successfully"
    grace = float(interpolate(environment(SERVICES[name])["GIH_SHUTDOWN_GRACE_S"], env_example()))
    assert grace < int(SERVICES[name]["stop_grace_period"].removesuffix("s"))


def test_gih_variables_are_settings_fields() -> None:
    names = set(env_example()) | set(re.findall(r"\b(GIH_\w+)", COMPOSE_TEXT))
    for service in SERVICES.values():
        names |= set(environment(service))
    unknown = {n for n in names if n.startswith("GIH_")
               and n.removeprefix("GIH_").lower() not in Settings.model_fields}
    assert not unknown, f"not fields of app.config.Settings: {sorted(unknown)}"


def test_app_services_use_only_known_other_variables() -> None:
    others = set().union(*(environment(SERVICES[n]) for n in OTHER_SERVICES))
    for name in APP_SERVICES:
        for var in environment(SERVICES[name]):
            assert var.startswith("GIH_") or var in STANDARD_VARS or var in others, (name, var)


def test_interpolated_variables_are_in_env_example() -> None:
    used = {m.group(1) for part in COMPOSE_TEXT.split("$$") for m in INTERPOLATION.finditer(part)}
    missing = used - set(env_example())
    assert not missing, f"used in docker-compose.yml, missing from .env.example: {missing}"


def test_example_values_make_valid_settings_except_the_secret(monkeypatch) -> None:
    for var in [v for v in os.environ if v.startswith("GIH_") or v in STANDARD_VARS]:
        monkeypatch.delenv(var)
    for var, value in environment(SERVICES["api"]).items():
        monkeypatch.setenv(var, interpolate(value, env_example()))
    settings = Settings()  # raises if any value is invalid
    assert not settings.embedded and settings.storage == "s3" and settings.redis_url
    problems = settings.problems()
    assert problems and all("GIH_SECRET_KEY" in p for p in problems), problems


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_healthcheck_paths_are_routes(path: str) -> None:
    used = http_paths(json.dumps(SERVICES["api"]["healthcheck"]["test"]))
    used += http_paths((ROOT / "Dockerfile").read_text())
    assert path in used
    assert is_get_route(path), f"GET {path} is not a route of app.main:create_app()"


def test_dockerfile_final_stage() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    final = stages[-1]
    body = " ".join(args for _, args in final)
    users = [args for ins, args in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    checks = [args for ins, args in final if ins == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK in the final stage"
    probe = json.loads(checks[-1].split(" CMD ", 1)[1])  # exec form: must be valid JSON
    assert probe[0] == "python" and "/healthz" in probe[-1]
    assert "--from=builder /opt/venv" in body
    for tool in ("gcc", "build-essential", "apt-get install"):
        assert tool not in body, f"{tool} in the final stage"
    cmd = [args for ins, args in final if ins == "CMD"][-1]
    assert_gih_command(json.loads(cmd))


def test_dockerfile_builder_copies_the_package() -> None:
    copied = " ".join(args for ins, args in dockerfile_stages()[0] if ins == "COPY")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "app/", "worker/", "migrations/"):
        assert needed in copied and needed.rstrip("/") not in ignored
