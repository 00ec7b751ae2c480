"""`gptossctl consumers ...`: a key per consuming team, with limits; `gptossctl tls rotate`; `gptossctl usage`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gptossctl.cli.options import ExistingRootOpt, InstanceOpt, JsonOpt
from gptossctl.cli.output import run, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="Keys per consuming team: add, list, revoke, rotate.")
tls_app = typer.Typer(no_args_is_help=True, help="The router's TLS certificate.")

NameArg = Annotated[str, typer.Argument(help="Consumer name: lowercase letters, digits, '-'.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write the key to this new file (0600) instead of "
                                             "showing it.")]
LimitOpt = Annotated[int | None, typer.Option(min=0, max=100_000)]


def _layout(root: Path, instance: str | None):  # type: ignore[no-untyped-def]
    from gptossctl.install.layout import Layout, pick_instance

    return Layout(root, pick_instance(root, instance))


@app.command("add")
def add(name: NameArg, out: OutOpt = None,
        rps: Annotated[int | None, typer.Option("--rps", min=1, max=100_000, help="Requests per second.")] = None,
        burst: Annotated[int | None, typer.Option("--burst", min=0, max=100_000, help="Requests above the rate.")] = None,
        concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, max=100_000,
                                                        help="Requests open at once.")] = None,
        instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Add a consumer and show its new key once (or write it to --out, 0600). Limits default to the profile's sizing."""
    from gptossctl.install.consumers import add_consumer, instance_limits, limits_for, router_reloader

    def action():  # type: ignore[no-untyped-def]
        layout = _layout(root, instance)
        lim = limits_for(layout, rps=rps, burst=burst, concurrency=concurrency, defaults=instance_limits(layout))
        return add_consumer(layout, name, limits=lim, reload=router_reloader(layout), command=sys.argv[1:], out=out)
    run(action, as_json=as_json, render=_show_change)


