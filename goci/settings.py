"""Goci's settings, read from the environment (see docs/configuration in README).

Infrastructure names are unprefixed (SECRET_KEY, DEBUG, ALLOWED_HOSTS); Goci's
own knobs are GOCI_*. Code reads django.conf.settings, never os.environ.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
import django_stubs_ext

# Admin classes are generic for mypy (ModelAdmin[Build]); this makes them so at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    # A typo such as DEBUG=ture must not silently mean False.
    raise ValueError(f"{name} must be 'true' or 'false', not {value!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


def env_secret(name: str, default: str) -> str:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def env_public_url(name: str) -> str:
    """An http(s) origin (scheme, host, optional port) without a trailing slash, or ""."""
    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = parts._replace(netloc="")
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        # Django would otherwise answer every request 400 (host) or 403 (CSRF).
        raise ValueError(
            f"{name} must be the address people open, like https://ci.example.com or "
            f"http://ci.internal:8000 (http or https, a host, an optional port, no path), "
            f"not {value!r}"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def env_switch(name: str, default: bool) -> bool:
    """A switch an operator flips: 1/true/yes/on or 0/false/no/off; anything else is an
    error rather than a guess."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be on or off (1/true/yes/on or 0/false/no/off), not {value!r}")


def env_forge_url(name: str, default: str) -> str:
    """A forge's address (http or https, a host, maybe a path such as /gitlab) without
    its trailing slash, or `default`."""
    value = os.environ.get(name, "").strip() or default
    if not value:
        return ""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = parts._replace(netloc="")
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise ValueError(
            f"{name} must be the forge's address, like https://gitlab.example.com "
            f"(http or https, a host, an optional port and path), not {value!r}"
        )
    return value.rstrip("/")


def embedded_secret_key(data_dir: Path) -> str:
    """The embedded default keeps a generated key beside its SQLite database.

    A fixed fallback key would let anyone forge sessions; asking a first-time user to
    invent one is friction. So the first start writes a random key (mode 0600). Several
    processes may start at once on a new data directory (`goci up` and workers): each
    writes its key to a file of its own and links it into place, which only the first
    does; all then read that whole key, never a half-written or missing one.
    """
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=data_dir, prefix=".secret_key.")  # mode 0600
        mine = Path(name)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50))
            with contextlib.suppress(FileExistsError):  # another process's came first
                path.hardlink_to(mine)
        finally:
            mine.unlink()
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
GOCI_DATA_DIR = Path(os.environ.get("GOCI_DATA_DIR", BASE_DIR / "var")).resolve()
SECRET_KEY = env_secret("SECRET_KEY", "") or embedded_secret_key(GOCI_DATA_DIR)
# Keys of the secrets kept at rest (Fernet keys, comma-separated): the first encrypts,
# all decrypt, so a new key goes first and `goci secret rotate-key` moves every secret
# to it. Empty: builds/secrets.py derives one from SECRET_KEY and says so at start-up.
GOCI_SECRET_KEYS = [
    key.strip() for key in env_secret("GOCI_SECRET_KEYS", "").split(",") if key.strip()
]

# Production behind a TLS proxy (docs/deploy.md). GOCI_PUBLIC_URL is the address people
# open; goci.public.absolute_url() writes links with it.
GOCI_PUBLIC_URL = env_public_url("GOCI_PUBLIC_URL")
# Only a proxy that overwrites these headers may be trusted with them: a client reaching
# Goci directly could claim https or any address.
GOCI_BEHIND_PROXY = env_bool("GOCI_BEHIND_PROXY", False)
if GOCI_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The proxy may pass its own upstream Host (127.0.0.1:8000): CSRF then needs the
# public origin spelled out, as the browser's Origin header names it.
CSRF_TRUSTED_ORIGINS = [GOCI_PUBLIC_URL] if GOCI_PUBLIC_URL else []
SILENCED_SYSTEM_CHECKS: list[str] = []
if GOCI_PUBLIC_URL:
    _public_host = urlsplit(GOCI_PUBLIC_URL).hostname or ""
    _public_host = f"[{_public_host}]" if ":" in _public_host else _public_host
    if _public_host not in ALLOWED_HOSTS:
        ALLOWED_HOSTS.append(_public_host)
