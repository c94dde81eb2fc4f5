"""Settings: flags, their environment variables, and OLLAMA_HOST read as Ollama reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollama_host.envhost import ollama_url
from ollama_host.settings import declared, parse_settings, program_name, settings_table
from tests.gateway_proc import ROOT


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://gpu-box", "https://gpu-box:443"),
        ("https://gpu-box:8443/ollama/", "https://gpu-box:8443/ollama"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("  0.0.0.0  ", "http://127.0.0.1:11434"),
    ],
)
def test_ollama_address_is_read_like_ollama(value: str, url: str) -> None:
    assert ollama_url(value) == url


@pytest.mark.parametrize("value", ["ftp://gpu-box", "unix:///run/ollama.sock"])
def test_bad_ollama_address_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="Ollama address"):
        ollama_url(value)


def test_defaults() -> None:
    settings = parse_settings([], {"XDG_DATA_HOME": "/srv/xdg"})

    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert settings.ollama_url == "http://127.0.0.1:11434"
    assert settings.data_dir == "/srv/xdg/ollama-host"


def test_environment_then_flags() -> None:
    env = {"OLLAMA_HOST": "gpu:1", "OLLAMA_GATEWAY_PORT": "6000", "OLLAMA_GATEWAY_DATA": "/d"}

    from_env = parse_settings([], env)
    from_flags = parse_settings(["--port", "7000", "--ollama", "other:2"], env)

    assert (from_env.port, from_env.ollama_url, from_env.data_dir) == (6000, "http://gpu:1", "/d")
    assert (from_flags.port, from_flags.ollama_url, from_flags.data_dir) == (
        7000,
        "http://other:2",
        "/d",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "x"],
        ["--timeout", "0"],
        ["--log-level", "loud"],
        ["--ollama", "ftp://x"],
    ],
)
def test_bad_values_exit_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv, {})

    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port", "x"], "--port"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--upstream", "a=http://h:1,weight=inf"], "weight must be a finite number"),
    ],
)
def test_a_usage_error_is_one_line_and_a_hint(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not the 23 lines of usage before the one that matters.
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv, {})

    lines = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2
    assert len(lines) == 2, lines
    assert lines[0].startswith("python app.py: error: ")
    assert says in lines[0]
    assert lines[1] == "Run `python app.py --help` for every setting."


def test_help_names_every_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--help"], {})
    shown = capsys.readouterr().out

    assert exited.value.code == 0
    for item in declared():
        assert item.flag in shown
        if item.env is not None:
            assert item.env in shown
    for required in ("--host", "--port", "--ollama", "--data"):
        assert required in shown


def test_app_py_help_is_the_same_parser() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, check=True
    )

    assert "--max-upstream-line" in result.stdout
    assert "OLLAMA_GATEWAY_HOST" in result.stdout


def test_readme_settings_table_is_the_declared_one() -> None:
    """The README's table is made from the declarations (python -m ollama_host settings-table);
    this fails when either drifts."""
    readme = (ROOT / "README.md").read_text()

    assert settings_table() in readme


def test_every_setting_has_a_flag_a_help_and_a_distinct_variable() -> None:
    items = list(declared())
    envs = [item.env for item in items if item.env is not None]

    assert len({item.flag for item in items}) == len(items)
    assert len(set(envs)) == len(envs)
    assert all(item.help and item.flag.startswith("--") for item in items)


def test_the_usage_names_the_program_as_it_was_started(tmp_path: Path) -> None:
    """`ollama-host --help` says `usage: ollama-host`, not `python app.py`; so does
    `python -m ollama_host` where pip installed it (it runs app.py in site-packages, where a
    user has no app.py to run). In a checkout (app.py beside pyproject.toml): `python app.py`."""
    checkout, site = tmp_path / "checkout", tmp_path / "site-packages"
    for folder in (checkout, site):
        folder.mkdir()
        (folder / "app.py").write_text("")
    (checkout / "pyproject.toml").write_text("")

    assert program_name("/usr/local/bin/ollama-host") == "ollama-host"
    assert program_name(str(site / "app.py")) == "ollama-host"
    assert program_name(str(checkout / "app.py")) == "python app.py"
    assert program_name(str(ROOT / "app.py")) == "python app.py"
