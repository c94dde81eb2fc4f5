"""HTTP routes, one module per resource; each module exports `routes`."""