if GOCI_PUBLIC_URL.startswith("https://"):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("GOCI_HSTS_SECONDS", 365 * 24 * 3600)
    # HSTS from ci.example.com covers only its own subdomains, never example.com's others.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preloading is for registrable domains submitted to the browsers' list, which a
    # CI server's name (a subdomain) is not; the header alone would change nothing.
    SILENCED_SYSTEM_CHECKS.append("security.W021")
    if GOCI_BEHIND_PROXY:
        SECURE_SSL_REDIRECT = True
    else:
        # Without the proxy's X-Forwarded-Proto every request looks like http, so a
        # redirect to https would loop; the TLS proxy redirects http itself.
        SILENCED_SYSTEM_CHECKS.append("security.W008")

# Neither daphne nor ninja is an installed app: every process imports its installed
# apps, and workers need neither the web server (twisted, ~25 MB) nor the API's
# pydantic (~11 MB). The web process imports both where it uses them; ninja's Swagger
# files are found here, without importing it (builds.api.LocalSwagger).
NINJA_DIR = Path(str(getattr(find_spec("ninja"), "origin", ""))).parent
INSTALLED_APPS = [
    "goci.admin.GociAdminConfig",  # django.contrib.admin, for superusers only
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # naturaltime: "12 seconds ago" on the runners page
    "channels",
    "django_htmx",
    # Its default app config wraps the template loaders so "page.html#partial" resolves.
    "template_partials",
    "axes",  # sign-in throttling: failures counted in the database, shared by every process
    "goci",
    "builds",
    "runners",
    "goci.audit",
    # Sign in with GitHub, GitLab or Gitea (goci/oauth.py). Installed whatever is
    # configured, so that the migrations are the same on every server.
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.gitlab",
    "allauth.socialaccount.providers.gitea",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",  # request.htmx: one URL serves page or fragment
    "goci.audit.middleware.AuditOrigin",  # who acts, from where: for goci.audit.record
    "allauth.account.middleware.AccountMiddleware",  # the request allauth's flows need
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "goci.middleware.ContentSecurityPolicy",
    # Last, as axes requires: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "goci.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates", NINJA_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The forges' buttons and whether passwords are taken, on every page
                # that shows the sign-in form (the throttle's lockout page too).
                "goci.oauth.sign_in_options",
            ],
        },
    },
]

WSGI_APPLICATION = "goci.wsgi.application"
ASGI_APPLICATION = "goci.asgi.application"

# The embedded default is one SQLite file under GOCI_DATA_DIR; DATABASE_URL
# (postgres://user:pass@host:5432/name) switches to PostgreSQL, which the queue needs
# for several worker processes (row locks with SKIP LOCKED, LISTEN/NOTIFY).
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # conn_max_age 0: under ASGI each request may run on its own thread, and persistent
    # connections of finished threads would stay open until PostgreSQL's limit is hit.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_DATABASE_NAME", "test_goci")}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(GOCI_DATA_DIR / "goci.sqlite3"),
            "TEST": {"NAME": str(GOCI_DATA_DIR / "test_goci.sqlite3")},
            "OPTIONS": {
                # Writers wait for each other instead of failing with "database is locked".
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                # Write-ahead log: pages read while the worker writes, and a commit is
                # one append instead of a journal and its fsyncs (~10 ms here). With
                # synchronous=NORMAL a commit survives the process crashing, only a
                # power cut can take the last ones back; the file stays consistent.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# Live log lines go to the browser through a channel layer: in memory for the embedded
# default (web and worker in one process), Redis when they are separate processes.
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 500},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# How long a JWT from POST /api/auth/token works, in seconds (15 minutes): short, since
# only a revocation of the personal token it came from ends it sooner.
GOCI_JWT_TTL = env_int("GOCI_JWT_TTL", 900)

# The queue and the workers.
GOCI_LEASE_SECONDS = env_int("GOCI_LEASE_SECONDS", 30)
GOCI_JOB_MAX_ATTEMPTS = env_int("GOCI_JOB_MAX_ATTEMPTS", 2)
# A worker or runner whose last contact is older than this is offline (queue reasons,
# the runners page); workers touch their row every third of a lease.
# A remote runner is in contact at least every 30 s (a long poll), a worker every third
# of a lease.
GOCI_RUNNER_OFFLINE_SECONDS = env_int(
    "GOCI_RUNNER_OFFLINE_SECONDS", max(90, 3 * GOCI_LEASE_SECONDS)
)
GOCI_SHUTDOWN_GRACE = env_int("GOCI_SHUTDOWN_GRACE", 30)
GOCI_WORKSPACE_ROOT = Path(os.environ.get("GOCI_WORKSPACE_ROOT", GOCI_DATA_DIR / "workspaces"))
GOCI_LOG_CAP = env_int("GOCI_LOG_CAP", 100 * 1024 * 1024)
GOCI_MAX_PIPELINE_BYTES = 1024 * 1024
# Steps without `image:` on server workers (goci worker, goci up). "deny" (the default):
# they run in GOCI_DEFAULT_IMAGE if that is set, else the build ends in error before any
# step runs. "allow": they run on the worker's host, with an environment built from
# scratch - every user who can run builds then gets the server's own rights.
GOCI_HOST_STEPS = os.environ.get("GOCI_HOST_STEPS", "deny").strip().lower() or "deny"
if GOCI_HOST_STEPS not in ("deny", "allow"):
    raise ValueError(f"GOCI_HOST_STEPS must be 'deny' or 'allow', not {GOCI_HOST_STEPS!r}")
