"""The call pipeline: neutral calls in, typed events and one usage record out.

`types`, `errors` and `upstream` are the vocabulary every layer shares (they import nothing
above them); `pipeline`, `record` and `shutdown` are the pipeline itself. Nothing is imported
here, so that using the vocabulary does not load the pipeline.
"""
