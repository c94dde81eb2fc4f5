"""Models as Ollama's /api/tags, /api/ps and /api/show describe them, from the upstream's
typed `ModelInfo`, whatever its kind.

Every field Ollama's own answer has is always there. What the upstream says goes as it said
it; what it does not say is derived here, as docs/fronts.md lists:

- `digest`: the upstream's; else 64 hex digits of SHA-256 over the name and what is known
  of the weights (size, quantization, parameter size), so two names of one model share it
  and a changed model gets a new one;
- `size`: the upstream's; else 0. `modified_at`: the upstream's; else Go's zero time, as
  Ollama writes a time it does not know;
- `details`: each field the upstream's, else "" (`families`: [family], or null);
- `capabilities`: the upstream's; else ["completion"];
- `model_info`: the upstream's; else the keys known (`general.architecture`,
  `general.parameter_count`, `<family>.context_length`); `modelfile`, `parameters` and
  `template`: the upstream's, else "";
- /api/ps: `size` is the memory the model holds (else its size), `size_vram` the part in GPU
  memory (else 0: not said), `expires_at` when it is unloaded (else never: the far future
  that Ollama itself writes for a model kept loaded), `context_length` the context it is
  loaded with (else the model's own, else 0).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from calls.types import LoadedModel, ModelInfo

from .schemas import ListedModel, ModelDetails, RunningModel, ShowReply

# Go's zero time.Time, as Ollama writes a time that was never set.
ZERO_TIME = "0001-01-01T00:00:00Z"
# Go's longest time.Duration: how far away Ollama puts the end of a model kept loaded.
FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)


def digest(model: ModelInfo) -> str:
    if model.digest:
        return model.digest.removeprefix("sha256:")
    known = "\0".join(
        str(part or "")
        for part in (model.name, model.size, model.quantization, model.parameter_size)
    )
    return hashlib.sha256(known.encode()).hexdigest()


def details(model: ModelInfo) -> ModelDetails:
    family = model.family or ""
    return ModelDetails(
        parent_model="",
        format=model.format or "",
        family=family,
        families=model.families or ([family] if family else None),
        parameter_size=model.parameter_size or "",
        quantization_level=model.quantization or "",
    )


def listed(model: ModelInfo) -> ListedModel:
    """A model as /api/tags lists it."""
    return ListedModel(
        name=model.name,
        model=model.name,
        modified_at=model.modified_at or ZERO_TIME,
        size=model.size or 0,
        digest=digest(model),
        details=details(model),
        remote_model=model.remote_model,
        remote_host=model.remote_host,
    )


def running(model: LoadedModel) -> RunningModel:
    """A model as /api/ps lists it."""
    never = (datetime.now(UTC) + FOREVER).isoformat().replace("+00:00", "Z")
    return RunningModel(
        name=model.name,
        model=model.name,
        size=model.memory or model.size or 0,
        digest=digest(model),
        details=details(model),
        expires_at=model.expires_at or never,
        size_vram=model.vram or 0,
        context_length=model.loaded_context or model.context_length or 0,
    )


def model_info(model: ModelInfo) -> dict[str, Any]:
    if model.metadata is not None:
        return model.metadata
    info: dict[str, Any] = {}
    if model.family:
        info["general.architecture"] = model.family
    if model.parameter_count:
        info["general.parameter_count"] = model.parameter_count
    if model.context_length:
        info[f"{model.family or 'model'}.context_length"] = model.context_length
    return info


def shown(model: ModelInfo) -> ShowReply:
    """A model as /api/show describes it."""
    return ShowReply(
        modelfile=model.modelfile or "",
        parameters=model.parameters or "",
        template=model.template or "",
        details=details(model),
        model_info=model_info(model),
        capabilities=model.capabilities or ["completion"],
        modified_at=model.modified_at or ZERO_TIME,
        license=model.license or None,
        remote_model=model.remote_model,
        remote_host=model.remote_host,
    )
