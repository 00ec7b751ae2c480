"""The router's network edge: TLS on the site's address, a key per consumer, limits, a usage log.

Design (README, 'The network edge'): the router's nginx master runs as root and reads root-only files (the
TLS key, the consumers' keys: 0600 root in a 0700 root directory, as the distribution's nginx reads its
keys); its workers run as an unprivileged user (`user`). systemd 252 sets credentials up at start only, so a
key delivered as a credential could not change without a restart that drops every stream; a master that
rereads its own files on `nginx -s reload` changes keys, certificates and consumers gracefully: new workers
take new connections, the old ones finish the requests they have in flight.

Rendering is pure. `render_edge` gives the text the router's configuration gains (`EdgeText`, inserted by
install/router.py's `render_router_config(edge=...)`, from the release record's edge: `router_config`; the
unit's side is the router template's own edge shape, `render_router_unit(edge=...)`): the main-context `user`
line and, in the http context, the JSON access log, the consumer map and the TLS server. The consumers' own parts (keys, zones,
limits) live in two include files that `render_consumer_includes` renders from the registry
(install/consumers.py): a consumer change rewrites those and reloads, never the release's router.conf.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gptossctl.errors import UsageError

EDGE_DIR = "edge"  # /etc/gptoss/<instance>/edge: 0700 root, what the router master alone reads
CONSUMERS_HTTP = "consumers.conf"  # http context: the key map, one zone per consumer
CONSUMERS_SERVER = "limits.conf"  # server context: limit_req/limit_conn per consumer
TLS_CERT = "tls-cert.pem"
TLS_KEY = "tls-key.pem"
TLS_CA = "tls-ca.pem"  # the CA the served chain was checked against (not the client CA)
CLIENT_CA = "client-ca.pem"
OPERATOR = "_instance"  # the instance's own key (operators, smoke, canary): no consumer name starts with "_"
LOG_FORMAT = "gptoss_edge"
# Mozilla's "intermediate" list (TLS 1.2 AEAD suites with forward secrecy; TLS 1.3 suites are fixed by OpenSSL).
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
           "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")
CONSUMER_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
RETRY_AFTER_S = 1
KEY_RE = re.compile(r"[A-Za-z0-9_\-]{32,200}")
# How both listeners (the router's loopback one in install/router.py, the site's TLS one here) pass requests
# on: one request per client connection (a graceful reload closes idle keep-alive connections, and a client
# reusing one at that instant gets a reset), SSE streamed unbuffered, long generations allowed, and a refused connection or a
# replica that answers 502/503 (engine dead) retried on another one. Server-context lines, indented for it.
PROXY_SETTINGS = """        keepalive_timeout 0;
        default_type application/json;
        proxy_http_version 1.1;
        proxy_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
        # A refused connection or a replica that answers 502/503 (engine dead) is retried on another one.
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
"""


def check_consumer_name(name: str) -> str:
    if not CONSUMER_RE.fullmatch(name):
        raise UsageError(f"consumer name {name[:80]!r} is not valid", code="consumers.bad_name",
                         hint="use lowercase letters, digits and '-', starting with a letter, at most 32 characters")
    return name


def check_key(key: str) -> str:
    """A key as the map needs it (install/router.py's router_key_map: the characters are literal in a regex)."""
    if not KEY_RE.fullmatch(key):
        raise UsageError("a consumer key must be 32+ URL-safe characters", code="consumers.weak_key")
    return key


@dataclass(frozen=True)
class Limits:
    """Per consumer: requests per second with a burst (limit_req), and requests open at once (limit_conn)."""

    rps: int
    burst: int
    concurrency: int

    def __post_init__(self) -> None:
        for what, value, top in (("rps", self.rps, 100_000), ("burst", self.burst, 100_000),
                                 ("concurrency", self.concurrency, 100_000)):
            if not (what == "burst" and value == 0) and not 1 <= value <= top:
                raise UsageError(f"--{what} {value} is out of range (1-{top})", code="consumers.bad_limit",
                                 hint="give a positive number; --burst may be 0")

    def to_dict(self) -> dict[str, int]:
        return {"rps": self.rps, "burst": self.burst, "concurrency": self.concurrency}


def default_limits(*, sizing_concurrency: int | None, max_num_seqs: int | None, replicas: int = 1) -> Limits:
    """A consumer's limits when none are given: at most the sequences the instance schedules at once (what the
    profile sized it for, `sizing.concurrency`, else vLLM's `max-num-seqs` per replica), so that one consumer
    alone can fill the engine but never queue past it; one request per second per slot, with a burst of twice
    that for a client that opens its batch at once."""
    slots = sizing_concurrency or ((max_num_seqs or 16) * max(1, replicas))
    slots = max(1, slots)
    return Limits(rps=slots, burst=2 * slots, concurrency=slots)


@dataclass(frozen=True)
class ConsumerKey:
    """One valid key of a consumer, as the router's map needs it. The key is a secret: never in repr."""

    consumer: str
    fingerprint: str
    key: str = field(repr=False)


@dataclass(frozen=True)
class EdgeSettings:
    """Where the router listens on the site's network, and the files its master reads (as the booted host
    sees them)."""

    host: str
    port: int
    edge_dir: Path
    access_log: Path
    worker_user: str = "gptoss-router"
    worker_group: str | None = None  # None: the user's own group (sysusers makes one of the same name)
    mutual_tls: bool = False

    @property
    def cert(self) -> Path:
        return self.edge_dir / TLS_CERT

    @property
    def key(self) -> Path:
        return self.edge_dir / TLS_KEY

    @property
    def client_ca(self) -> Path:
        return self.edge_dir / CLIENT_CA


@dataclass(frozen=True)
class EdgeText:
    """What the router's nginx.conf gains: `main` after the main-context lines, `http` at the end of http{}."""

    main: str
    http: str


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(status: int, message: str, kind: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).replace("'", "\\'")


def render_edge(edge: EdgeSettings, *, upstream: str) -> EdgeText:
    """The TLS server and what it needs. Requests carry the consumer's name in the access log (never the key)
    and a request id, which vLLM gets as X-Request-Id and the client sees in the reply."""
    for who in (edge.worker_user, edge.worker_group or edge.worker_user):
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", who):
            raise UsageError(f"worker user/group {who!r} is not a name", code="edge.bad_user")
    mtls = (f"        ssl_client_certificate {edge.client_ca};\n        ssl_verify_client on;\n"
            f"        ssl_verify_depth 3;\n") if edge.mutual_tls else ""
    fields = {"time": "$time_iso8601", "consumer": "$gptoss_consumer", "method": "$request_method",
              "route": "$uri", "status": "$status", "bytes_sent": "$body_bytes_sent",
              "bytes_received": "$request_length", "request_time": "$request_time",
              "upstream": "$upstream_addr", "upstream_status": "$upstream_status", "request_id": "$request_id",
              "tls": "$ssl_protocol"}
    log_format = "{" + ",".join(f'"{k}":"{v}"' for k, v in fields.items()) + "}"
    unauthorized = _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
    limited = _error(429, "Rate limit reached for this consumer: retry after the Retry-After header's seconds",
                     "rate_limit_error", "rate_limit_exceeded")
    http = f"""
    # ---- the network edge (gptossctl install/edge.py): TLS, a key per consumer, limits, usage log
    log_format {LOG_FORMAT} escape=json '{log_format}';
    # The consumers' keys and zones: root-only, read by the master (never by a worker) on start and reload.
    include {edge.edge_dir / CONSUMERS_HTTP};
    map $gptoss_authorized $gptoss_consumer {{
        1 "{OPERATOR}";
        default $gptoss_consumer_key;
    }}

    server {{
        listen {_listen(edge.host, edge.port)} ssl;
        ssl_certificate {edge.cert};
        ssl_certificate_key {edge.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_session_tickets off;
{mtls}        access_log {edge.access_log} {LOG_FORMAT};
{PROXY_SETTINGS}        proxy_set_header X-Request-Id $request_id;
        proxy_set_header Authorization $gptoss_upstream_authorization;
        add_header X-Request-Id $request_id always;
        limit_req_status 429;
        limit_conn_status 429;
        error_page 429 @gptoss_limited;
        include {edge.edge_dir / CONSUMERS_SERVER};

        location /v1/ {{
            if ($gptoss_consumer = "") {{
                return 401 '{unauthorized}';
            }}
            proxy_pass http://{upstream};
        }}

        location = /health {{
            proxy_pass http://{upstream};
        }}

        location @gptoss_limited {{
            add_header Retry-After {RETRY_AFTER_S} always;
            add_header X-Request-Id $request_id always;
            return 429 '{limited}';
        }}

        location / {{
            return 404 '{{"error": {{"message": "Not Found", "type": "invalid_request_error", "code": "not_found"}}}}';
        }}
    }}
"""
    group = f" {edge.worker_group}" if edge.worker_group else ""
    return EdgeText(main=f"user {edge.worker_user}{group};\n", http=http)


def _zone(name: str) -> str:
    return "gptoss_c_" + name.replace("-", "_")


def render_consumer_includes(keys: Sequence[ConsumerKey], limits: dict[str, Limits], *,
                             upstream_key: str) -> tuple[str, str]:
    """(http include, server include) for the consumers: each valid key maps to its consumer's name, by a
    case-sensitive regex on the whole Authorization header (router_key_map's reasons); each consumer has its
    own zones, so one consumer's traffic never counts against another's limits. The replicas know only the
    instance's key (`upstream_key`): the router sends that one on, so a consumer's key never reaches vLLM."""
    lines = ["# gptossctl: the consumers' keys. Root-only; regenerated by 'gptossctl consumers'.\n",
             f'map $gptoss_consumer $gptoss_upstream_authorization {{\n    default "Bearer {check_key(upstream_key)}";\n}}\n',
             "map $http_authorization $gptoss_consumer_key {\n", '    default "";\n']
    for k in sorted(keys, key=lambda k: (k.consumer, k.fingerprint)):
        check_consumer_name(k.consumer)
        lines.append(f'    "~^Bearer {check_key(k.key)}$" {k.consumer};  # sha256:{k.fingerprint}\n')
    lines.append("}\n")
    server = ["# gptossctl: per-consumer limits (consumers.json); regenerated by 'gptossctl consumers'.\n"]
    for name in sorted(limits):
        lim, zone = limits[check_consumer_name(name)], _zone(name)
        lines.append(f"map $gptoss_consumer ${zone} {{\n    {name} {name};\n    default \"\";\n}}\n"
                     f"limit_req_zone ${zone} zone={zone}_req:1m rate={lim.rps}r/s;\n"
                     f"limit_conn_zone ${zone} zone={zone}_conn:1m;\n")
        burst = f" burst={lim.burst} nodelay" if lim.burst else ""
        server.append(f"limit_req zone={zone}_req{burst};\nlimit_conn {zone}_conn {lim.concurrency};\n")
    return "".join(lines), "".join(server)


def render_logrotate(log_dir: Path, *, instances: Sequence[str]) -> str:
    """/etc/logrotate.d/gptoss-edge: the edge's access logs rotated daily and kept 30 days (the distribution's
    logrotate, on Debian and RHEL alike). Each instance's router then reloads gracefully (`systemctl reload`,
    by unit name: never a pid read from a file its nginx can write, which root would then signal):
    nginx's USR1 reopen would chown the new file to the workers' user, which the edge's master may not do (no
    CAP_CHOWN, the chown calls filtered), so it would keep writing the rotated file; a reload opens the logs
    afresh as root and hands them to new workers, old ones finish what they have in flight."""
    for name in instances:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,47}", name):
            raise UsageError(f"instance name {name[:80]!r} is not valid", code="edge.bad_instance")
    reloads = "".join(f"        systemctl reload gptoss-router@{name}.service\n" for name in sorted(set(instances)))
    return f"""# gptossctl (install/edge.py): the network edge's JSON access logs.
{log_dir}/edge-*.access.jsonl {{
    daily
    rotate 30
    compress
    delaycompress
    missingok
    notifempty
    create 0640 root adm
    sharedscripts
    postrotate
{reloads}    endscript
}}
"""
