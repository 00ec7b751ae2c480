"""`gptossctl install | status | rollback | uninstall`: the service on this host (or a staged tree)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from gptossctl.cli.hw import AmdOpt, CsvOpt, RocmOpt, TpOpt, XmlOpt
from gptossctl.cli.options import (
    ExistingRootOpt,
    InstanceOpt,
    JsonOpt,
    OptionalThresholdOpt,
    PortOpt,
    RevokedOpt,
    RootOpt,
    TrustOpt,
    TrustRootOpt,
    YesOpt,
    install_policy,
)
from gptossctl.cli.output import ident, progress_bar, run, stderr, stdout
from gptossctl.errors import UsageError
from gptossctl.install.layout import pick_instance

TimeoutOpt = typer.Option("30m", "--health-timeout", help="How long vLLM may take to answer /health, e.g. 20m.")
_STYLE = {"ok": "green", "failed": "red", "skipped": "dim"}


def _render_steps(steps: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table("step", "result", "seconds", "detail", box=None)
    for s in steps:
        st = _STYLE.get(s["status"], "white")
        t.add_row(s["step"], f"[{st}]{s['status']}[/{st}]", f"{s['seconds']:.1f}", escape(s["detail"]))
    stdout.print(t)


def _confirm(yes: bool, as_json: bool, what: str) -> None:
    if yes:
        return
    if as_json or not sys.stdin.isatty():
        raise UsageError(f"{what} changes this host's running service", code="install.confirm",
                         hint="pass --yes to confirm (needed when not at a terminal or with --json)")
    if not typer.confirm(f"{what}?", default=False):
        raise UsageError("not confirmed", code="install.not_confirmed")


def install(
    bundle: Path = typer.Argument(..., help="Bundle directory, a directory of its parts, or a delta."),
    base: Path | None = typer.Option(None, "--base", help="For a delta: the bundle it was made against "
                                     "(default: the installed release it names)."),
    trust: TrustOpt = [],  # noqa: B006 - typer copies list defaults
    threshold: OptionalThresholdOpt = None,
    revoked: RevokedOpt = [],  # noqa: B006
    trust_root: TrustRootOpt = None,
    profile: str = typer.Option("auto", "--profile", help="auto (the best that fits) or a profile in the bundle."),
    instance: InstanceOpt = None,
    root: RootOpt = Path("/"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address vLLM binds (loopback only; see README)."),
    port: PortOpt = 8000,
    no_start: bool = typer.Option(False, "--no-start", help="Install and enable, do not start."),
    no_smoke: bool = typer.Option(False, "--no-smoke", help="Skip the smoke test after /health (not advised)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run every check install runs (verify, trust, router, "
                                 "hardware, wheels, interpreter, ports, disk), report every failure with install's "
                                 "code, print the plan; change nothing. Parts and deltas are rebuilt in $TMPDIR."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Install an older bundle on purpose."),
    repair: bool = typer.Option(False, "--repair", help="Unpack the release again from the bundle even if it is "
                                "installed (what 'compliance check' advises on drift), and restart."),
    health_timeout: str = TimeoutOpt,
    python: Path = typer.Option(Path("/usr/bin/python3"), "--python", help="Interpreter the release's venv is built on."),
    vllm_python: Path | None = typer.Option(None, "--vllm-python", help="Use this environment's Python instead of "
                                            "building one (bundles without wheels)."),
    xml: Path | None = XmlOpt, csv: Path | None = CsvOpt, rocm: Path | None = RocmOpt, amd: Path | None = AmdOpt,
    replicas: int | None = typer.Option(None, "--replicas", help="Replicas to run behind the router (default: as "
                                        "many as fit; on an upgrade, as many as the installed release runs)."),
    tp: int | None = TpOpt,
    drain_timeout: str = typer.Option("10m", "--drain-timeout", help="Rolling upgrade: how long a replica taken "
                                      "out of rotation may finish its requests before it is restarted anyway."),
    listen: str | None = typer.Option(None, "--listen", help="Open the router on the site's network with TLS: "
                                      "ADDR:PORT (e.g. 10.0.0.5:443, 0.0.0.0:8443); an upgrade keeps the installed "
                                      "listener; 'none' closes it (loopback only)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="With --listen: the certificate (PEM, leaf "
                                         "then intermediates)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="With --listen: its unencrypted PEM private key "
                                        "(copied root-only)."),
    client_ca: Path | None = typer.Option(None, "--client-ca", help="With --listen: require client certificates "
                                          "from this CA (mutual TLS); the server chain is checked against it."),
    allow_from: list[str] = typer.Option([], "--allow-from", help="With --listen: a network whose peers may reach "
                                         "the router (CIDR; repeat; default any)."),
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify, preflight, unpack a side-by-side release, build its environment offline, render the hardened
    unit, start, wait for /health, smoke test, then switch `current`; roll back by itself on failure.
    Several replicas (every GPU that holds one, or --replicas/--tp) serve behind a router on --port, each on
    its own port and GPUs; an upgrade of a running instance then goes replica by replica.

    The first install sets the instance's trust root (from --trust/--threshold, or a signed --trust-root);
    later ones verify against it ('gptossctl trust rotate' changes it).

    Exit 0 installed (or already current), 1 refused or failed (previous release kept serving),
    2 usage, 3 this host cannot run it (no systemd, no GPU probe).
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.adapters.gpus import Captures
        from gptossctl.durations import parse_duration
        from gptossctl.install.lifecycle import InstallRequest
        from gptossctl.install.lifecycle import install as do_install
        from gptossctl.install.listen import listen_request

        policy = install_policy(trust, threshold, revoked)
        staged = root.resolve() != Path("/")
        if not staged and not dry_run:
            _confirm(yes, as_json, f"install {bundle}")
        req = InstallRequest(bundle=bundle, policy=policy, instance=instance, profile=profile, root=root, host=host,
                             port=port, start=not no_start, dry_run=dry_run, allow_downgrade=allow_downgrade,
                             health_timeout=float(parse_duration(health_timeout)), captures=Captures(xml, csv, rocm, amd),
                             python=python, vllm_python=vllm_python, smoke=not no_smoke, repair=repair, base=base,
                             replicas=replicas, tensor_parallel=tp,
                             drain_timeout=float(parse_duration(drain_timeout)), trust_root=trust_root,
                             listen=listen_request(listen, cert=tls_cert, key=tls_key, client_ca=client_ca,
                                                   allow=tuple(allow_from)))
        with progress_bar("verifying") as (total, advance):
            return do_install(req, on_step=lambda _s, msg: stderr.print(f"[dim]-[/dim] {escape(msg)}"),
                              progress=advance, on_total=total)

    def render(r) -> None:  # type: ignore[no-untyped-def]
        _render_steps([s.to_dict() for s in r.steps])
        if r.dry_run:
            stdout.print(f"dry run: release {r.version} of {r.instance} with profile {r.profile}; nothing changed")
            stdout.print(f"would open: {escape(r.to_dict()['open'])}")
        elif not r.changed:
            stdout.print(f"[green]unchanged[/green]: release {r.version} is current and healthy at {r.endpoint}")
        elif r.started:
            stdout.print(f"[green]installed[/green] {r.unit}: release {r.version} ({r.profile}) serving at {r.endpoint}"
                         + f" through the router, {len(r.replicas)} replica(s) behind it"
                         + (f"; on the site's network at https://{r.edge.address}" if r.edge else ""))
        else:
            stdout.print(f"[green]installed[/green] {r.unit}: release {r.version} ({r.profile}), enabled, not started")

    run(action, as_json=as_json, render=render)


def status(instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Unit state, health, version, profile and endpoint of each instance.

    Exit 0 when every instance is active, healthy and its unit runs the current release; 1 otherwise.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.operations import status_report

        return status_report(root, instance)

    def render(report) -> None:  # type: ignore[no-untyped-def]
        from rich.table import Table

        rows = report.rows
        t = Table("instance", "state", "health", "version", "profile", "endpoint", "releases", box=None)
        for r in rows:
            t.add_row(r["instance"], r["state"], str(r["health"] or "-"), str(r["version"] or "-"),
                      r["profile"] or "-", r["endpoint"] or "-", ",".join(map(str, r["installed"])))
            for x in r.get("replicas", []):
                t.add_row(f"  r{x['index']}", x["state"], str(x["health"] or "-"), str(x["release"] or "-"), "",
                          f"127.0.0.1:{x['port']}", "GPU " + ",".join(map(str, x["gpus"])) if x["gpus"] else "")
            if not r["consistent"]:
                stderr.print(f"[yellow]{r['unit']} runs release {r['unit_release']} but current is {r['version']}: "
                             "an install was interrupted; run it again, or 'gptossctl rollback'[/yellow]")
            if str(r.get("shape") or "").startswith("legacy"):
                stderr.print(f"[yellow]{r['instance']} serves one vLLM on its port without the router (installed "
                             "before the router was always in front): install its bundle again to move it behind "
                             "the router (a short outage on a one-GPU host)[/yellow]")
        stdout.print(t if rows else "no instance installed")

    run(action, as_json=as_json, render=render, exit_code=lambda r: 0 if r.ok else 1)


def rollback(instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"),
             to: int | None = typer.Option(None, "--to", min=1, max=10**15,
                                           help="Release version (default: the one before current)."),
             allow_expired: bool = typer.Option(False, "--allow-expired", help="Roll back to a release whose "
                                                "bundle has expired (audited, warned)."),
             health_timeout: str = TimeoutOpt, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Put an earlier release (still on disk) back in service, proven healthy before `current` moves.

    Exit 1 when the release was changed on disk, is not signed by the current trust root's release
    threshold (rollback.untrusted), or has expired without --allow-expired (rollback.expired)."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.durations import parse_duration
        from gptossctl.install.operations import rollback as do_rollback

        if root.resolve() == Path("/"):
            _confirm(yes, as_json, "roll back")
        return do_rollback(root, pick_instance(root, instance), to=to, allow_expired=allow_expired,
                           health_timeout=float(parse_duration(health_timeout)))

    def render(r) -> None:  # type: ignore[no-untyped-def]
        _render_steps([s.to_dict() for s in r.steps])
        if allow_expired:
            stderr.print("[yellow]--allow-expired: a release whose bundle has expired may serve again[/yellow]")
        stdout.print(f"[green]rolled back[/green] {r.unit} from {r.previous} to release {r.version}")

    run(action, as_json=as_json, render=render)


def uninstall(instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"),
              purge: bool = typer.Option(False, "--purge", help="Also remove the API key, state, caches and, with "
                                         "the last instance, the service user."),
              yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Stop, disable and remove an instance and its releases. Without --purge the API key (/etc/gptoss),
    state and cache directories are kept."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.operations import uninstall as do_uninstall

        if root.resolve() == Path("/"):
            _confirm(yes, as_json, "uninstall")
        return do_uninstall(root, pick_instance(root, instance), purge=purge)

    def render(r) -> None:  # type: ignore[no-untyped-def]
        for p in r.removed:
            stdout.print(f"removed {p}")
        for p in r.kept:
            stdout.print(f"kept    {p} (--purge removes it)")

    run(action, as_json=as_json, render=render)


audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log of every change gptossctl made.")


@audit_app.command("verify")
def audit_verify(root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Check the audit log's hash chain. Exit 1 naming the first edited, deleted or cut entry."""

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.audit import verify_root

        return verify_root(root)

    def render(r) -> None:  # type: ignore[no-untyped-def]
        stdout.print(f"[green]intact[/green]: {r.entries} entries in {escape(str(r.path))}"
                     + (f", head {ident(r.head)}" if r.head else ""))
        if r.pending_reset:
            stderr.print(f"[yellow]the chain was reset at entry {r.pending_reset['seq']} and not yet acknowledged: "
                         "gptossctl audit acknowledge --yes[/yellow]")

    run(action, as_json=as_json, render=render)


