"""Static files: hashed names and compression (whitenoise) after collectstatic, and
plain names before it (tests, a first start) instead of a 500."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):  # type: ignore[misc]  # untyped
    manifest_strict = False

    def stored_name(self, name: str) -> str:
        try:
            return str(super().stored_name(name))
        except ValueError:  # not collected yet: whitenoise finds it in the app folders
            return name
