"""CycloneDX SBOM of a bundle: every wheel (name, version, SHA-256, licence), the model (repository,
revision, licence) and the kernels, plus a licence summary that flags anything not permissive.
Built with cyclonedx-python-lib; the test suite validates every SBOM it makes against the CycloneDX 1.6
JSON schema (validating at pack time would cost a second of imports on every pack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gptossctl import __version__
from gptossctl.pack.wheels import Wheel


@dataclass(frozen=True)
class SbomInput:
    bundle_name: str
    bundle_version: int
    created: datetime
    model_repo: str
    model_revision: str
    model_license: str
    wheels: Sequence[tuple[Wheel, str, str]]  # (wheel, sha256, component: "wheels" or "kernels")


def license_summary(wheels: Sequence[Wheel]) -> dict[str, Any]:
    flagged = sorted({(w.name, w.license or "UNKNOWN") for w in wheels if not w.permissive})
    return {"permissive": sum(1 for w in wheels if w.permissive),
            "flagged": [{"name": n, "license": lic} for n, lic in flagged]}


def build_sbom(data: SbomInput) -> bytes:
    try:
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # cyclonedx-python-lib < 11
        from cyclonedx.factory.license import LicenseFactory  # type: ignore[no-redef]
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    lf = LicenseFactory()
    bom = Bom()
    bom.metadata.timestamp = data.created
    bom.metadata.component = Component(name=data.bundle_name, version=str(data.bundle_version),
                                       type=ComponentType.APPLICATION, bom_ref=f"bundle:{data.bundle_name}")
    bom.metadata.properties.add(Property(name="gptossctl:version", value=__version__))
    model = Component(
        name=data.model_repo, version=data.model_revision, type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref=f"model:{data.model_repo}", licenses=[lf.make_from_string(data.model_license)],
        purl=PackageURL(type="huggingface", name=data.model_repo.lower(), version=data.model_revision),
    )
    bom.components.add(model)
    deps = [model]
    summary = license_summary([w for w, _sha, _c in data.wheels])
    for wheel, sha, component in data.wheels:
        c = Component(
            name=wheel.name, version=wheel.version, bom_ref=f"pypi:{wheel.name}@{wheel.version}",
            purl=PackageURL(type="pypi", name=wheel.name, version=wheel.version,
                            qualifiers={"file_name": wheel.path.name}),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)],
            licenses=[lf.make_from_string(wheel.license)] if wheel.license else None,
            properties=[Property(name="gptossctl:component", value=component),
                        Property(name="gptossctl:license_review", value="ok" if wheel.permissive else "flagged")],
        )
        bom.components.add(c)
        deps.append(c)
    bom.register_dependency(bom.metadata.component, deps)
    bom.metadata.properties.add(Property(name="gptossctl:licenses_flagged",
                                         value=", ".join(f"{f['name']} ({f['license']})" for f in summary["flagged"])
                                         or "none"))
    return (JsonV1Dot6(bom).output_as_string(indent=1) + "\n").encode()
