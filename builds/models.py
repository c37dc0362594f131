"""What a build is: Project, Build, Job, Step, LogChunk (docs/architecture.md).

Single-row state transitions live here; workflows that span rows live in
builds/services.py and runners/queue.py, the only places that change build state.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from django.db.models import Q


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"  # a command exited non-zero or timed out
    ERROR = "error"  # Goci or the infrastructure could not run it
    CANCELED = "canceled"
    SKIPPED = "skipped"


FINISHED = (Status.SUCCESS, Status.FAILURE, Status.ERROR, Status.CANCELED, Status.SKIPPED)


class Role(models.TextChoices):
    VIEWER = "viewer"
    DEVELOPER = "developer"
    MAINTAINER = "maintainer"
    OWNER = "owner"


class Project(models.Model):
    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    repo_url = models.CharField(max_length=500, blank=True)
    default_branch = models.CharField(max_length=200, default="main")
    pipeline_path = models.CharField(max_length=200, default=".goci.yml")
    # The pipeline a manual run or a schedule runs when the project has no repository.
    pipeline = models.TextField(blank=True)
    # The secret that signs webhook deliveries, encrypted like a Secret (builds/secrets.py)
    # since maintainers are shown it; "" accepts no delivery.
    webhook_secret = models.TextField(blank=True)
    # A new push to a branch or PR cancels the builds of its older commits.
    auto_cancel = models.BooleanField(default=True)
    # Public: its status badge needs no token. (Its builds are still for members.)
    public = models.BooleanField(default=False)
    badge_token = models.CharField(max_length=64, blank=True)
    members: models.ManyToManyField[User, Membership] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )
    # Build numbers are taken from here under a row lock: per project, monotonic, no gaps
    # from concurrent submits.
    next_build_number = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DEVELOPER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.role} of {self.project}"


class Build(models.Model):
    class Trigger(models.TextChoices):
        API = "api"
        MANUAL = "manual"
        PUSH = "push"
        PULL_REQUEST = "pull_request"
        TAG = "tag"
        CRON = "cron"
        RERUN = "rerun"
        ROLLBACK = "rollback"  # an earlier deployment run again (builds/deployments.py)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="builds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.API)
    ref = models.CharField(max_length=255, blank=True)
    commit = models.CharField(max_length=64, blank=True)
    message = models.TextField(blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    pipeline = models.TextField(help_text="The YAML snapshot this build runs.")
    env = models.JSONField(default=dict, blank=True)
    # The values of the pipeline's `inputs:`, checked against them (GOCI_INPUT_<NAME>).
    inputs = models.JSONField(default=dict, blank=True)
    # NULL, not "": the unique constraint applies only to builds that carry a key.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    rerun_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    cancel_requested = models.BooleanField(default=False)
    # A pull request from another repository than the base: it never receives secrets.
    fork = models.BooleanField(default=False)
    # From a forge's delivery (builds/forges/): who pushed what, for pages, `when:` and
    # the commit status sent back to that forge.
    forge = models.CharField(max_length=20, blank=True)  # github, gitlab, gitea or ""
    commit_author = models.CharField(max_length=200, blank=True)
    compare_url = models.CharField(max_length=2000, blank=True)
    pr_number = models.PositiveIntegerField(null=True, blank=True)
    pr_title = models.CharField(max_length=500, blank=True)
    source_branch = models.CharField(max_length=255, blank=True)
    target_branch = models.CharField(max_length=255, blank=True)
    base_commit = models.CharField(max_length=64, blank=True)  # a PR's base, for its diff
    # Files the push or pull request changed, for `when: {path: ...}`; None: not known.
    changed_files = models.JSONField(null=True, blank=True)
    # The worker fetches the repository at `commit` into the workspace first (the step
    # named "clone"); with an empty `pipeline`, it also reads the pipeline from there.
    checkout = models.BooleanField(default=False)
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="build_number_per_project"),
            models.UniqueConstraint(
                fields=["project", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="idempotency_key_per_project",
            ),
        ]
        indexes = [models.Index(fields=["project", "-id"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.project.slug}#{self.number}"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


# The steps of a build's k-th job (its k-th matrix cell, from 0) are at positions
# k * CELL_POSITIONS + 0, 1, ... (a pipeline has at most 500 steps and a clone): a
# position names one step of the build, in URLs and on the page.
CELL_POSITIONS = 1000


class Job(models.Model):
    """A unit of dispatch: one per build, or one per matrix cell (`matrix` holds the
    cell's values, `name` its name, builds.pipeline.cell_name).

    `attempt` is the fencing token: a worker owns attempt N of a job while its lease
    holds, and every write it makes names N. The reaper moves a lost job to N + 1, so
    the old worker's late writes match no row and are refused.
    """

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=200, default="default")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    attempt = models.PositiveIntegerField(default=1)
    worker = models.CharField(max_length=200, blank=True)
    # Which worker or runner took it (its name stays in `worker` if the row goes).
    runner = models.ForeignKey(
        "runners.Runner", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    # Every label a runner must have to take it (the pipeline's `runs_on`).
    labels = models.JSONField(default=list, blank=True)
    # The values of its matrix cell, by variable ({} outside a matrix): the job runs
    # builds.pipeline.for_cell(pipeline, matrix).
    matrix = models.JSONField(default=dict, blank=True)
    # Its cell may fail without failing the build (`matrix: {allow_failure: [...]}`).
    allow_failure = models.BooleanField(default=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["status", "id"]),
            models.Index(fields=["status", "lease_expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.build} {self.name} (attempt {self.attempt})"


class Step(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=200)
    position = models.PositiveIntegerField()
    needs = models.JSONField(default=list, blank=True)
    image = models.CharField(max_length=500, blank=True)
    # A `build:` step's image (runners/executors/image_build.py): its ID, and the digest
    # of each tag it pushed ({tag: "sha256:..."}).
    image_id = models.CharField(max_length=100, blank=True)
    digests = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "name"], name="step_name_per_job"),
        ]

    def __str__(self) -> str:
        return f"{self.job.build} {self.name}"

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def key(self) -> str:
        """The step's name in its build, on the page and in live messages: its name, or
        in a matrix build "CELL / name" (the names of steps repeat in every cell)."""
        return matrix_key(self.job.name, self.name) if self.job.matrix else self.name


def matrix_key(job_name: str, step_name: str) -> str:
    return f"{job_name} / {step_name}"


class LogChunk(models.Model):
    """Consecutive lines of one step's log in one job attempt. Append-only."""

    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="chunks")
    attempt = models.PositiveIntegerField()
    first_line = models.PositiveIntegerField()
    line_count = models.PositiveIntegerField()
    text = models.TextField(help_text="The lines joined with newlines, without a last one.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step", "attempt", "first_line"]
        constraints = [
            models.UniqueConstraint(
                fields=["step", "attempt", "first_line"], name="chunk_lines_per_step_attempt"
            )
        ]

    def __str__(self) -> str:
        return f"{self.step} lines {self.first_line}..{self.first_line + self.line_count - 1}"

    def lines(self) -> list[str]:
        return self.text.split("\n")


