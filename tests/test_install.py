"""`pip install .` as a user runs it: the wheel holds every package, sub-packages included, and
the page's files; the installed `ollama-host` command serves an ask, the dashboard and the docs
from the installed copy, not from this checkout.

The wheel is built from a copy of the tracked files (building in the checkout would leave a
build/ folder in it), with pip's build isolation as a user's `pip install .` has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.gateway_proc import ADMIN_TOKEN, ROOT, Gateway, start_gateway
from tests.helpers import ask
from tests.ollama_standin import StandIn
from tests.test_layers import PACKAGES

pytestmark = pytest.mark.server


def _tracked() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the wheel, the install prefix, its site-packages folder)."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    for name in _tracked():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = (work / "dist").glob("*.whl")
    prefix = work / "prefix"
    subprocess.run(
        # --ignore-installed: without it pip uninstalls the checkout's own (editable)
        # install from this venv before installing into the prefix.
        [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel)],
        check=True,
        timeout=300,
    )
    (site,) = prefix.glob("lib/python*/site-packages")
    return wheel, prefix, site


def _env(site: Path) -> dict[str, str]:
    # The installed copy first on the path, as in a virtual environment of its own; the
    # checkout's editable finder (in this venv) only answers what the path does not have.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")}
    env["PYTHONPATH"] = str(site)
    return env


def test_the_wheel_holds_every_package_and_the_pages_files(
    installed: tuple[Path, Path, Path],
) -> None:
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        held = set(archive.namelist())
    tracked = _tracked()
    code = [n for n in tracked if n.endswith(".py") and n.split("/", 1)[0] in PACKAGES]
    static = [n for n in tracked if n.startswith("static/")]

    assert "app.py" in held
    assert [n for n in code if n not in held] == []
    assert [n for n in static if f"ollama_host/{n}" not in held] == []
    # Nothing generic at the top of site-packages: static/ lives inside the program package.
    tops = {n.split("/", 1)[0] for n in held if "/" in n} - {*PACKAGES}
    assert [top for top in tops if not top.endswith(".dist-info")] == []


def test_the_installed_command_runs_from_the_installed_copy(
    installed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, prefix, site = installed
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import routes.page, store.tinydb, app; "
            "print(routes.page.STATIC); print(store.tinydb.__file__); print(app.__file__)",
        ],
        cwd=tmp_path,
        env=_env(site),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    assert where == [
        str(site / "ollama_host" / "static"),
        str(site / "store" / "tinydb" / "__init__.py"),
        str(site / "app.py"),
    ]
    usage = subprocess.run(
        [str(prefix / "bin" / "ollama-host"), "--help"],
        env=_env(site),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert usage.startswith("usage: ollama-host")
    # `python -m ollama_host` runs the installed app.py: it names the command a user has.
    usage = subprocess.run(
        [sys.executable, "-m", "ollama_host", "--help"],
        cwd=tmp_path,
        env=_env(site),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert usage.startswith("usage: ollama-host")


def test_the_installed_gateway_answers_and_serves_its_pages(
    installed: tuple[Path, Path, Path], standin: StandIn, tmp_path: Path
) -> None:
    _, prefix, site = installed
    gateway: Gateway = start_gateway(
        tmp_path / "data",
        "--ollama",
        standin.url,
        command=[str(prefix / "bin" / "ollama-host")],
        env=_env(site),
        cwd=tmp_path,
    )
    with gateway:
        answer = httpx.post(f"{gateway.url}/api/v1/ai/ask_sync", json=ask(), timeout=10)
        assert answer.status_code == 200, answer.text
        with httpx.Client(base_url=gateway.url, timeout=10, follow_redirects=True) as client:
            page = client.get(f"/dashboard?token={ADMIN_TOKEN}")
            assert page.status_code == 200
            assert "dashboard.js" in page.text
            script = client.get("/static/dashboard.js")
            assert script.status_code == 200
            assert script.content == (ROOT / "static" / "dashboard.js").read_bytes()
            docs = client.get("/docs")
            assert docs.status_code == 200
            assert "swagger" in docs.text.lower()
            assert client.get("/static/vendor/swagger-ui/swagger-ui.css").status_code == 200
    assert "Traceback" not in gateway.logs(), gateway.logs()
