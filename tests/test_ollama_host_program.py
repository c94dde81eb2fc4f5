"""ollama_host/program.py: one command line, whichever way the gateway is started."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ollama_host import program
from ollama_host.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_command_is_the_composition_root_s_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    assert scripts == {"ollama-host": "app:main"}
    assert program.APP == ROOT / "app.py"


def test_a_command_runs_without_the_app(capsys: pytest.CaptureFixture[str]) -> None:
    def no_app(*args: object, **kwargs: object) -> None:
        raise AssertionError("a command needs no app")

    assert program.main(["settings-table"], create_app=no_app) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == settings_table()


@pytest.mark.slow
@pytest.mark.parametrize(
    "start",
    [
        [sys.executable, str(ROOT / "app.py")],
        [sys.executable, "-m", "ollama_host"],
        [str(Path(sys.executable).parent / "ollama-host")],
    ],
    ids=["app.py", "python -m ollama_host", "ollama-host"],
)
def test_every_start_is_the_same_program(start: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*start, "settings-table"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == settings_table()
