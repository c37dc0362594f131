from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "goci.audit"
    label = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from goci.audit import signals  # noqa: PLC0415  (models are ready only now)

        signals.connect()