# What a personal token may do: `read` every GET; `run` builds (create, cancel, rerun);
# `admin` manage projects, members, secrets and tokens (builds/api.py maps the routes).
TOKEN_SCOPES = ("read", "run", "admin")


def default_token_scopes() -> list[str]:
    # A token for scripts and CI by default: it reads and runs builds, but cannot change
    # who may do what, nor mint tokens; `admin` is asked for by name.
    return ["read", "run"]


def all_token_scopes() -> list[str]:
    return list(TOKEN_SCOPES)


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 of it is stored: the token is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise it.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    scopes = models.JSONField(default=default_token_scopes, help_text="read, run, admin")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    # Kept, not deleted, once revoked: the audit log and JWTs issued from it name it.
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…) of {self.user}"


def default_secret_events() -> list[str]:
    # A pull request runs code its author chose: secrets reach it only when asked.
    return ["push", "tag", "manual", "cron", "api"]


class Secret(models.Model):
    """A value a step may receive as an environment variable. Only its encryption is
    stored (builds/secrets.py); nothing shows the value again after it is set."""

    # NULL: a global secret, made by an admin, that every project can use.
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets"
    )
    name = models.CharField(max_length=200)
    ciphertext = models.TextField(help_text="The value, encrypted with GOCI_SECRET_KEYS.")
    events = models.JSONField(default=default_secret_events)
    branches = models.JSONField(default=list, blank=True, help_text="Globs; empty: any.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                condition=Q(project__isnull=False),
                name="secret_name_per_project",
            ),
            models.UniqueConstraint(
                fields=["name"], condition=Q(project__isnull=True), name="global_secret_name"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project or 'global'} {self.name}"


