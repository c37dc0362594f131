"""`make bench` for secrets (issue #11): encrypting and decrypting 1,000 secrets with
builds/secrets.py (Fernet), under the derived key and under GOCI_SECRET_KEYS with two
keys; medians of 5 rounds. Runs on the embedded default in a temporary directory."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "goci.settings")
os.environ["GOCI_DATA_DIR"] = tempfile.mkdtemp(prefix="goci-bench-secrets-")
os.environ.pop("DATABASE_URL", None)


def main() -> None:
    import django

    django.setup()
    from django.test import override_settings

    from builds import secrets

    values = [f"secret-value-{n:04d}-" + "x" * 40 for n in range(1000)]
    for label, keys in (
        ("derived key", []),
        ("GOCI_SECRET_KEYS, 2 keys", [secrets.new_key(), secrets.new_key()]),
    ):
        with override_settings(GOCI_SECRET_KEYS=keys):
            secrets.encrypt("warm-up")
            encrypt, decrypt = [], []
            for _ in range(5):
                began = time.perf_counter()
                tokens = [secrets.encrypt(value) for value in values]
                encrypt.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                assert [secrets.decrypt(token) for token in tokens] == values
                decrypt.append((time.perf_counter() - began) * 1000)
        print(
            f"secrets, {label + ':':26s} encrypt 1,000 {statistics.median(encrypt):6.1f} ms, "
            f"decrypt 1,000 {statistics.median(decrypt):6.1f} ms   (reported)"
        )


if __name__ == "__main__":
    main()
