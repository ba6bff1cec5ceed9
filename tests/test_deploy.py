"""deploy/: the systemd units verified by systemd itself, the container file's build stage
replayed (its COPY lines are enough to build the wheel), the compose file's wiring, and an
example gateway.toml that names every key."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
UNITS = ("gateway-run.service", "gateway-serve.service")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


# --- systemd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_units_pass_systemd_analyze_verify(unit, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify checks that ExecStart names an executable: point it at this checkout's command.
    gateway = Path(sys.executable).with_name("gateway")
    text = (DEPLOY / unit).read_text().replace("/usr/local/bin/gateway", str(gateway))
    (tmp_path / unit).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    # An unknown or misspelt key is only a warning to systemd: any output is a failure here.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


@pytest.mark.parametrize("unit", UNITS)
def test_units_run_unprivileged_hardened_with_credentials(unit):
    lines = [line.strip() for line in (DEPLOY / unit).read_text().splitlines()]
    values: dict[str, list[str]] = {}
    for line in lines:
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    assert values["User"] == ["gateway"] and values["NoNewPrivileges"] == ["yes"]
    assert values["ProtectSystem"] == ["strict"] and values["CapabilityBoundingSet"] == [""]
    assert values["LoadCredential"] and all("%d/" in v for v in values["Environment"]
                                            if "PASSWORD_FILE" in v)  # fmt: skip
    command = values["ExecStart"][0].split()
    assert command[0] == "/usr/local/bin/gateway" and command[1] in ("run", "serve")
    # The command really exists.
    assert subprocess.run([sys.executable, "-m", "gateway", command[1], "--help"],
                          capture_output=True, timeout=60).returncode == 0  # fmt: skip


# --- the container --------------------------------------------------------------------------


def test_the_container_runs_unprivileged_and_checks_healthz():
    steps = instructions(DEPLOY / "Containerfile")
    assert steps[0][0] == "FROM" and "-slim" in steps[0][1]
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    [health] = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "/healthz" in health and "8025" in health
    [cmd] = [rest for word, rest in final if word == "CMD"]
    assert cmd.startswith('["gateway"')


@pytest.mark.slow
def test_the_containers_build_stage_builds_a_working_wheel(tmp_path):
    """No container engine runs here, so the build stage is replayed: only what its COPY lines
    bring, then the same install; the installed command must work."""
    steps = instructions(DEPLOY / "Containerfile")
    build = steps[: next(i for i, (w, _) in enumerate(steps) if w == "FROM" and i > 0)]
    source = tmp_path / "src"
    source.mkdir()
    for word, rest in build:
        if word == "COPY" and not rest.startswith("--from"):
            *paths, target = shlex.split(rest)
            for path in paths:
                origin = REPO / path
                assert origin.exists(), f"COPY {path}: not in the repository"
                where = source / target if target not in ("./", ".") else source
                if origin.is_dir():
                    shutil.copytree(origin, where, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    where.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, where / origin.name)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(source)], check=True, capture_output=True,
                   timeout=180)  # fmt: skip
    [wheel] = out.glob("gateway-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=180)  # fmt: skip
    check = subprocess.run([sys.executable, "-m", "gateway", "templates", "check"],
                           cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_compose_wires_postgres_workers_and_the_dashboard():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "migrate", "worker", "web"}
    assert services["db"]["image"].startswith("postgres:")
    for name in ("migrate", "worker", "web"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Containerfile"
        url = service["environment"]["GATEWAY_DATABASE__URL"]
        assert url.startswith("postgresql+psycopg://") and "@db:" in url
    assert services["migrate"]["command"] == ["gateway", "db", "upgrade"]
    assert services["worker"]["command"] == ["gateway", "run"]
    assert services["worker"]["deploy"]["replicas"] >= 2  # several workers, one database
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["web"]["ports"] == ["127.0.0.1:8025:8025"]
    assert (REPO / services["web"]["build"]["context"].replace("..", ".")).exists()


# --- the example configuration ----------------------------------------------------------------


def test_the_example_configuration_loads_and_names_every_key():
    text = (DEPLOY / "gateway.toml.example").read_text()
    loaded = Settings(**tomllib.loads(text))  # every key given is a real key, of the right type
    assert loaded.smtp.host == "smtp.example.com"
    named: dict[str, set[str]] = {}
    section = None
    for line in text.splitlines():
        if header := re.match(r"\s*\[(\w+)\]", line):
            section = header.group(1)
            named[section] = set()
        elif (key := re.match(r"\s*#?\s*(\w+)\s*=", line)) and section:
            named[section].add(key.group(1))
    for name, field in Settings.model_fields.items():
        if name == "source_file":
            continue
        keys = {f.alias or key for key, f in field.annotation.model_fields.items()}
        missing = keys - named.get(name, set())
        assert not missing, f"[{name}] does not mention {sorted(missing)}"