class WebhookDelivery(models.Model):
    """One POST to /hooks/{slug}: what came and what Goci made of it. The last 100 of a
    project are kept. Only a verified delivery keeps its body (for a redelivery)."""

    class Outcome(models.TextChoices):
        BUILD = "build"
        IGNORED = "ignored"
        REJECTED = "rejected"
        DUPLICATE = "duplicate"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.CharField(max_length=200, blank=True)
    forge = models.CharField(max_length=20, blank=True)
    event = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    build = models.ForeignKey(Build, null=True, blank=True, on_delete=models.SET_NULL)
    headers = models.JSONField(default=dict, blank=True)
    body = models.BinaryField(null=True, blank=True)
    redelivery_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "-id"])]

    def __str__(self) -> str:
        return f"{self.project.slug} {self.forge} {self.event} {self.outcome}"


class CommitStatus(models.Model):
    """A commit status to send to the build's forge (an outbox: written in the same
    transaction as the build's change, sent with retries by builds/commit_status.py).
    Only the newest unsent one of a build is sent: an older one would overwrite it."""

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="commit_statuses")
    state = models.CharField(max_length=20)  # pending, success, failure, error, canceled
    description = models.CharField(max_length=140, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    superseded = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["sent_at", "superseded", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.build} {self.state}"


class Environment(models.Model):
    """Where a step with `environment:` deploys (builds/deployments.py). Made by the
    first deployment to it, or by a maintainer who protects it first."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    name = models.CharField(max_length=100)
    url = models.CharField(max_length=2000, blank=True)  # the last deployment's
    # Only maintainers may deploy to it...
    protected = models.BooleanField(default=False)
    # ...and, with this, another maintainer must approve each deployment first.
    approval = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="environment_name_per_project")
        ]

    def __str__(self) -> str:
        return f"{self.project.slug} {self.name}"


class Deployment(models.Model):
    """A build's deployment to an environment: its steps with `environment:` of that
    name. At most one of an environment runs at a time (runners/queue.py)."""

    class State(models.TextChoices):
        WAITING = "waiting"  # for a maintainer's approval
        QUEUED = "queued"
        RUNNING = "running"
        SUCCESS = "success"
        FAILURE = "failure"
        ERROR = "error"
        CANCELED = "canceled"
        REJECTED = "rejected"  # by a maintainer, instead of approved
        SKIPPED = "skipped"  # its steps did not run (`when:`, or a step before failed)

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="deployments"
    )
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="deployments")
    # The build's commit and ref (a rollback runs this commit again).
    commit = models.CharField(max_length=64, blank=True)
    ref = models.CharField(max_length=255, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    url = models.CharField(max_length=2000, blank=True)
    # Who approved (or rejected) it.
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "build"], name="one_deployment_per_build"
            )
        ]
        indexes = [models.Index(fields=["environment", "state"])]

    def __str__(self) -> str:
        return f"{self.build} to {self.environment.name}"


class Schedule(models.Model):
    """Builds on a cron expression (builds/schedules.py). `next_run_at` is the next due
    time; the process that moves it on (a compare-and-swap) starts that run."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="schedules")
    description = models.CharField(max_length=200, blank=True)
    cron = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC")
    ref = models.CharField(max_length=255, blank=True)  # "": the default branch
    inputs = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_build = models.ForeignKey(
        Build, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["enabled", "next_run_at"])]

    def __str__(self) -> str:
        return f"{self.project.slug} {self.cron}"


class NotificationTarget(models.Model):
    """Where a project sends build and deploy news (builds/notifications.py). Its
    credentials (a Slack URL, a bot token and chat, an HMAC key) are encrypted in
    `credentials`, like a Secret, and never shown again."""

    class Kind(models.TextChoices):
        WEBHOOK = "webhook"
        SLACK = "slack"
        TELEGRAM = "telegram"
        EMAIL = "email"

    class When(models.TextChoices):
        ALWAYS = "always"  # every finished build
        FAILURES = "failures"
        CHANGES = "changes"  # failures, and the first success after one ("fixed")
        NEVER = "never"  # builds never; deployments if asked

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="notification_targets"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # A generic webhook's URL (not a credential: shown); email addresses, one per line.
    url = models.CharField(max_length=2000, blank=True)
    addresses = models.JSONField(default=list, blank=True)
    credentials = models.TextField(blank=True)
    when = models.CharField(max_length=20, choices=When.choices, default=When.CHANGES)
    deployments = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"], name="notification_name_per_project"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project.slug} {self.name}"


class Notification(models.Model):
    """One message to one target (an outbox: written in the transaction that settles
    the build or deployment, sent with retries by builds/notifications.py)."""

    target = models.ForeignKey(
        NotificationTarget, on_delete=models.CASCADE, related_name="notifications"
    )
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=20)  # build, fixed or deployment
    payload = models.JSONField(default=dict)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    given_up = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["sent_at", "given_up", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.target} {self.build} {self.event}"
