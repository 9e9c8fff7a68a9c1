"""API keys, their tenants and roles, in the configured store.

A key is ``tk-`` followed by 43 URL-safe characters (256 random bits). It is shown once,
at creation or rotation; the store keeps only its SHA-256 (a high-entropy secret needs no
slow hash or salt) and a short hint (``tk-...abcd``) for people to recognise it. Lookup is
one equality match on the hash's primary key, so timing says nothing about how much of a
guessed key was right.

Each key has an id (``key_...``), a tenant, roles (``ROLES``), the route aliases it may use
(empty = all), rate limits and budgets (``None`` = unlimited, enforced by
``turnout.governance.limits``), an optional expiry, an optional ``owner`` (the person it
belongs to: four eyes compares owners, :func:`same_person`) and ``all_tenants``. An admin key
with ``all_tenants`` is the operator's: it manages keys of every tenant and reads every
tenant's figures and the configuration. Only ``turnout keys create`` makes one (an admin key
made there is the operator's unless ``--tenant-only``); an admin key made through the API
administers its own tenant only. Keys that held ``admin`` before ``all_tenants`` existed
became all-tenants keys (migration 0003), so nothing an operator had stops working. A key id has one or more *secrets*
(table ``keys_secrets``): rotation adds a new secret and gives the old ones an expiry a
short overlap away, so clients can switch without a gap.

This module is the keys themselves (shape, hashing, roles, limits, checks), with no database
code; where they live (the SQLite file or PostgreSQL) is ``turnout.governance.key_store``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from turnout.errors import AuthenticationFailed, PermissionDenied
from turnout.governance import clock

KEY_PREFIX = "tk-"
_KEY_SHAPE = re.compile(r"^tk-[A-Za-z0-9_-]{43}$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
#: admin: its tenant's keys (every tenant's keys, usage and the config with all_tenants);
#: viewer: dashboard, usage and metrics of its tenant; approver: decides its tenant's task
#: approvals; user: inference, its own feedback and collections; metrics: GET /metrics of every
#: tenant and nothing else (a Prometheus scraper's key).
ROLES = ("admin", "viewer", "approver", "user", "metrics")
#: roles that read every tenant's data: only an all-tenants admin (or the CLI) gives them
CROSS_TENANT_ROLES = ("metrics",)
DEFAULT_ROLES = ("user",)
DEFAULT_OVERLAP_S = 3600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key limits; ``None`` is unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "usd_per_day", "usd_per_month"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name} must be >= 0 (or unset for unlimited), got {v}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    hint: str
    routes: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    created_at: str = ""
    revoked_at: str | None = None
    roles: tuple[str, ...] = DEFAULT_ROLES
    expires_at: str | None = None  # the key's, or (from a lookup) its secret's if sooner
    owner: str | None = None       # the person the key belongs to (four eyes)
    all_tenants: bool = False      # an admin key of the operator's: every tenant

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and datetime.fromisoformat(self.expires_at) <= (now or datetime.now(UTC))

    def allows(self, route: str) -> bool:
        return not self.routes or route in self.routes

    def has_role(self, *roles: str) -> bool:
        """Any of ``roles``; ``admin`` includes ``viewer`` (every tenant's figures)."""
        mine = set(self.roles) | ({"viewer"} if "admin" in self.roles else set())
        return bool(mine & set(roles))


def same_person(a: ApiKey, b: ApiKey) -> bool:
    """Whether two keys act for one person, for four eyes: the same key, or two keys that both
    name the same ``owner``. (Keys without an owner are told apart by key only.)"""
    return a.key_id == b.key_id or (a.owner is not None and a.owner == b.owner)


@dataclass(frozen=True, slots=True)
class NewKey:
    """The only object that ever holds the plaintext key: print it once, then drop it."""

    key: ApiKey
    plaintext: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


def new_plaintext() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``90m``, ``45s`` from now, or an ISO 8601 time (UTC when no zone)."""
    now = now or clock.now()
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86_400}[m.group(2)]
        return now + timedelta(seconds=float(m.group(1)) * unit)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expiry must be a duration like 30d, 12h, 90m or an ISO 8601 time; got {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted({r.strip() for r in roles if r.strip()}))
    unknown = [r for r in out if r not in ROLES]
    if unknown or not out:
        raise ValueError(f"roles must be one or more of {', '.join(ROLES)}; got {', '.join(out) or 'none'}")
    return out


def check_key(key: ApiKey | None, route: str | None = None) -> ApiKey:
    """``key`` if it may be used now (on ``route``); else AuthenticationFailed or PermissionDenied."""
    if key is None:
        raise AuthenticationFailed("invalid API key")
    if not key.active:
        raise AuthenticationFailed(f"API key {key.key_id} was revoked at {key.revoked_at}", code="key_revoked")
    if key.expired():
        raise AuthenticationFailed(f"API key {key.key_id} expired at {key.expires_at}", code="key_expired")
    if route is not None and not key.allows(route):
        raise PermissionDenied(f"API key {key.key_id} may not use route {route!r} "
                               f"(allowed: {', '.join(key.routes)})", code="route_not_allowed")
    return key


def key_shaped(plaintext: str) -> bool:
    """Whether a bearer token has a key's shape (anything else is never looked up)."""
    return bool(_KEY_SHAPE.match(plaintext))


def hint_of(plaintext: str) -> str:
    return f"{KEY_PREFIX}...{plaintext[-4:]}"


def new_key(tenant: str, *, routes: Iterable[str] = (), limits: Limits | None = None,
            roles: Iterable[str] = DEFAULT_ROLES, expires_at: datetime | None = None, owner: str | None = None,
            all_tenants: bool = False) -> NewKey:
    """A new key and its plaintext, checked, not yet stored (``KeyTables.create`` stores it).
    ``all_tenants`` (an operator's admin key) needs the admin role. ValueError says what is wrong."""
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant must be 1-128 characters of letters, digits and _.@:- ; got {tenant!r}")
    if owner is not None and not _TENANT.match(owner):
        raise ValueError(f"owner must be 1-128 characters of letters, digits and _.@:- ; got {owner!r}")
    role_list = check_roles(roles)
    if all_tenants and "admin" not in role_list:
        raise ValueError("only an admin key can act for all tenants")
    plaintext = new_plaintext()
    key = ApiKey(key_id="key_" + secrets.token_hex(8), tenant=tenant, hint=hint_of(plaintext),
                 routes=tuple(sorted({r.strip() for r in routes if r.strip()})), limits=limits or Limits(),
                 created_at=clock.iso(clock.now()), roles=role_list,
                 expires_at=None if expires_at is None else clock.iso(expires_at), owner=owner,
                 all_tenants=all_tenants)
    return NewKey(key, plaintext)
