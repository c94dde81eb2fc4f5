"""Browser origins: which other sites' pages may call which part of the gateway.

A pattern is read as Ollama reads one in OLLAMA_ORIGINS (gin-contrib/cors with its
wildcards on): an exact origin (`https://app.example`), `*` for every origin, or an origin
with one `*` standing for any run of characters (`http://localhost:*`, `https://*.example`,
`chrome-extension://*`). Comparison ignores case, as the browser's own origins are lowercase.

Who may call what (`OriginPolicy`):

- a model API front (Ollama's, OpenAI's, any that declares it): Ollama's own defaults
  (`OLLAMA_DEFAULTS`) and `--cors-origins`. A front opts in by exporting
  `BROWSER_ORIGINS = OLLAMA_DEFAULTS` beside its `PREFIX`, and gets it for every path under
  that prefix (the longest prefix wins, as for its error shape); `BROWSER_PATHS` adds exact
  paths outside it.
- the admin API and the dashboard page: only `--admin-origins`, never the defaults nor
  `--cors-origins`: a wildcard meant for asking must never open the usage log.
- everything else (the seed's API, /health, the API documentation): `--cors-origins`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Ollama's defaults, from its envconfig.AllowedOrigins(): these hosts over http and https,
# with and without a port, and the schemes of desktop apps and editors' web views.
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
OLLAMA_DEFAULTS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in _LOCAL_HOSTS
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)


class OriginError(ValueError):
    """A pattern that cannot be an origin; the message says which and why."""


def parse_patterns(text: str, flag: str) -> tuple[str, ...]:
    """A comma-separated list of patterns, as OLLAMA_ORIGINS is written (spaces and quotes
    around each are dropped, as is a trailing `/`). OriginError names the first bad one."""
    patterns = []
    for raw in text.split(","):
        pattern = raw.strip().strip("\"'").strip().rstrip("/").lower()
        if not pattern:
            continue
        if pattern.count("*") > 1:
            raise OriginError(
                f"{flag}: {raw.strip()!r} has more than one `*`; as in OLLAMA_ORIGINS, a "
                "pattern has at most one (`http://localhost:*`, `https://*.example`)"
            )
        if pattern != "*" and "://" not in pattern:
            raise OriginError(
                f"{flag}: {raw.strip()!r} is not an origin: write it as the browser sends it, "
                "scheme and all (`https://app.example`, `http://localhost:3000`)"
            )
        patterns.append(pattern)
    return tuple(patterns)


class Origins:
    """A set of origin patterns; `origin in origins` matches one against them."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(dict.fromkeys(p.lower() for p in patterns))
        self._any = "*" in self.patterns
        self._exact = frozenset(p for p in self.patterns if "*" not in p)
        self._wild = tuple(
            (p[: p.index("*")], p[p.index("*") + 1 :])
            for p in self.patterns
            if "*" in p and p != "*"
        )

    def __contains__(self, origin: object) -> bool:
        if not isinstance(origin, str):
            return False
        origin = origin.lower()
        if self._any or origin in self._exact:
            return True
        return any(
            len(origin) >= len(head) + len(tail)
            and origin.startswith(head)
            and origin.endswith(tail)
            for head, tail in self._wild
        )

    def __or__(self, other: Origins) -> Origins:
        return Origins((*self.patterns, *other.patterns))

    def __bool__(self) -> bool:
        return bool(self.patterns)


class Rule:
    """Who may call one part of the gateway from another origin, and how to say no."""

    def __init__(self, origins: Origins, setting: str, *, credentials: bool) -> None:
        self.origins = origins
        # The setting that would let a refused origin in, for the refusal's message.
        self.setting = setting
        # Whether such a call may carry the browser's cookies (the admin session): only where
        # the operator listed the origin for the admin surface.
        self.credentials = credentials


class OriginPolicy:
    """The rule for each path: the admin surface's; else an exact path's; else the front's
    whose `PREFIX` is the longest match (as for rendering its errors); else the rest's."""

    def __init__(
        self,
        *,
        listed: Origins | None = None,
        admin: Origins | None = None,
        fronts: Mapping[str, Origins] | None = None,
        paths: Mapping[str, Origins] | None = None,
    ) -> None:
        """`fronts`: each front's prefix and the origins it accepts besides `listed` (none
        for a front that declares none: its prefix still hides a shorter one's); `paths`:
        the same for exact paths outside any prefix."""
        listed = listed or Origins()
        self.admin = Rule(admin or Origins(), "--admin-origins", credentials=True)
        self.other = Rule(listed, "--cors-origins", credentials=False)

        def rule(defaults: Origins) -> Rule:
            return Rule(listed | defaults, "--cors-origins", credentials=False)

        self._fronts = sorted(
            ((prefix, rule(defaults)) for prefix, defaults in (fronts or {}).items()),
            key=lambda front: -len(front[0]),
        )
        self._paths = {path: rule(defaults) for path, defaults in (paths or {}).items()}

    def rule_for(self, path: str, *, admin: bool) -> Rule:
        if admin:
            return self.admin
        found = self._paths.get(path)
        if found is not None:
            return found
        for prefix, rule in self._fronts:
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                return rule
        return self.other
