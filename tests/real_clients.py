"""Clients of the Ollama front that the tests run unchanged, each installed once into `.cache/`
in the checkout at a pinned version, never into the gateway's own environment:

- the Vercel AI SDK (`ai`) with its Ollama provider (`ollama-ai-provider-v2`), from the npm
  registry, run under the machine's Node.js;
- LiteLLM, from PyPI, into a virtual environment of its own. It is a test-only client with
  about 60 dependencies of its own (390 MB: tokenizers, tiktoken, aiohttp, pydantic, its own
  pins of openai and httpx), so in the `dev` extra it would weigh on every checkout's
  environment and could hold back the versions the gateway itself is tested with.

Without Node.js and npm, or when an install fails (no registry), a test that needs one
skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from tests.gateway_proc import ROOT

CACHE = ROOT / ".cache"
# npm packages, installed together into one folder: the SDK, the provider and the schema
# library they share (a peer dependency). The provider's 4.x needs `ai` 7 and Node.js 22; the
# machine has Node.js 20, which the 3.x line supports.
VERCEL_AI = ("ai@6.0.333", "ollama-ai-provider-v2@3.6.0", "zod@4.6.7")
LITELLM = "litellm==1.110.2"
# The Anthropic front's clients: the TypeScript SDK, and Claude Code (tests/test_claude_code.py).
ANTHROPIC_JS = "@anthropic-ai/sdk@1.17.0"
CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {reason}")
    pytest.skip(reason)


def vercel_ai() -> tuple[Path, Path]:
    """The entry points of `ai` and of `ollama-ai-provider-v2`, installed if need be."""
    folder = CACHE / "npm" / f"vercel-{VERCEL_AI[0].replace('@', '-')}"
    modules = folder / "node_modules"
    entries = (
        modules / "ai" / "dist" / "index.mjs",
        modules / "ollama-ai-provider-v2" / "dist" / "index.mjs",
    )
    if all(entry.is_file() for entry in entries):
        return entries
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable("Node.js and npm for the Vercel AI SDK")
    folder.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent"]
    done = subprocess.run(
        [*command, *VERCEL_AI],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        _unavailable(f"{' '.join(VERCEL_AI)} from the npm registry: {done.stderr[-1000:]}")
    assert all(entry.is_file() for entry in entries), f"npm installed no {entries}"
    return entries


def npm_package(spec: str, entry: str) -> Path:
    """`entry` (a path inside node_modules) of the npm package `spec` (`name@version`),
    installed into a cache folder of its own if it is not there yet."""
    folder = CACHE / "npm" / spec.lstrip("@").replace("/", "-").replace("@", "-")
    found = folder / "node_modules" / entry
    if found.is_file():
        return found
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable(f"Node.js and npm for {spec}")
    folder.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent"]
    done = subprocess.run(
        [*command, spec], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        _unavailable(f"{spec} from the npm registry: {done.stderr[-1000:]}")
    assert found.is_file(), f"npm installed no {found}"
    return found


def litellm_python() -> Path:
    """The interpreter of a virtual environment holding LiteLLM, made if need be."""
    folder = CACHE / "venv" / LITELLM.replace("==", "-")
    python = folder / "bin" / "python"
    ready = folder / ".installed"
    if ready.is_file():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", LITELLM],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        _unavailable(f"{LITELLM} from PyPI: {done.stderr[-1000:]}")
    ready.touch()
    return python


def loopback_only() -> list[str]:
    """The command prefix that runs a command in a network namespace of its own, which has
    nothing but loopback (the command brings `lo` up): `unshare -n`, which needs root."""
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"unshare -n (util-linux, as root): {exc}")
    if done.returncode != 0:
        _unavailable(f"unshare -n (util-linux, as root): {done.stderr.decode(errors='replace')}")
    return ["unshare", "-n"]


# OpenAI's Codex CLI: the npm package brings its native binary as an optional dependency
# (@openai/codex-linux-x64); `node bin/codex.js` runs it.
CODEX = "@openai/codex@0.169.0"


def codex() -> Path:
    """The entry point of Codex (`bin/codex.js`), installed if need be."""
    folder = CACHE / "npm" / CODEX.removeprefix("@openai/").replace("@", "-")
    entry = folder / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
    if entry.is_file():
        return entry
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable("Node.js and npm for Codex")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent", CODEX],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        _unavailable(f"{CODEX} from the npm registry: {done.stderr[-1000:]}")
    assert entry.is_file(), f"npm installed no {entry}"
    return entry


# The Vercel AI SDK with its OpenAI provider, whose default model (`createOpenAI(...)(model)`)
# asks OpenAI's Responses API; the provider's 3.x line goes with `ai` 6.
VERCEL_OPENAI = ("ai@6.0.333", "@ai-sdk/openai@3.0.141", "zod@4.6.7")


def vercel_openai() -> tuple[Path, Path]:
    """The entry points of `ai` and of `@ai-sdk/openai`, installed if need be."""
    folder = CACHE / "npm" / "vercel-openai"
    modules = folder / "node_modules"
    entries = (
        modules / "ai" / "dist" / "index.mjs",
        modules / "@ai-sdk" / "openai" / "dist" / "index.mjs",
    )
    if all(entry.is_file() for entry in entries):
        return entries
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable("Node.js and npm for the Vercel AI SDK")
    folder.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent"]
    done = subprocess.run(
        [*command, *VERCEL_OPENAI], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        _unavailable(f"{' '.join(VERCEL_OPENAI)} from the npm registry: {done.stderr[-1000:]}")
    assert all(entry.is_file() for entry in entries), f"npm installed no {entries}"
    return entries
