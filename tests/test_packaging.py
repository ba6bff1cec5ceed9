"""The wheel carries carriers.yaml and the templates, so an installed gateway works anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, run_gateway


@pytest.mark.slow
def test_installed_wheel_uses_its_shipped_carriers_and_templates(tmp_path):
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = out.glob("gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/_shipped/carriers.yaml" in names
    assert "gateway/_shipped/rules.yaml" in names
    assert "gateway/_shipped/templates/order_confirmed.txt.j2" in names
    assert any(n.startswith("gateway/store/migrations/versions/0001") for n in names)
    # The dashboard runs from an installed wheel: its pages, script, style and htmx go with it.
    for part in ("templates/base.html", "static/app.js", "static/vendor/htmx-2.0.11.min.js"):
        assert f"gateway/web/{part}" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wheel_env = {"PYTHONPATH": str(site)}  # the wheel's package, not the checkout's

    def run(*args):
        return run_gateway(*args, cwd=elsewhere, env=wheel_env)

    located = subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
        cwd=elsewhere,
        env={**os.environ, **wheel_env},
        capture_output=True,
        text=True,
    )
    assert located.stdout.startswith(str(site))
    address = run("address", "+12025550143", "--carrier", "verizon")
    assert address.returncode == 0 and address.stdout.strip() == "2025550143@vtext.com"
    assert run("templates", "check").returncode == 0


def test_constraints_pin_what_the_ranges_allow_and_every_dependency():
    """constraints.txt (the versions CI ran) pins each dependency, inside pyproject's range,
    and the installed versions are those pins: the suite runs what it says it runs."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.lower().replace("_", "-")] = pinned
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt (make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
        assert version(requirement.name) == pins[name], f"{name}: installed {version(name)}"
