"""The call pipeline: neutral calls in, typed events and one usage record out.

`types`, `errors`, `upstream`, `events`, `models`, `collect` and `exchange` are the vocabulary
every layer shares (they import nothing above them; `exchange` is the HTTP side every
upstream kind uses); `pipeline` (the Gateway and its one call), `record` and `shutdown` are the
pipeline itself. Nothing is imported here, so that using the vocabulary does not load the
pipeline.
"""
