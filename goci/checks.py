"""System checks: misconfiguration is reported by `manage.py check`, not at first use."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

# Tagged, so that a worker can run Goci's checks without the URL checks, which would
# import the whole web side (views, the API, pydantic) into it.
TAG = "goci"


@register(TAG)
def check_data_dir(app_configs: Any, **kwargs: Any) -> list[Error]:
    path = settings.GOCI_DATA_DIR
    if path.exists() and not path.is_dir():
        return [
            Error(
                f"GOCI_DATA_DIR {path} exists and is not a directory.",
                hint="Point GOCI_DATA_DIR at a directory Goci may write to.",
                id="goci.E001",
            )
        ]
    return []
