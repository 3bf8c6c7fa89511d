"""The deployment files keep their invariants: Dockerfile, .dockerignore, docker-compose.yml and
deploy/nginx.conf. No Docker engine is needed: the Dockerfile and nginx.conf are parsed from
text, the compose file with PyYAML (a dev dependency, not a runtime one: the compose checks skip
without it). The checks are about behaviour (what runs, what reaches the build, what the
settings and the proxy agree on), not about the files' wording."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import service
from service.config import Settings
from service.coordination import scripts

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"

# The seed's environment variables (its README's .env): the compatibility contract.
SEED_VARS = (
    "REPLICATE_API_TOKEN",
    "CONCURRENT_DOCKER_ADMIN_API_KEY",
    "FLASK_HOST",
    "FLASK_PORT",
    "REPLICATE_CONCURRENT_LIMIT",
    "REPLICATE_REQUESTS_PER_MINUTE",
)
SECRET_VARS = ("REPLICATE_API_TOKEN", "CONCURRENT_DOCKER_ADMIN_API_KEY")


def setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


# --- Dockerfile parsing -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def instructions_named(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def index_of(predicate: Any) -> int:
    for index, (keyword, args) in enumerate(dockerfile_instructions()):
        if predicate(keyword, args):
            return index
    raise AssertionError("no such Dockerfile instruction")


def copy_pairs() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY; flags such as --chown are dropped."""
    pairs = []
    for args in instructions_named("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert len(words) >= 2, f"COPY needs a source and a destination: {args!r}"
        pairs.append((words[:-1], words[-1]))
    return pairs


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


# --- Dockerfile -------------------------------------------------------------------------------


def test_python_environment() -> None:
    env = " ".join(instructions_named("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "PYTHONPATH=/app" in env


def test_runs_as_a_non_root_user() -> None:
    users = instructions_named("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert index_of(lambda k, a: k == "USER") < index_of(lambda k, a: k == "CMD")


def test_one_uvicorn_process_in_exec_form_stopped_by_sigterm() -> None:
    [cmd] = instructions_named("CMD")
    assert exec_form(cmd) == ["python", "-m", "service"]
    assert not instructions_named("ENTRYPOINT"), "an ENTRYPOINT shell would swallow SIGTERM"
    assert instructions_named("STOPSIGNAL") == ["SIGTERM"]
    assert instructions_named("EXPOSE") == ["5003"]


def test_healthcheck_gets_health_with_python_not_curl() -> None:
    [healthcheck] = instructions_named("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"], "slim has no curl"
    assert "/health" in argv[2] and "urllib" in argv[2]
    assert "FLASK_PORT" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")


def test_redis_scripts_sit_next_to_the_package_as_scripts_py_expects() -> None:
    # scripts.py finds the Lua files at <package parent>/redis_scripts, so the image keeps the
    # source tree as it is in the repository (and must not pip-install the package itself).
    package_parent = Path(service.__file__).resolve().parent.parent
    assert package_parent / "redis_scripts" == scripts.SCRIPTS_DIR
    destinations = {src.rstrip("/"): dst.rstrip("/") for srcs, dst in copy_pairs() for src in srcs}
    assert destinations.get("service") == "/app/service"
    assert destinations.get("redis_scripts") == "/app/redis_scripts"
    for run in instructions_named("RUN"):
        assert not re.search(r"pip install[^&]*\s\.(\s|$)", run), "installing the package moves it"


def test_dependencies_are_installed_in_a_layer_before_the_source() -> None:
    copy_pyproject = index_of(lambda k, a: k == "COPY" and "pyproject.toml" in a)
    install = index_of(lambda k, a: k == "RUN" and "pip install" in a)
    copy_source = index_of(lambda k, a: k == "COPY" and re.search(r"\bservice/?\s", a))
    assert copy_pyproject < install < copy_source


def test_dependency_step_lists_exactly_pyprojects_dependencies(tmp_path: Path) -> None:
    """Run the Dockerfile's own `python -c` that turns pyproject.toml into requirements."""
    [install] = [a for a in instructions_named("RUN") if "pip install" in a]
    first_command = install.split("&&")[0].strip()
    argv = shlex.split(first_command)
    assert argv[:2] == ["python", "-c"]
    code = argv[2].replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)
    written = (tmp_path / "requirements.txt").read_text().splitlines()
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert written == expected
    assert "/tmp/requirements.txt" in install.split("&&")[1], "pip must read what was written"


# --- .dockerignore and the build context ------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated paths (Go filepath.Match + `**`)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def context_excludes(path: str) -> bool:
    """Does .dockerignore keep `path` out of the build context? The last matching line wins, and
    a line matches a path when it matches the path or one of its parent directories."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _ignore_regex(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    for sources, _ in copy_pairs():
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            files = [p for p in files if "__pycache__" not in p.parts]
            assert files, f"COPY {source}: nothing to copy"
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not context_excludes(relative), f"{relative} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".git/config",
        ".venv/bin/python",
        ".venv-test/bin/python",
        "tests/unit/test_deploy_files.py",
        "service/__pycache__/config.cpython-312.pyc",
        "replicate_concurrent_generation.egg-info/PKG-INFO",
    ],
)
def test_secrets_and_local_state_stay_out_of_the_build_context(path: str) -> None:
    assert context_excludes(path)


# --- deploy/nginx.conf ------------------------------------------------------------------------


def nginx_directives() -> dict[str, list[str]]:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    directives: dict[str, list[str]] = {}
    for statement in re.split(r"[;{}]", text):
        words = statement.split(None, 1)
        if words:
            directives.setdefault(words[0], []).append(words[1].strip() if len(words) > 1 else "")
    return directives


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, f"unexpected nginx time {value!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return int(match.group(1)) * scale


def nginx_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG])?", value)
    assert match, f"unexpected nginx size {value!r}"
    unit = (match.group(2) or "").lower()
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_nginx_braces_balance() -> None:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0


def test_nginx_resolves_replicas_through_docker_dns_at_request_time() -> None:
    directives = nginx_directives()
    [resolver] = directives["resolver"]
    assert resolver.split()[0] == "127.0.0.11"
    valid = re.search(r"valid=(\S+)", resolver)
    assert valid and nginx_seconds(valid.group(1)) <= 30
    # proxy_pass through a variable: resolved per request, so every replica gets traffic.
    [proxy_pass] = directives["proxy_pass"]
    assert proxy_pass.startswith("$")
    assert f"{proxy_pass} http://api:5003" in directives["set"]
    assert directives["listen"] == ["5003"]


def test_nginx_waits_longer_than_the_longest_request() -> None:
    [read_timeout] = nginx_directives()["proxy_read_timeout"]
    assert nginx_seconds(read_timeout) >= 600
    longest = setting_default("queue_timeout_seconds") + setting_default(
        "prediction_timeout_seconds"
    )
    assert nginx_seconds(read_timeout) > longest


def test_nginx_body_limit_matches_max_body_bytes() -> None:
    [size] = nginx_directives()["client_max_body_size"]
    assert nginx_bytes(size) == setting_default("max_body_bytes")


def test_nginx_forwards_the_request_id() -> None:
    headers = nginx_directives()["proxy_set_header"]
    assert any(h.split()[0].lower() == "x-request-id" for h in headers)


# --- docker-compose.yml (parsed with PyYAML) --------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip(
        "yaml",
        reason="PyYAML is not installed (not a project dependency): compose structure unchecked",
    )
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def with_defaults(value: str) -> str:
    """Compose interpolation with nothing set: `${X:-d}` → d, `${X}` → ""."""
    value = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+\}", "", value)


def duration_seconds(value: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value):
        total += float(amount) * {"us": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def test_redis_persists_with_aof_never_evicts_and_has_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "redis-server"
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "everysec"
    assert pairs["--maxmemory-policy"] == "noeviction"
    [volume] = redis["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/data" and name in compose["volumes"], "AOF must live in a named volume"
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli ping" in test


def test_api_is_three_replicas_behind_the_balancer(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["build"]["context"] == "."
    assert api["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert api["deploy"]["replicas"] == 3
    assert "container_name" not in api, "a fixed name forbids more than one replica"
    assert "ports" not in api, "replicas must not bind host ports; lb publishes one"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "profiles" not in api


def test_api_stop_grace_period_covers_the_drain(compose: dict[str, Any]) -> None:
    grace = duration_seconds(compose["services"]["api"]["stop_grace_period"])
    assert grace >= setting_default("drain_seconds") + 10


def test_api_environment(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    assert isinstance(env, dict)
    for name in SEED_VARS:
        assert name in env, f"seed variable {name} is not passed to the api"
    for name in SECRET_VARS:
        # By name only: unset stays unset (an empty string would be a configured, empty secret).
        assert env[name] is None
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert "REPLICA_ID" not in env, "one shared replica id would merge the replicas' leases"
    assert str(env["FLASK_PORT"]) == "5003", "lb proxies to api:5003"
    assert env["FLASK_HOST"] == "0.0.0.0"


def test_api_environment_matches_the_settings(compose: dict[str, Any]) -> None:
    """Every setting but REPLICA_ID is configurable, no name is misspelt, and the defaults
    written into the compose file are the service's own."""
    env = compose["services"]["api"]["environment"]
    settings = {name.upper() for name in Settings.model_fields}
    extras = {"FORWARDED_ALLOW_IPS"}  # read by uvicorn, not by Settings
    assert set(env) - settings <= extras, "unknown variables"
    assert settings - set(env) == {"REPLICA_ID"}, "settings the compose file does not forward"
    for name, value in env.items():
        if isinstance(value, str) and "${" in value:
            default = Settings.model_fields[name.lower()].default
            assert with_defaults(value) == str(default), f"{name}'s default differs from config.py"


def test_load_balancer_publishes_5003(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    assert lb["image"].startswith("nginx:") and "alpine" in lb["image"]
    assert "profiles" not in lb
    published = [with_defaults(str(p)) for p in lb["ports"]]
    assert "5003:5003" in published
    mounts = [v.split(":")[:2] for v in lb["volumes"]]
    assert ["./deploy/nginx.conf", "/etc/nginx/nginx.conf"] in mounts
    assert (ROOT / "deploy" / "nginx.conf").is_file()


def test_demo_profile_adds_the_simulator(compose: dict[str, Any]) -> None:
    services = compose["services"]
    simulator = services["simulator"]
    assert simulator["profiles"] == ["demo"]
    assert simulator["build"] == services["api"]["build"], "the same image as the api"
    command = [str(a) for a in simulator["command"]]
    assert command[:3] == ["python", "-m", "service.simulator"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {
        "--host": "0.0.0.0",
        "--port": "8100",
        "--public-base-url": "http://localhost:8100",
    }
    assert "8100:8100" in [with_defaults(str(p)) for p in simulator["ports"]]
    # The image's HEALTHCHECK probes the api's /health on 5003: the simulator needs its own.
    probe = simulator["healthcheck"]["test"]
    assert "/_sim/health" in " ".join(probe)
    if probe[:3] == ["CMD", "python", "-c"]:
        compile(probe[3], "simulator healthcheck", "exec")
    assert [n for n, s in services.items() if "demo" in s.get("profiles", [])] == ["simulator"]


def test_sentinel_profile_adds_a_replica_and_three_sentinels(compose: dict[str, Any]) -> None:
    """docs/redis-ha.md: the profile's services, and nothing else in a profile but the demo."""
    services = compose["services"]
    profiled = {n: s["profiles"] for n, s in services.items() if "profiles" in s}
    sentinels = ["sentinel-1", "sentinel-2", "sentinel-3"]
    in_profile = {name: ["sentinel"] for name in ["redis-replica", *sentinels]}
    assert profiled == {"simulator": ["demo"], **in_profile}
    replica = [str(a) for a in services["redis-replica"]["command"]]
    at = replica.index("--replicaof")
    assert replica[at + 1 : at + 3] == ["redis", "6379"]
    names = set()
    for name in sentinels:
        script = services[name]["command"][-1]
        assert "sentinel monitor rcg-primary redis 6379 2" in script
        assert "--sentinel" in script and "resolve-hostnames yes" in script
        names.add(services[name]["environment"]["SENTINEL_NAME"])
        [volume] = services[name]["volumes"]
        assert volume.split(":")[0] in compose["volumes"], "a sentinel's state outlives restarts"
    assert names == set(sentinels)