@app.command("rotate")
def rotate(name: NameArg, out: OutOpt = None,
           grace: Annotated[str, typer.Option("--grace", help="How long the old key stays valid (24h, 30m).")] = "24h",
           instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Give a consumer a new key; the old one stays valid for --grace, then 'consumers sync' drops it."""
    from gptossctl.durations import parse_duration
    from gptossctl.install.consumers import rotate_consumer, router_reloader

    def action():  # type: ignore[no-untyped-def]
        layout = _layout(root, instance)
        return rotate_consumer(layout, name, grace_s=parse_duration(grace), reload=router_reloader(layout),
                               command=sys.argv[1:], out=out)
    run(action, as_json=as_json, render=_show_change)


@app.command("revoke")
def revoke(name: NameArg,
           now: Annotated[bool, typer.Option("--now", help="Restart the router: cuts every open stream, "
                                             "all consumers', not only this one's.")] = False,
           instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Revoke a consumer's keys: new requests get 401 after a graceful reload; its open streams finish (--now cuts them)."""
    from gptossctl.install.consumers import revoke_consumer, router_reloader

    def action():  # type: ignore[no-untyped-def]
        layout = _layout(root, instance)
        return revoke_consumer(layout, name, reload=router_reloader(layout), command=sys.argv[1:], now_cut=now)
    run(action, as_json=as_json, render=_show_change)


@app.command("list")
def list_(instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """List consumers: names, limits, key fingerprints and times (never a key)."""
    from gptossctl.install.consumers import list_consumers

    run(lambda: list_consumers(_layout(root, instance)), as_json=as_json, render=_show_list)


@app.command("sync")
def sync(instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Drop keys whose rotation grace has ended, and reload the router if any was dropped."""
    from gptossctl.install.consumers import router_reloader, sync_consumers

    def action():  # type: ignore[no-untyped-def]
        layout = _layout(root, instance)
        return sync_consumers(layout, reload=router_reloader(layout), command=sys.argv[1:])
    run(action, as_json=as_json, render=_show_list)


def _show_change(r) -> None:  # type: ignore[no-untyped-def]
    from rich.markup import escape

    stderr.print(f"{r.action} {escape(r.consumer.name)}: {escape(r.reload)}")
    if r.key_file is not None:
        stderr.print(f"key written to {escape(str(r.key_file))} (0600)")
    if r.key is not None:
        stderr.print("the key is shown once, here; it is kept only in the router's root-only file:")
        stdout.print(r.key)


def _show_list(r) -> None:  # type: ignore[no-untyped-def]
    for c in r.consumers:
        d = c.to_dict()
        keys = " ".join(f"{k['fingerprint']}{'' if k['valid'] else '(invalid)'}" for k in d["keys"])
        state = "revoked " + d["revoked"] if d["revoked"] else "active"
        stdout.print(f"{c.name}\t{state}\trps={c.limits.rps} burst={c.limits.burst} "
                     f"concurrency={c.limits.concurrency}\tkeys {keys}")


@tls_app.command("rotate")
def tls_rotate(cert: Annotated[Path, typer.Option("--cert", help="PEM certificate, intermediates after it.")],
               key: Annotated[Path, typer.Option("--key", help="Its unencrypted PEM private key.")],
               ca: Annotated[Path, typer.Option("--ca", help="The site CA the chain must reach.")],
               textfile: Annotated[Path | None, typer.Option("--textfile", help="Write the expiry for "
                                                             "node_exporter here.")] = None,
               instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Check a certificate (key, chain, expiry), install it root-only, reload the router gracefully. Exit 1: a check failed."""
    from gptossctl.install.consumers import router_reloader
    from gptossctl.install.tls import rotate_certificate

    def action():  # type: ignore[no-untyped-def]
        layout = _layout(root, instance)
        return rotate_certificate(layout, cert=cert, key=key, ca=ca, reload=router_reloader(layout),
                                  command=sys.argv[1:], textfile=textfile)
    run(action, as_json=as_json, render=lambda r: stdout.print(f"{r.subject}: expires {r.not_after.isoformat()}; "
                                                              f"{r.reload}"))


@tls_app.command("check")
def tls_check(cert: Annotated[Path, typer.Option("--cert", help="PEM certificate, intermediates after it.")],
              key: Annotated[Path, typer.Option("--key", help="Its PEM private key.")],
              ca: Annotated[Path, typer.Option("--ca", help="The site CA the chain must reach.")],
              as_json: JsonOpt = False) -> None:
    """Check a certificate against its key, the site CA and the clock. Exit 1: it fails a check."""
    from gptossctl.fsutil import read_bytes
    from gptossctl.install.tls import check_certificate

    run(lambda: check_certificate(read_bytes(cert, what="certificate", code="tls.unreadable"),
                                  read_bytes(key, what="TLS key", code="tls.unreadable"),
                                  read_bytes(ca, what="CA file", code="tls.unreadable")),
        as_json=as_json, render=lambda r: stdout.print(f"{r.subject}: ok, expires {r.not_after.isoformat()}"))


def usage(since: Annotated[str | None, typer.Option("--since", help="Only requests this recent (7d, 12h).")] = None,
          by: Annotated[str, typer.Option("--by", help="consumer, day or route.")] = "consumer",
          fmt: Annotated[str, typer.Option("--format", help="json, csv or prom (a Prometheus textfile).")] = "json",
          log: Annotated[Path | None, typer.Option("--log", help="The router's access log (default: the "
                                                   "instance's).")] = None,
          instance: InstanceOpt = None, root: ExistingRootOpt = Path("/"), as_json: JsonOpt = False) -> None:
    """Summarise the router's access log: requests, errors, 429s, p50/p95 latency per consumer, day or route."""
    from gptossctl.install.consumers import read_usage

    def action():  # type: ignore[no-untyped-def]
        return read_usage(log if log is not None else None, root=root, instance=instance, since=since, by=by, fmt=fmt)

    def render(r) -> None:  # type: ignore[no-untyped-def]
        import json

        text = r.csv() if fmt == "csv" else r.prometheus() if fmt == "prom" else json.dumps(r.to_dict(), indent=2) + "\n"
        sys.stdout.write(text)
    run(action, as_json=as_json, render=render)
