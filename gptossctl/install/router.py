"""The router in front of an instance's replicas: nginx from the operating system, one endpoint for all.

Why nginx (README, 'Several GPUs: replicas behind a router'): air-gapped sites mirror their OS, so it needs
no new supply chain; it allowlists locations (only /v1/* and /health pass), checks the API key itself (a
`map` on the Authorization header, the key loaded as a systemd credential), takes a failed replica out and
tries it again (`max_fails`/`fail_timeout`), retries a refused connection on another replica
(`proxy_next_upstream`), drains a replica by a graceful `reload`, and streams SSE unbuffered.

Rendering is pure (`render_router_config`, `render_router_unit`, `router_key_map`): compliance renders
again from the release record and compares. The rest puts the router in service (`install_router`), drains
and restores a replica (`set_down`, `wait_drained`) and proves the endpoint (`prove_router`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from gptossctl.adapters.nginx import nginx_test
from gptossctl.adapters.openai_http import Client, Endpoint, key_enforced
from gptossctl.adapters.proc_net import established
from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import CheckFailed, GptossctlError, UsageError
from gptossctl.fsutil import atomic_write, read_nofollow
from gptossctl.install.consumers import access_log
from gptossctl.install.edge import EDGE_DIR, PROXY_SETTINGS, EdgeSettings, EdgeText, render_edge
from gptossctl.install.layout import Layout
from gptossctl.install.release import ROUTER_CONFIG, ROUTER_UNIT_COPY, EdgeRecord, ReleaseRecord, ReplicaRecord
from gptossctl.install.units import check_directives, directive_problems, directives, own_template
from gptossctl.probe.canary.metrics import parse
from gptossctl.templates import fill_template

ROUTER_TEMPLATE = "gptoss-router@.service"
CREDENTIAL = "api-key.map"
FAIL_TIMEOUT_S = 10  # a replica that refused a connection is tried again after this long
UPSTREAM = "gptoss_replicas"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
EDGE_USER = "gptoss-router"  # the edge's nginx workers (sysusers.d); the master stays root
EDGE_LOG_DIR = "/var/log/gptoss/edge"  # consumers.edge_log_dir as the booted host sees it (not the audit log's)
# What the template's whole-line {{ edge }} adds (the edge's unit): checked like the vLLM template's own.
ROUTER_FILLED = frozenset({"PrivateMounts", "ReadWritePaths", "SystemCallFilter"})


def router_template() -> str:
    """The router's unit template: gptossctl's own, whatever the bundle ships (install/units.py)."""
    return own_template(ROUTER_TEMPLATE)


def credential_path(layout: Layout) -> Path:
    """Where systemd puts the key for the router's processes (LoadCredential=), readable by them only."""
    return Path("/run/credentials") / layout.router_unit_name / CREDENTIAL


def runtime_dir(layout: Layout) -> Path:
    return Path("/run/gptoss-router") / layout.instance  # RuntimeDirectory=gptoss-router/%i


