from __future__ import annotations

from django.apps import AppConfig


class GociConfig(AppConfig):
    name = "goci"
    verbose_name = "Goci"

    def ready(self) -> None:
        from goci import checks  # noqa: F401, PLC0415  (registers the system checks)
