"""--model-options: options pinned per model replace what callers ask; a bad entry stops the
start, naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from calls.options import OptionsError, Pinned, parse_entries
from calls.types import CallRequest, EmbedRequest, Generation, Message
from tests.asgi import in_process
from tests.gateway_proc import ROOT

pytestmark = pytest.mark.anyio


def test_entries_are_read_with_ollamas_types() -> None:
    pinned = parse_entries(
        [
            "llama3,num_ctx=8192,keep_alive=30m,temperature=0,use_mmap=false,stop=a|b",
            "qwen,keep_alive=-1",
        ]
    )

    assert pinned == {
        "llama3:latest": {
            "num_ctx": 8192,
            "keep_alive": "30m",
            "temperature": 0.0,
            "use_mmap": False,
            "stop": ["a", "b"],
        },
        "qwen:latest": {"keep_alive": -1},
    }


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("llama3,num_context=8192", "--model-options for 'llama3': num_context is no option"),
        (
            "llama3,num_ctx=big",
            "--model-options for 'llama3': num_ctx must be an integer, not 'big'",
        ),
        ("llama3,use_mmap=yes", "use_mmap must be true or false"),
        ("llama3", "must be MODEL,OPTION=VALUE"),
        ("llama3,num_ctx", "'num_ctx' must be OPTION=VALUE"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(entry: str, said: str) -> None:
    with pytest.raises(OptionsError) as caught:
        parse_entries([entry])

    assert said in str(caught.value)


def test_the_upstreams_file_pins_too_and_checks_types(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[upstream.a]\nurl = "http://127.0.0.1:11434"\n\n'
        '[model."llama3"]\nnum_ctx = 4096\nkeep_alive = "1h"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream.a]\nurl = "http://127.0.0.1:11434"\n\n[model.qwen]\nnum_ctx = "4k"\n')

    pinned = Pinned.of(["llama3,num_ctx=8192"], str(good))
    with pytest.raises(OptionsError) as caught:
        Pinned.of([], str(bad))

    assert pinned is not None
    # The flag wins over the file.
    assert pinned.options == {"llama3:latest": {"num_ctx": 8192}}
    assert pinned.keep_alive == {"llama3:latest": "1h"}
    assert "num_ctx must be an integer, not '4k'" in str(caught.value)


def test_pinned_options_replace_the_callers() -> None:
    pinned = Pinned({"llama3:latest": {"num_ctx": 8192, "keep_alive": "30m"}})
    asked = CallRequest(
        model="llama3",
        messages=[Message("user", "hi")],
        generation=Generation(options={"num_ctx": 2048, "seed": 1}, keep_alive=0),
    )
    other = CallRequest(model="qwen", messages=[Message("user", "hi")])
    embed = EmbedRequest(model="llama3", input=["x"])

    sent = pinned.apply(asked)

    assert sent.generation.options == {"num_ctx": 8192, "seed": 1}
    assert sent.generation.keep_alive == "30m"
    assert pinned.apply(other) is other
    assert pinned.apply(embed).options == {"num_ctx": 8192}


async def test_the_upstream_gets_the_pinned_options(tmp_path: Path) -> None:
    flags = ("--model-options", "llama3,num_ctx=8192,keep_alive=30m")
    async with in_process(tmp_path / "data", *flags) as local, local.client() as client:
        response = await client.post(
            "/api/chat",
            json={
                "model": "llama3",
                "stream": False,
                "options": {"num_ctx": 2048, "temperature": 0.5},
                "keep_alive": 0,
                "messages": [{"role": "user", "content": "[[echo=1]]"}],
            },
        )

    arrived = json.loads(response.json()["message"]["content"])
    assert arrived["options"] == {"num_ctx": 8192, "temperature": 0.5}
    assert arrived["keep_alive"] == "30m"


def test_a_bad_entry_stops_the_start() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--model-options", "llama3,num_ctx=lots"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )

    assert done.returncode == 2
    assert "--model-options for 'llama3': num_ctx must be an integer, not 'lots'" in done.stderr
