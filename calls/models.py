"""Model names as Ollama reads them: which spellings name the same model, and which run in
Ollama's cloud rather than on the server asked.

Ollama matches names case-insensitively and fills in what is left out: the registry
(`registry.ollama.ai`), the namespace (`library`) and the tag (`latest`). So `llama3`,
`Llama3:latest` and `library/llama3` are one model, and `llama3:8b`, `llama3:local` or
`llama3:cloud` are others. A name whose tag is `cloud` or ends in `-cloud` is a cloud model:
Ollama forwards it to ollama.com under the server's account (ollama/ollama
internal/modelref, parseSourceSuffix).
"""

from __future__ import annotations

_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"


def canonical(name: str) -> str:
    """The one spelling of every name Ollama reads as this model."""
    parts = name.strip().lower().split("/")
    if len(parts) == 3 and parts[0] == _DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == _DEFAULT_NAMESPACE:
        parts = parts[1:]
    if ":" not in parts[-1]:
        parts[-1] += ":latest"
    return "/".join(parts)


def is_cloud(name: str) -> bool:
    """True for a name Ollama would run on ollama.com: tag `cloud`, or a tag ending `-cloud`."""
    _, sep, tag = name.strip().rpartition(":")
    if not sep or "/" in tag:
        return False
    tag = tag.strip().lower()
    return tag == "cloud" or tag.endswith("-cloud")
