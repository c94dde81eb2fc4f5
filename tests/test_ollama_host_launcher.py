"""launcher.py: the systemd unit it writes, checked by systemd itself where available."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ollama_host import launcher
from tests.gateway_proc import ROOT, free_port
from tests.ollama_standin import StandIn

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def _service(unit: str) -> dict[str, str]:
    lines = unit.split("[Service]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return dict(line.split("=", 1) for line in lines)


def _verify(unit: str, folder: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    path = folder / launcher.UNIT
    path.write_text(unit)
    # System mode: a user-mode verify needs a running user manager, which CI lacks;
    # the unit's syntax and its ExecStart checks are the same.
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, check=False
    )


def test_unit_runs_this_interpreter_on_this_app_with_an_absolute_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    unit = launcher.render_unit(["--port", "5001", "--data", "rel/data", "--grace", "20"])

    service = _service(unit)
    argv = shlex.split(service["ExecStart"])
    assert argv == [
        sys.executable,
        str(ROOT / "app.py"),
        "--data",
        str(tmp_path / "rel" / "data"),
        "--port",
        "5001",
        "--grace",
        "20",
    ]
    assert Path(argv[0]).is_absolute()
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 20 + 4  # grace + the gateway's own margins
    assert "WantedBy=default.target" in unit
    assert "User=" not in unit


def test_the_default_data_folder_is_app_py_s_default(tmp_path: Path) -> None:
    unit = launcher.render_unit([], env={"XDG_DATA_HOME": str(tmp_path)})

    argv = shlex.split(_service(unit)["ExecStart"])
    assert argv[2:] == ["--data", str(tmp_path / "ollama-host")]


def test_a_system_unit_runs_as_the_sudo_user_and_starts_at_boot() -> None:
    unit = launcher.render_unit([], system=True, env={"SUDO_USER": "nobody"})

    service = _service(unit)
    assert service["User"] == "nobody"
    assert "WantedBy=multi-user.target" in unit
    # nobody's home, not the caller's.
    assert str(Path.home()) not in service["ExecStart"]


def test_bad_app_flags_are_refused() -> None:
    with pytest.raises(SystemExit) as exit_:
        launcher.render_unit(["--port", "seventy"])

    assert exit_.value.code == 2


@pytest.mark.parametrize("flags", [["--admin-token", "s3cret"], ["--reset-admin-token"]])
def test_the_admin_token_never_goes_into_the_unit(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        launcher.render_unit(flags)

    assert "--reset-admin-token --data" in str(exit_.value.code)


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("plain/path", "plain/path"),
        ("/with space", '"/with space"'),
        ("100%", "100%%"),
        ("$HOME", "$$HOME"),
        ('say "hi"', '"say \\"hi\\""'),
    ],
)
def test_exec_start_arguments_are_quoted_for_systemd(arg: str, quoted: str) -> None:
    assert launcher.systemd_quote(arg) == quoted


@needs_analyze
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    data = tmp_path / "a data folder with 100% of $HOME"
    unit = launcher.render_unit(["--data", str(data), "--port", "5001"])

    result = _verify(unit, tmp_path)

    assert result.returncode == 0, result.stderr
    assert launcher.UNIT not in result.stdout + result.stderr, result.stderr


@needs_analyze
def test_systemd_verify_rejects_a_unit_with_a_missing_interpreter(tmp_path: Path) -> None:
    """The check above can fail: a unit whose interpreter does not exist is refused."""
    unit = launcher.render_unit([], python=str(tmp_path / "no-such-python"))

    result = _verify(unit, tmp_path)

    assert result.returncode != 0
    assert "no-such-python" in result.stderr


@pytest.mark.server
def test_the_unit_s_command_starts_the_gateway_and_sigterm_stops_it(
    standin: StandIn, tmp_path: Path
) -> None:
    port = free_port()
    unit = launcher.render_unit(
        ["--data", str(tmp_path / "data"), "--port", str(port), "--ollama", standin.url]
    )
    argv = shlex.split(_service(unit)["ExecStart"])

    with (tmp_path / "log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "log").read_text()
                    assert time.monotonic() < deadline, "the gateway did not start"
                    time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert health.json()["status"] == "ok"
    assert code == 0
    # The lock file the store keeps in its folder: the folder the unit named.
    assert (tmp_path / "data").is_dir()


def test_install_writes_the_unit_and_starts_it_and_uninstall_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bool, tuple[str, ...]]] = []
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(launcher, "systemd_running", lambda: True)

    def systemctl(system: bool, *args: str) -> int:
        calls.append((system, args))
        return 0

    monkeypatch.setattr(launcher, "systemctl", systemctl)
    path = tmp_path / "config" / "systemd" / "user" / launcher.UNIT

    assert launcher.main(["install", "--port", "5002", "--data", str(tmp_path / "d")]) == 0

    assert "--port 5002" in path.read_text()
    assert calls == [(False, ("daemon-reload",)), (False, ("enable", "--now", launcher.UNIT))]

    calls.clear()
    assert launcher.main(["uninstall"]) == 0

    assert not path.exists()
    assert calls == [(False, ("disable", "--now", launcher.UNIT)), (False, ("daemon-reload",))]


def test_install_says_plainly_when_there_is_no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "systemd_running", lambda: False)

    with pytest.raises(SystemExit) as exit_:
        launcher.main(["install"])

    assert "systemd is not running" in str(exit_.value.code)
