"""Configuring several upstreams: `--upstream` flags, a TOML file, their variables, and the
mistakes that stop the start with a message naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_host.settings import parse_settings
from upstreams import build
from upstreams.config import ConfigError, UpstreamSpec, load_file, parse_flag, specs


def test_a_flag_with_every_option() -> None:
    spec = parse_flag(
        "gpu2=http://10.0.0.6:8080,kind=openai,cap=4,weight=2.5,models=llama3|qwen,key_env=GPU2_KEY"
    )

    assert spec == UpstreamSpec(
        name="gpu2",
        url="http://10.0.0.6:8080",
        kind="openai",
        cap=4,
        weight=2.5,
        models=("llama3", "qwen"),
        key_env="GPU2_KEY",
    )


def test_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(
        '[upstream.gpu1]\nurl = "http://10.0.0.5:11434"\ncap = 2\n\n'
        '[upstream.llama]\nurl = "https://llama.lan/v1"\nkind = "openai"\nmodels = ["smollm2"]\n'
    )

    found = load_file(path)

    assert [(s.name, s.url, s.kind, s.cap, s.models) for s in found] == [
        ("gpu1", "http://10.0.0.5:11434", "ollama", 2, None),
        ("llama", "https://llama.lan/v1", "openai", None, ("smollm2",)),
    ]


def test_without_upstreams_it_is_the_one_ollama() -> None:
    settings = parse_settings([], {"OLLAMA_HOST": "gpu:1234"})

    assert specs(settings.upstream, settings.upstreams_file, settings.ollama_url, {}) == [
        UpstreamSpec(name="ollama", url="http://gpu:1234")
    ]


def test_the_variable_takes_several_separated_by_spaces() -> None:
    env = {"OLLAMA_GATEWAY_UPSTREAM": "a=http://h1:1 b=http://h2:2,cap=3"}

    settings = parse_settings([], env)

    assert settings.upstream == ("a=http://h1:1", "b=http://h2:2,cap=3")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--upstream", "gpu1"], "expected NAME=URL"),
        (["--upstream", "gpu1=10.0.0.5:11434"], "the URL must be http://"),
        (["--upstream", "gpu1=ftp://x"], "the URL must be http://"),
        (["--upstream", "gpu1=http://h:99999"], "bad port"),
        (["--upstream", "gpu1=http://user:pw@h:1"], "no credentials in the URL"),
        (["--upstream", "gpu1=http://h:1,cap=0"], "cap must be at least 1"),
        (["--upstream", "gpu1=http://h:1,cap=many"], "cap"),
        (["--upstream", "gpu1=http://h:1,weight=0"], "weight must be more than 0"),
        (["--upstream", "gpu1=http://h:1,weight=inf"], "weight must be a finite number"),
        (["--upstream", "gpu1=http://h:1,weight=nan"], "weight must be a finite number"),
        (["--upstream", "gpu1=http://h:1/v1"], "has a path '/v1'"),
        (["--upstream", "gpu1=http://h:1/"], "has a path '/'"),
        (["--upstream", "gpu1=http://h:1?x=1"], "has a query '?x=1'"),
        (["--upstream", "gpu1=http://h:1/v1?x=1,kind=openai"], "has a query '?x=1'"),
        (["--upstream", "gpu1=http://h:1#top"], "has a fragment '#top'"),
        (["--upstream", "gpu1=http://h:1/v1#top,kind=openai"], "has a fragment '#top'"),
        (["--upstream", "gpu1=http://h:1,kind=grpc"], "unknown kind 'grpc'"),
        (["--upstream", "gpu1=http://h:1,colour=red"], "unknown option 'colour'"),
        (["--upstream", "gpu1=http://h:1,models=../x"], "is not a model name"),
        (["--upstream", "gpu1=http://h:1,key_env=NOT_SET_HERE"], "NOT_SET_HERE, which is not set"),
        (["--upstream", "bad name=http://h:1"], "the name 'bad name'"),
        (
            ["--upstream", "a=http://h:1", "--upstream", "a=http://h:2"],
            "two upstreams are named 'a'",
        ),
        (["--upstream", "a=http://h:1", "--ollama", "http://h:2"], "--ollama names the one Ollama"),
    ],
)
def test_a_bad_upstream_stops_the_start_naming_the_flag(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(flags, {})

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "--upstream" in err
    assert says in err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[upstream.a]\nurl = 'http://h:1'\n[other]\nx = 1\n", "unknown table 'other'"),
        ("[upstream.a]\ncap = 2\n", "no url"),
        ("[upstream.a\nurl=", "not TOML"),
    ],
)
def test_a_bad_file_stops_the_start_naming_it(
    tmp_path: Path, text: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "up.toml"
    path.write_text(text)

    with pytest.raises(SystemExit):
        parse_settings(["--upstreams", str(path)], {})

    err = capsys.readouterr().err
    assert f"--upstreams {path}" in err
    assert says in err


def test_a_path_is_taken_for_the_openai_kind_only() -> None:
    # An OpenAI-compatible API is often served under a path (`/v1`, a proxy's prefix); an
    # Ollama's address is its root, and `.../v1` on one is the common mistake.
    spec = parse_flag("llama=http://h:8080/v1/,kind=openai")

    assert spec.url == "http://h:8080/v1"
    with pytest.raises(ConfigError, match=r"kind=openai"):
        parse_flag("gpu1=http://h:11434/v1")


def test_a_weight_of_inf_in_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "up.toml"
    path.write_text("[upstream.a]\nurl = 'http://h:1'\nweight = inf\n")

    with pytest.raises(ConfigError, match=r"\[upstream.a\]: weight must be a finite number"):
        load_file(path)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "[upstream]\n"])
def test_a_file_without_upstreams_stops_the_start(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not the default Ollama at 127.0.0.1:11434: an empty file is a mistake, said in one line.
    path = tmp_path / "up.toml"
    path.write_text(text)

    with pytest.raises(SystemExit) as exited:
        parse_settings(["--upstreams", str(path)], {})

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"--upstreams {path}: names no upstream" in err


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--upstreams .*cannot read it"):
        load_file(tmp_path / "nope.toml")


@pytest.mark.anyio
async def test_the_key_reaches_only_its_upstream_object(tmp_path: Path) -> None:
    settings = parse_settings(
        ["--upstream", "llama=http://h:1,kind=openai,key_env=LLAMA_KEY", "--data", str(tmp_path)],
        {"LLAMA_KEY": "sk-secret-123"},
    )
    routed = build(settings, {"LLAMA_KEY": "sk-secret-123"})
    member = routed.members[0]

    assert "sk-secret-123" not in repr(settings)
    assert "sk-secret-123" not in repr(member.spec)
    assert any(value == b"Bearer sk-secret-123" for _, value in member.upstream._server._headers)  # type: ignore[attr-defined]
    await routed.aclose()
