"""The web side: the fronts (a package each: `seed`, `ollama`, `openai`, `anthropic`) and the
resources (a module each); each exports `routes` and its `openapi` description."""