GOCI_DEFAULT_IMAGE = os.environ.get("GOCI_DEFAULT_IMAGE", "").strip()
# Hosts (names or IP addresses, comma-separated) that clone URLs may reach although
# they resolve to a loopback, private or link-local address, and the only hosts that
# may be cloned over plain http (builds/clone_urls.py, docs/checkout.md).
GOCI_CLONE_ALLOWED_HOSTS = env_list("GOCI_CLONE_ALLOWED_HOSTS", [])

# Notifications (builds/notifications.py, docs/notifications.md): the Telegram Bot API's
# address (a local Bot API server, or a proxy), and the SMTP server email goes through.
GOCI_TELEGRAM_API = env_forge_url("GOCI_TELEGRAM_API", "https://api.telegram.org")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost").strip() or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10  # seconds: a stuck SMTP server delays the notifications, nothing else
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "").strip() or "goci@localhost"

# /metrics (goci/health.py) answers bearers of GOCI_METRICS_TOKEN and clients whose
# address (goci.public.client_address: behind the proxy, the one it forwarded) is in
# GOCI_METRICS_ALLOW: IP addresses or CIDR networks, comma-separated. Neither set: it is
# closed, and everyone gets the 404 of an unknown URL.
GOCI_METRICS_TOKEN = env_secret("GOCI_METRICS_TOKEN", "").strip()
GOCI_METRICS_ALLOW = env_list("GOCI_METRICS_ALLOW", [])
for _network in GOCI_METRICS_ALLOW:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ValueError(
            f"GOCI_METRICS_ALLOW must list IP addresses or networks such as 10.0.0.0/8, "
            f"comma-separated; {_network!r} is neither"
        ) from None
# Probes and Prometheus reach the process directly over http: no redirect to https.
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)$"]

LOGIN_URL = "builds:login"  # /login/, routed in builds/urls.py with the dashboard
LOGIN_REDIRECT_URL = "builds:dashboard"
LOGOUT_REDIRECT_URL = "builds:login"

# Sign in with GitHub, GitLab or Gitea (django-allauth, with goci/oauth.py's adapter).
# A forge is on when both its GOCI_OAUTH_<FORGE>_CLIENT_ID and _SECRET are set; its
# callback is <public address>/accounts/<forge>/login/callback/ (docs/deploy.md).
# allauth's GitHub and Gitea adapters read their URL when first imported: fine, since
# these are read once at start-up.
GOCI_PASSWORD_SIGNIN = env_switch("GOCI_PASSWORD_SIGNIN", True)
# Off: a forge signs in only users Goci already has (linked, or by a verified address);
# on a public forge (github.com) anyone with an account could otherwise join.
GOCI_OAUTH_SIGNUP = env_switch("GOCI_OAUTH_SIGNUP", True)
_FORGE_URLS = {  # allauth's name for each forge's address, and its default
    "github": ("GITHUB_URL", ""),  # unset: github.com (its API is api.github.com)
    "gitlab": ("GITLAB_URL", "https://gitlab.com"),
    "gitea": ("GITEA_URL", "https://gitea.com"),
}
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, Any]] = {}
# The forges' origins, where the sign-in form is redirected: the Content-Security-Policy's
# form-action allows them (browsers check each redirect of a form's navigation).
GOCI_OAUTH_ORIGINS: list[str] = []
for _forge, (_url_name, _default_url) in _FORGE_URLS.items():
    _prefix = f"GOCI_OAUTH_{_forge.upper()}_"
    _client_id = os.environ.get(f"{_prefix}CLIENT_ID", "").strip()
    _client_secret = env_secret(f"{_prefix}SECRET", "").strip()
    _forge_url = env_forge_url(f"{_prefix}URL", _default_url)
    if bool(_client_id) != bool(_client_secret):
        _missing = f"{_prefix}SECRET" if _client_id else f"{_prefix}CLIENT_ID"
        raise ValueError(
            f"{_missing} is not set: signing in with {_forge} needs both "
            f"{_prefix}CLIENT_ID and {_prefix}SECRET (or neither, to turn it off)"
        )
    if _client_id:
        # Settings-based apps: nothing about the forges is kept in the database.
        SOCIALACCOUNT_PROVIDERS[_forge] = {
            "APPS": [{"client_id": _client_id, "secret": _client_secret, "key": ""}],
            **({_url_name: _forge_url} if _forge_url else {}),
        }
        _parts = urlsplit(_forge_url or "https://github.com")  # only GitHub's may be unset
        GOCI_OAUTH_ORIGINS.append(f"{_parts.scheme}://{_parts.netloc}")
