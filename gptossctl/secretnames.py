"""Which variable names hold secrets: one rule for profiles (refused), compliance reports (values shown as
"(redacted)") and support bundles (values removed). Case-insensitive: `api_key` is as secret as `API_KEY`."""

from __future__ import annotations

import re

# PASS on its own (DB_PASS, PASS) but not inside a word (BYPASS, PASSTHROUGH, COMPASS).
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|BEARER|(?<![A-Z])PASS(?![A-Z])",
                         re.I)


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.search(name) is not None
