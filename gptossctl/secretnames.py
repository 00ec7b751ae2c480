"""Which variable names hold secrets: one rule for profiles (refused), compliance reports (values shown as
"(redacted)") and support bundles (values removed). Case-insensitive: `api_key` is as secret as `API_KEY`."""

from __future__ import annotations

import re

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.search(name) is not None