def router_key_map(api_key: str) -> str:
    """The key as one entry of the router's `map`: the exact header a client must send. A case-sensitive
    regular expression, because nginx matches a map's plain strings without regard to case (seen: "bearer
    KEY" in other letter cases passed); the key's characters are literal in a regex."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]{32,200}", api_key):
        raise UsageError("API key must be 32+ URL-safe characters", code="service.weak_key")
    return f'"~^Bearer {api_key}$" 1;\n'


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{'127.0.0.1' if host == 'localhost' else host}:{port}"


def render_router_config(*, instance: str, host: str, port: int, replicas: Sequence[ReplicaRecord],
                         key_map: Path, runtime: Path, down: Collection[int] = (), edge: EdgeText | None = None,
                         temp: Path | None = None) -> str:
    """nginx.conf of the router. `down`: replicas taken out of rotation (drained) for a rolling upgrade.
    `edge`: the network edge's text (install/edge.py); None renders the loopback router alone, as before.
    `temp`: where the temporary directories are (default: in `runtime`; the edge's: `edge_temp_dir`)."""
    servers = "".join(f"        server 127.0.0.1:{r.port} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s"
                      f"{' down' if r.index in down else ''};  # replica {r.index}\n" for r in replicas)
    temps = "".join(f"    {kind}_temp_path {(temp or runtime) / kind};\n" for kind in TEMP_KINDS)
    return f"""# gptoss-router@{instance}: one endpoint for the vLLM replicas of {instance}; written by gptossctl.
# Only /v1/* (with the API key) and /health reach a replica; anything else is 404 here.
worker_processes 2;
pid {runtime / "nginx.pid"};
error_log stderr warn;
{edge.main if edge else ""}
events {{
    worker_connections 4096;
}}

http {{
    server_tokens off;
    access_log off;
{temps}    client_max_body_size 32m;
    client_body_buffer_size 1m;

    # The key is a credential systemd hands to this unit alone: it is never in this file.
    map $http_authorization $gptoss_authorized {{
        default 0;
        include {key_map};
    }}

    # No idle connections are kept to the replicas: the connections open to one are its requests in
    # flight, which is how a drained replica is known to be idle.
    upstream {UPSTREAM} {{
        zone {UPSTREAM} 64k;
        least_conn;
{servers}    }}

    server {{
        listen {_listen(host, port)};
        # One request per client connection: a graceful reload (drain, undrain) closes the idle keep-alive
        # connections, and a client that reuses one at that instant gets a reset (seen once in 531 canary
        # requests during a rolling upgrade). A new connection on loopback costs about 0.1 ms.
{PROXY_SETTINGS}
        location /v1/ {{
            if ($gptoss_authorized = 0) {{
                return 401 '{{"error": "Unauthorized"}}';
            }}
            proxy_pass http://{UPSTREAM};
        }}

        location = /health {{
            proxy_pass http://{UPSTREAM};
        }}

        location / {{
            return 404 '{{"error": "Not Found"}}';
        }}
    }}
{edge.http if edge else ""}}}
"""


def edge_temp_dir(layout: Layout) -> Path:
    """The edge's temporary directories (request bodies): /var/lib/gptoss-router/<instance>, root 0711, and in it
    one directory per kind owned by the workers' user. nginx chowns a temporary directory it finds owned by
    another user; these are laid down owned already (`prepare_edge_dirs`), so the master needs no CAP_CHOWN."""
    return layout.root / "var/lib/gptoss-router" / layout.instance


def edge_settings(layout: Layout, edge: EdgeRecord) -> EdgeSettings:
    """The record's listener with the files the router's master reads, as the booted host sees them."""
    return EdgeSettings(host=edge.host, port=edge.port, edge_dir=layout.live_path(layout.etc / EDGE_DIR),
                        access_log=layout.live_path(access_log(layout)), worker_user=EDGE_USER,
                        mutual_tls=edge.mutual_tls)


def router_config(layout: Layout, rec: ReleaseRecord, *, down: Collection[int] = ()) -> str:
    """The router's nginx.conf for a release record (its listener on the site's network included): what install
    writes, what a drain renders, what compliance renders again and compares."""
    edge = render_edge(edge_settings(layout, rec.edge), upstream=UPSTREAM) if rec.edge else None
    return render_router_config(instance=layout.instance, host=rec.host, port=rec.port, replicas=rec.replicas,
                                key_map=credential_path(layout), runtime=runtime_dir(layout), down=down, edge=edge,
                                temp=layout.live_path(edge_temp_dir(layout)) if rec.edge else None)


def _edge_unit_lines(edge: EdgeRecord) -> str:
    return ("# The network edge (install --listen): nginx's master runs as root to read the root-only TLS key and\n"
            "# consumers' keys again on every reload (systemd 252 refreshes no credential on reload), and its workers\n"
            f"# run as {EDGE_USER} (nginx `user`: setuid/setgid only, the chown family stays denied); peers of the\n"
            "# site's network may reach the listener (IPAddressAllow above).\n"
            "PrivateMounts=yes\n"
            f"ReadWritePaths={EDGE_LOG_DIR} /var/lib/gptoss-router/%i\n"
            "SystemCallFilter=@setuid")


def render_router_unit(template: str, *, nginx: Path, config: Path, key_source: Path,
                       edge: EdgeRecord | None = None) -> str:
    """The router's unit. Without an edge it is the loopback router, byte for byte as before the edge existed:
    a DynamicUser without capabilities that reaches loopback only."""
    values = {"nginx": str(nginx), "config": str(config), "key_map": str(key_source), "dynamic_user": "yes",
              "capabilities": "", "ip_allow": "localhost", "edge": ""}
    own = template
    if edge is None:
        template = template.replace("{{ edge }}\n", "")
    else:
        caps = "CAP_SETUID CAP_SETGID" + (" CAP_NET_BIND_SERVICE" if edge.port < 1024 else "")
        values |= {"dynamic_user": "no", "capabilities": caps, "edge": _edge_unit_lines(edge),
                   "ip_allow": "any" if "any" in edge.allow else " ".join(("localhost", *edge.allow))}
    unit = fill_template(template, values, lines=("edge",))
    check_directives(unit, own, ROUTER_TEMPLATE, filled=ROUTER_FILLED)
    bad = router_unit_problems(unit, own)
    if bad:
        raise CheckFailed(f"the rendered {ROUTER_TEMPLATE} breaks its invariant: {bad[0]}",
                          code="service.unit_directives", hint="report it; nothing was installed")
    return unit


def router_unit_problems(text: str, template: str) -> list[str]:
    """The router unit is one of its two shapes, whatever the inputs: the loopback router (DynamicUser, no
    capability, loopback only), or the edge's (root master with the edge's lines: setuid/setgid, and the
    bind capability for a port below 1024, nothing else). What the template's placeholders may say, pinned
    (compliance applies this to the installed unit too, beside units.directive_problems)."""
    bad = directive_problems(text, template, ROUTER_TEMPLATE, filled=ROUTER_FILLED)
    got = directives(text)
    values = {k: v for s, k, v in got if s == "Service" and k in ("DynamicUser", "CapabilityBoundingSet")}
    filled = [(k, v) for s, k, v in got if s == "Service" and k in ROUTER_FILLED and (s, k, v) not in
              set(directives(template))]
    edge = ("PrivateMounts", "yes") in filled
    caps = set(values.get("CapabilityBoundingSet", "").split())
    if values.get("DynamicUser") != ("no" if edge else "yes"):
        bad.append(f"{ROUTER_TEMPLATE}: DynamicUser={values.get('DynamicUser')}: the master runs as root only with "
                   "the edge's lines, and only then")
    if caps - ({"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE"} if edge else set()):
        bad.append(f"{ROUTER_TEMPLATE}: CapabilityBoundingSet={' '.join(sorted(caps))} is more than the "
                   + ("edge's master needs (CAP_SETUID CAP_SETGID, CAP_NET_BIND_SERVICE below port 1024)" if edge
                      else "loopback router's (none)"))
    allowed = {("PrivateMounts", "yes"), ("ReadWritePaths", f"{EDGE_LOG_DIR} /var/lib/gptoss-router/%i"),
               ("SystemCallFilter", "@setuid")}
    bad += [f"{ROUTER_TEMPLATE}: {k}={v} is not one of the edge's lines" for k, v in filled if (k, v) not in allowed]
    return bad


def render_router(layout: Layout, rec: ReleaseRecord) -> dict[str, str]:
    """The release's router files ({file name: text}), paths as the booted host sees them."""
    unit = render_router_unit(router_template(), nginx=Path(rec.router), config=layout.live_path(layout.router_config),
                              key_source=layout.live_path(layout.router_key), edge=rec.edge)
    return {ROUTER_CONFIG: router_config(layout, rec), ROUTER_UNIT_COPY: unit}


# ---------------------------------------------------------------- in service


def write_router_key(layout: Layout, api_key: str) -> None:
    """The router's credential, 0600 root in the instance's 0700 directory (systemd reads it as root)."""
    layout.etc.mkdir(parents=True, exist_ok=True)
    layout.etc.chmod(0o700)
    text = router_key_map(api_key)
    try:
        same = layout.router_key.read_text() == text
    except OSError:
        same = False
    if not same:
        atomic_write(layout.router_key, text, 0o600)
    layout.router_key.chmod(0o600)


def check_router_config(layout: Layout, nginx: Path, text: str) -> None:
    """`nginx -t` of a configuration before it is put in place, as root, reading the key where it is kept (the
    router's own ExecReload cannot: see its unit). A refused configuration never reaches the router."""
    ok, words = nginx_test(nginx, text.replace(str(credential_path(layout)), str(layout.router_key)),
                           runtime=str(runtime_dir(layout)))
    if not ok:
        raise CheckFailed(f"nginx refuses the router's configuration: {words}", code="install.router_config",
                          hint="the configuration gptossctl rendered and this nginx disagree: check the nginx "
                               "version from your OS mirror; the router keeps its previous configuration")


def install_router(layout: Layout, systemd: Systemd, release: Path, api_key: str, nginx: Path) -> bool:
    """The release's router unit and configuration become the instance's, enabled (checked by nginx first on a
    live host). True when the unit itself changed (a running router must then be restarted; a changed
    configuration only needs a reload)."""
    write_router_key(layout, api_key)
    config = read_nofollow(release / ROUTER_CONFIG).decode()
    if systemd.live:
        check_router_config(layout, nginx, config)
    atomic_write(layout.router_config, config, 0o644)
    unit = read_nofollow(release / ROUTER_UNIT_COPY).decode()
    try:
        changed = layout.router_unit_path.read_text() != unit
    except OSError:
        changed = True
    if changed:
        atomic_write(layout.router_unit_path, unit, 0o644)
        systemd.daemon_reload()
    systemd.enable(layout.router_unit_name)
    return changed


def reload_router(layout: Layout, systemd: Systemd) -> None:
    """Graceful: nginx validates the file first (ExecReload), new workers take new connections, old ones
    finish what they have in flight."""
    if systemd.live:
        systemd.systemctl("reload", layout.router_unit_name)


def set_down(layout: Layout, systemd: Systemd, rec: ReleaseRecord, down: Collection[int]) -> None:
    """Run the router with these replicas out of rotation (none: the release's approved configuration)."""
    text = router_config(layout, rec, down=down)
    if systemd.live:
        check_router_config(layout, Path(rec.router), text)
    atomic_write(layout.router_config, text, 0o644)
    reload_router(layout, systemd)


def in_flight(replica: ReplicaRecord) -> tuple[int, str]:
    """Requests a replica is serving: open connections to its port, or what its /metrics says is running or
    waiting, whichever is more. A replica that does not answer serves nothing."""
    conns = established(replica.port)
    client = Client(Endpoint(replica.endpoint, timeout=5.0))
    try:
        reply = client.request("GET", "/metrics", key=False)
    except GptossctlError:
        return conns, f"{conns} connection(s); /metrics unreachable"
    finally:
        client.close()
    scrape = parse(reply.body if isinstance(reply.body, str) else "")
    running = int((scrape.value("vllm:num_requests_running") or 0) + (scrape.value("vllm:num_requests_waiting") or 0))
    return max(conns, running), f"{conns} connection(s), {running} request(s) running or waiting"


def wait_drained(replica: ReplicaRecord, timeout: float, *, poll: float = 1.0) -> str:
    """Wait until a replica taken out of rotation has finished its requests: idle on two looks in a row (the
    router's old workers may still hand it one just after the reload). Past the timeout it is restarted anyway
    (as a grace period ends): the words say so."""
    t0 = time.monotonic()
    deadline, idle, last = t0 + timeout, 0, ""
    while time.monotonic() < deadline:
        n, last = in_flight(replica)
        idle = idle + 1 if n == 0 else 0
        if idle >= 2:
            return f"replica {replica.index} idle after {time.monotonic() - t0:.0f}s ({last})"
        time.sleep(poll)
    return f"replica {replica.index} still busy after {timeout:.0f}s ({last}): restarted anyway"


def prove_router(url: str, api_key: str, model: str) -> dict[str, Any]:
    """The endpoint as clients see it: /health 200; /v1 refused without the key and served with it (a chat
    completion through a replica); nothing else exposed (/metrics, /invocations, /version: 404)."""
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, evidence: str) -> None:
        checks.append({"id": name, "status": "pass" if ok else "fail", "evidence": evidence})

    client = Client(Endpoint(url, api_key, timeout=120.0))
    try:
        h = client.request("GET", "/health", key=False)
        check("health", h.status == 200, f"GET /health -> {h.status}")
        keyed = key_enforced(url, api_key)
        check("api_key_enforced", keyed == (401, 200), f"GET /v1/models without the key, with it -> {keyed}")
        chat = client.request("POST", "/v1/chat/completions", body={
            "model": model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 4, "temperature": 0})
        check("chat", chat.ok and isinstance(chat.body, dict) and bool(chat.body.get("choices")),
              f"POST /v1/chat/completions -> {chat.status}")
        for method, path in (("GET", "/metrics"), ("POST", "/invocations"), ("GET", "/version")):
            r = client.request(method, path, key=True, body={} if method == "POST" else None)
            check(f"not_exposed:{path}", r.status == 404, f"{method} {path} with the key -> {r.status}")
    finally:
        client.close()
    failed = [c for c in checks if c["status"] == "fail"]
    if failed:
        raise CheckFailed(f"the router at {url} failed: " + "; ".join(c["evidence"] for c in failed),
                          code="install.router_failed",
                          hint=f"journalctl -u gptoss-router@INSTANCE; nginx -t -c {ROUTER_CONFIG} shows a bad file")
    return {"url": url, "ok": True, "checks": checks}
