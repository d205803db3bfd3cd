"""API keys: a secret shown once when the key is created (``kf_<id>_<token>``), kept
in the store only as a salted SHA-256 hash, with the key's scopes: ``ingest`` (of the
streams it names, or of all), ``query``, ``admin`` and ``metrics``. A revoked key
checks as no key in every server within `RECHECK_S` (`KeyRing`). The tokens are 256
random bits, so one hash, not a slow one, is what keeps a stolen store from giving
them away."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import get_args

import msgspec

from kappaflow.errors import KappaflowError
from kappaflow.settings import Settings
from kappaflow.store.base import ApiKey, Scope, Store, StoredKey

SCOPES: tuple[Scope, ...] = get_args(Scope)
SECRET = re.compile(r"kf_(?P<id>[0-9a-f]{12})_(?P<token>[A-Za-z0-9_-]{43})")
RECHECK_S = 2.0
"""How often a server reads the keys again: a key created or revoked counts from then."""
log = logging.getLogger("kappaflow.keys")


class KeyRefused(KappaflowError):
    """A key that cannot be created or revoked as asked."""


def digest(salt: bytes, token: str) -> bytes:
    return hashlib.sha256(salt + token.encode()).digest()


def create(
    store: Store, name: str, scopes: Sequence[str], streams: Sequence[str] = ()
) -> tuple[ApiKey, str]:
    """A new key and its secret (shown once: the store keeps only its hash)."""
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise KeyRefused(f"scopes must be some of {', '.join(SCOPES)}; got "
                        f"{', '.join(scopes) or 'none'}")  # fmt: skip
    if streams and "ingest" not in scopes:
        raise KeyRefused("streams limit what an ingest key may post to: give the ingest scope")
    secret, salt = new_secret(), secrets.token_bytes(16)
    _, key_id, token = secret.split("_", 2)
    key = ApiKey(key_id, name, tuple(dict.fromkeys(scopes)), tuple(streams),  # type: ignore[arg-type]
                 time.time())  # fmt: skip
    store.add_key(StoredKey(key, salt, digest(salt, token)))
    return key, secret


def revoke(store: Store, key_id: str) -> ApiKey:
    """Revoke key ``key_id``; the key as revoked."""
    found = {stored.key.id: stored.key for stored in store.api_keys()}.get(key_id)
    if found is None:
        raise KeyRefused(f"no key {key_id!r}: `kappaflow keys list` lists them")
    if found.revoked_at is not None:
        return found
    at = time.time()
    store.revoke_key(key_id, at)
    return msgspec.structs.replace(found, revoked_at=at)


class KeyRing:
    """The keys as a process checks them: read from the store by `refresh` (a server
    calls it every `RECHECK_S` from a thread of its own, so a key revoked anywhere stops
    working within that), checked in memory. ``given``: keys the settings give besides
    (`settings_key`). While the store cannot be read, the keys read last stay."""

    def __init__(
        self, read: Callable[[], list[StoredKey]], given: Sequence[StoredKey] = ()
    ) -> None:
        self._read = read
        self._given = {stored.key.id: stored for stored in given}
        self._keys = dict(self._given)

    def refresh(self) -> None:
        try:
            found = {stored.key.id: stored for stored in self._read()}
        except KappaflowError as failure:
            log.warning("cannot read the API keys (%s); checking those read before", failure)
            return
        self._keys = {**found, **self._given}

    def check(self, secret: str) -> ApiKey | None:
        """The key whose secret is ``secret``, unless there is none or it is revoked."""
        found = SECRET.fullmatch(secret)
        if found is None:
            return None
        stored = self._keys.get(found["id"])
        if stored is None or stored.key.revoked_at is not None:
            return None
        if not hmac.compare_digest(stored.digest, digest(stored.salt, found["token"])):
            return None
        return stored.key


def settings_key(secret: str) -> StoredKey:
    """The key of every scope that the secret ``secret`` of the settings gives (the
    deploy files read it from a Secret); `KeyRefused` if it is not a key's secret."""
    found = SECRET.fullmatch(secret)
    if found is None:
        raise KeyRefused("KAPPAFLOW_ADMIN_KEY is not a key's secret (kf_<12 hex>_<43 "
                         "characters>): `kappaflow keys new-secret` prints one")  # fmt: skip
    salt = secrets.token_bytes(16)
    key = ApiKey(found["id"], "the settings' admin key", SCOPES, (), 0.0)
    return StoredKey(key, salt, digest(salt, found["token"]))


def bearer(secret: str) -> dict[str, str]:
    """The HTTP header a client sends with the key's ``secret``; none for no secret."""
    return {"authorization": f"Bearer {secret}"} if secret else {}


def new_secret() -> str:
    """A key's secret, not kept anywhere: for `settings_key`."""
    return f"kf_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def watch(settings: Settings, store: Store) -> tuple[KeyRing | None, threading.Event]:
    """The API keys a process's HTTP services check, read again every `RECHECK_S` by a
    thread until the event returned is set; None when authentication is off (said in
    the log)."""
    done = threading.Event()
    if not settings.auth_on:
        only = f"the services listen on {settings.host} only; KAPPAFLOW_AUTH=on asks anyway"
        why = "KAPPAFLOW_AUTH=off" if settings.auth == "off" else only
        log.warning("authentication is off: requests need no API key (%s)", why)
        return None, done
    ring = KeyRing(store.api_keys, [settings_key(settings.admin_key)] if settings.admin_key else [])
    ring.refresh()

    def read_again() -> None:
        while not done.wait(RECHECK_S):
            ring.refresh()

    threading.Thread(target=read_again, name="kappaflow-keys", daemon=True).start()
    return ring, done
