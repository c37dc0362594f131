"""Sign in with GitHub (issue #11): the time of one whole sign-in round trip against a
local fake GitHub (tests/oauth_provider.py), on `goci up` (the embedded default).

One round trip: the POST of "Sign in with GitHub" -> Goci's redirect -> the forge's
authorize (approves at once) -> Goci's callback, which exchanges the code and reads
/user and /user/emails from the forge -> the signed-in dashboard. Each sign-in is a new
browser session; the first makes the user, the others sign it in again. The forge
answers in well under a millisecond, so the figure is Goci's (and allauth's) own cost
plus the local HTTP hops. The first (creating) sign-in is reported apart, then p50/p95
over the repeated ones.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GOCI_HOST_STEPS", "deny")

import requests  # noqa: E402

from tests.oauth_provider import Account, Email, fake_forge  # noqa: E402
from tests.test_oauth import goci_with, signed_in_as  # noqa: E402

SIGN_INS = 50


def round_trip(url: str) -> float:
    """Seconds from the POST that starts the sign-in to the signed-in dashboard."""
    session = requests.Session()
    page = session.get(f"{url}/login/", timeout=30)
    token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    started = time.perf_counter()
    landed = session.post(
        f"{url}/accounts/github/login/", data={"csrfmiddlewaretoken": token}, timeout=30
    )
    took = time.perf_counter() - started
    assert landed.url == f"{url}/", landed.url
    assert signed_in_as(landed) == "bench-octo", landed.text[:500]
    return took


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="goci-bench-oauth-") as tmp,
        fake_forge("github") as github,
        goci_with(Path(tmp) / "data", **github.env()) as server,
    ):
        github.account = Account(id=1, login="bench-octo", emails=[Email("b@example.com")])
        first = round_trip(server.url)
        times = sorted(round_trip(server.url) for _ in range(SIGN_INS))
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    print(f"sign in with GitHub (local forge), the first (makes the user): {first * 1000:.0f} ms")
    print(
        f"sign in with GitHub (local forge), {SIGN_INS} sign-ins: "
        f"p50 {statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {times[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
