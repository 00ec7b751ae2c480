"""The compliance catalogue: every check's stable id, title, severity, remediation and the NIST SP 800-53
controls it supports. Every report lists every rule, in this order, so a missing check is itself visible."""

from __future__ import annotations

from dataclasses import dataclass

REPORT_SCHEMA = "gptossctl.compliance/1"


@dataclass(frozen=True)


class Rule:
    id: str
    title: str
    severity: str  # high | medium | low
    controls: tuple[str, ...]
    remediation: str


RULES: tuple[Rule, ...] = (
    Rule("release.current", "A current release is installed and its record is readable", "high", ("CM-2", "CM-8"),
         "install the approved bundle: gptossctl install BUNDLE --trust KEY.pub"),
    Rule("bundle.signatures", "The installed manifest is signed by enough trusted keys and is the one installed",
         "high", ("SI-7", "CM-14"),
         "install a bundle signed by the keys in /etc/gptoss/INSTANCE/trust (or pass the approved keys with "
         "--trust); if the release's manifest was replaced, reinstall with --repair"),
    Rule("bundle.expiry", "The bundle is within its approved validity period", "medium", ("CM-2", "SA-22"),
         "pack, sign and install a fresh bundle before it expires (bundles/*.yaml expires_in)"),
    Rule("drift.payload", "Every installed file matches the signed manifest (no change, loss or addition)",
         "high", ("SI-7", "CM-3"),
         "keep the changed files for investigation, then restore from the signed bundle: "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("drift.environment", "The Python environment is as install built it from the bundle's wheels", "high",
         ("SI-7", "CM-3"),
         "keep the changed files for investigation, then rebuild it from the signed bundle: "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("record.sealed", "The release record, environment listing, API key and rendered files are the ones "
         "sealed in the audit chain at install", "high", ("AU-9", "CM-3", "SI-7"),
         "keep the changed files as evidence, then reinstall from the signed bundle (gptossctl install BUNDLE "
         "--trust KEY.pub --repair); a release installed before seals existed is sealed by reinstalling it"),
    Rule("config.unit", "Every unit gptossctl installed is as rendered, loaded from its file, with no drop-ins",
         "high", ("CM-2", "CM-6"),
         "remove local edits, drop-ins and unit files that shadow gptossctl's (systemctl cat UNIT shows what "
         "systemd applies; put site settings in a profile and repack), then "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("config.release_files", "Every replica's vLLM config and environment file, and the router's configuration, "
         "are as rendered from the signed profile", "high",
         ("CM-2", "CM-6"),
         "change settings through a signed profile, not by hand; restore with "
         "gptossctl install BUNDLE --trust KEY.pub --repair"),
    Rule("config.exposure", "systemd-analyze security rates the unit at or below the exposure threshold",
         "medium", ("CM-6", "CM-7", "AC-6"),
         "restore the hardened unit (gptossctl install --repair); never loosen sandboxing with a drop-in"),
    Rule("config.offline", "vLLM runs offline: hub offline variables set, network fenced to loopback", "high",
         ("SC-7", "CM-7"),
         "restore the environment files and units (gptossctl install --repair); HF_HUB_OFFLINE=1, "
         "TRANSFORMERS_OFFLINE=1 and IPAddressDeny=any must stay"),
    Rule("config.usage_stats", "Usage statistics and telemetry are off", "medium", ("SC-7", "SI-4"),
         "restore the environment files (gptossctl install --repair): VLLM_NO_USAGE_STATS=1 and DO_NOT_TRACK=1"),
    Rule("config.bind", "vLLM binds only the approved loopback address", "high", ("SC-7", "AC-4"),
         "restore the vLLM configs and the router's configuration (gptossctl install --repair); publish beyond "
         "this host only through the router's TLS listener (install --listen; README, 'The network edge')"),
    Rule("access.api_key", "The API key is set and required (probed live when the service runs)", "high",
         ("AC-3", "IA-2"),
         "restore the environment files and router-key.map from /etc/gptoss/INSTANCE/api-key (gptossctl install "
         "--repair) and check "
         "nothing strips VLLM_API_KEY"),
    Rule("access.secrets", "Secret files are 0600 and owned by root; their directory is 0700", "high",
         ("AC-6", "SC-28"),
         "chmod 0600 (files) / 0700 (directory) and chown root:root; if a secret was readable by others, "
         "rotate the key: delete /etc/gptoss/INSTANCE/api-key and reinstall with --repair"),
    Rule("access.permissions", "Everything installed, and every directory above it, is root's alone",
         "medium", ("AC-6", "CM-5"),
         "chown root the paths listed, chmod go-w and u-s,g-s them, remove links and executables that "
         "gptossctl did not make; then run gptossctl install --repair"),
    Rule("license.model", "The model's LICENSE and USAGE_POLICY were shipped with it", "medium", ("CM-10",),
         "repack the bundle from the model repository's snapshot (bundle pack keeps LICENSE and USAGE_POLICY)"),
    Rule("provenance.sbom", "The SBOM is shipped and lists exactly the installed packages", "medium",
         ("CM-8", "SR-4"),
         "install from a bundle packed by gptossctl (it writes the SBOM from the wheels it ships); an "
         "environment given with --vllm-python is outside the bundle's SBOM"),
    Rule("audit.chain", "The audit log's hash chain is intact", "high", ("AU-9", "AU-2"),
         "keep the log as evidence, compare it with your log collector's copy, and investigate who edited it"),
    Rule("service.running", "The service runs the current release and answers /health", "medium",
         ("CP-10", "SI-6"),
         "gptossctl status; journalctl -u gptoss@INSTANCE-r0; reinstall or gptossctl rollback"),
    Rule("edge.tls", "The router's TLS files are the ones sealed in the audit chain (certificate, key, client "
         "and chain CA), and the certificate matches its key, chains to the site CA and is in date (warned 30 "
         "days before it ends)", "high", ("SC-8", "SC-12", "SC-17"),
         "renew the certificate from the site CA and install it: gptossctl tls rotate --instance INSTANCE "
         "--cert F --key F --ca F; a file that differs from its seal was changed outside gptossctl: investigate"),
)


RULE = {r.id: r for r in RULES}
