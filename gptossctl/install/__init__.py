"""Install and operate gpt-oss under systemd on the air-gapped host.

Flow of an install (lifecycle): validate the request -> verify the bundle once (bundle.verify) -> plan:
downgrade check, preflight on the bundle's own signed profiles (preflight) -> unpack into a side-by-side
release, re-hashing every byte (unpack) -> build the offline environment from the bundle's wheels
(environment) -> render unit, vLLM config and 0600 environment file from the verified copy (render) and write
the typed release record (release) -> install the unit, restart, /health, smoke (activate) -> switch
`current` and commit trust and API key (trust) -> the daily compliance timer (timer). Every change and every
refusal is a line of the hash-chained audit log (audit). `operations` holds status, rollback and uninstall;
`layout` says where everything lives, under `--root` when staging.
"""
