"""Who runs jobs: every worker process and every remote runner is a Runner (issue #13).

A worker (`goci worker`, the one in `goci up`) records itself when it starts and keeps
its row's `last_contact` fresh with its heartbeat; a remote runner registers with a
registration token and reaches the server over HTTP with its own token (only its
digest is kept). The queue reasons, the runners page and /metrics read these rows.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Runner(models.Model):
    class Kind(models.TextChoices):
        WORKER = "worker"  # a process on the server's side, with the database
        RUNNER = "runner"  # a remote runner, over HTTP only

    class State(models.TextChoices):
        # What an admin set; "online" and "offline" come from last_contact.
        ACTIVE = "active"
        PAUSED = "paused"  # takes no new jobs
        DRAINING = "draining"  # finishes what it runs, then takes nothing

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.WORKER)
    labels = models.JSONField(default=list, blank=True)
    capacity = models.PositiveIntegerField(default=1)
    version = models.CharField(max_length=50, blank=True)
    platform = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    last_contact = models.DateTimeField(null=True, blank=True)
    # A remote runner's token: its SHA-256 (the token itself is shown once, to it).
    token_digest = models.CharField(max_length=64, unique=True, null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RegistrationToken(models.Model):
    """Made by an admin; a runner trades it for its own token. Single-use tokens end
    with their first registration; others stay usable until revoked or expired."""

    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)  # shown in lists, to tell tokens apart
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    single_use = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.prefix}…"
