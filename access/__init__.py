"""Who may ask: identity, the admin token, API keys and tickets, limits, and the gate every
request passes first."""