GOCI_OAUTH_FORGES = list(SOCIALACCOUNT_PROVIDERS)
if not GOCI_PASSWORD_SIGNIN and not GOCI_OAUTH_FORGES:
    raise ValueError(
        "GOCI_PASSWORD_SIGNIN is off and no forge is set up (GOCI_OAUTH_GITHUB_CLIENT_ID "
        "and _SECRET, or GitLab's, or Gitea's): nobody could sign in"
    )
SOCIALACCOUNT_ADAPTER = "goci.oauth.ForgeAdapter"
SOCIALACCOUNT_LOGIN_ON_GET = False  # starting a sign-in is a POST with the CSRF token
SOCIALACCOUNT_AUTO_SIGNUP = True  # a first sign-in makes the user; there is no form
SOCIALACCOUNT_QUERY_EMAIL = True  # GitHub: the user:email scope, for the verified flags
# A verified address of the forge signs in the one user with that User.email; the
# adapter decides which (ForgeAdapter.authenticate_by_email), then the forge account is
# connected to that user for later sign-ins.
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_STORE_TOKENS = False  # Goci never calls a forge for the user afterwards
ACCOUNT_EMAIL_VERIFICATION = "none"  # Goci sends no email
# Admins may give two users one address; the adapter links only when exactly one has it.
# (A constant: allauth's migrations depend on it.)
ACCOUNT_UNIQUE_EMAIL = False
# The callback address is built from the request; behind the TLS proxy it is https.
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if GOCI_PUBLIC_URL.startswith("https://") else "http"

# Sign-in throttling (django-axes): after GOCI_LOGIN_FAILURE_LIMIT failures for one
# username (from anywhere), or from one client address (for any usernames), sign-in is
# refused for GOCI_LOGIN_COOLOFF_MINUTES, even with the right password.
AUTHENTICATION_BACKENDS = [
    "goci.middleware.SignInThrottle",  # first: refuses before a password is checked
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "goci.middleware.SignInFailures"
AXES_FAILURE_LIMIT = env_int("GOCI_LOGIN_FAILURE_LIMIT", 10)
_cooloff_minutes = env_int("GOCI_LOGIN_COOLOFF_MINUTES", 15)
# 0 would lock everyone out at once (limit) or for ever (axes reads no cooloff as permanent).
if AXES_FAILURE_LIMIT < 1 or _cooloff_minutes < 1:
    raise ValueError("GOCI_LOGIN_FAILURE_LIMIT and GOCI_LOGIN_COOLOFF_MINUTES must be 1 or more")
AXES_COOLOFF_TIME = timedelta(minutes=_cooloff_minutes)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own, not the pair
AXES_RESET_ON_SUCCESS = True  # forgets that username's failures only (SignInFailures)
# Tries while locked out do not push the retry time the page promised further away.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_CLIENT_IP_CALLABLE = "goci.public.client_address"
AXES_LOCKOUT_CALLABLE = "goci.middleware.signin_locked_out"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False  # no start-up banner from every process (CLI commands too)

# Argon2 for new passwords; the others still verify older hashes, which Django
# re-hashes with Argon2 at the next successful sign-in.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static", NINJA_DIR / "static"]
STATIC_ROOT = GOCI_DATA_DIR / "static"
# WhiteNoise warns about a missing STATIC_ROOT (before the first collectstatic) every
# time its middleware starts; the directory is Goci's own, so make it.
with contextlib.suppress(OSError):  # a read-only data dir: collectstatic will say so
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "goci.storage.StaticStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve from the app folders too, so collectstatic is optional

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