def _confirm_audit(yes: bool, what: str) -> None:
    if not yes:
        raise UsageError(f"{what} writes to the audit chain and is itself recorded", code="audit.confirm",
                         hint="pass --yes to confirm")


@audit_app.command("reset")
def audit_reset(reason: str | None = typer.Option(None, "--reason", help="Why the chain broke and who investigated "
                                                   "(recorded in the new chain's first entry)."),
                root: ExistingRootOpt = Path("/"), yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Move a broken audit log aside (kept as evidence) and start a new chain whose first entry records the
    break; compliance flags it until 'gptossctl audit acknowledge'.

    Exit 0 reset, 1 the log cannot be read, 2 without --yes or --reason, or when the chain is intact.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.audit import reset

        _confirm_audit(yes, "audit reset")
        return reset(root, reason=reason)

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"[yellow]reset[/yellow]: a new chain starts at entry {r.entry['seq']}; the broken files are kept as "
        + escape(", ".join(r.kept) or "nothing") + "; acknowledge once reviewed: gptossctl audit acknowledge --yes"))


@audit_app.command("acknowledge")
def audit_acknowledge(root: ExistingRootOpt = Path("/"), yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Record that the newest reset of the audit chain was reviewed (compliance stops flagging it).

    Exit 0 acknowledged, 1 the chain is broken, 2 without --yes or when no reset waits.
    """

    def action():  # type: ignore[no-untyped-def]
        from gptossctl.install.audit import acknowledge

        _confirm_audit(yes, "audit acknowledge")
        return acknowledge(root)

    run(action, as_json=as_json, render=lambda r: stdout.print(
        f"[green]acknowledged[/green] the reset at entry {r.entry['acknowledge']['reset_seq']} (entry {r.entry['seq']})"))
