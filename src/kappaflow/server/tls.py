"""HTTPS: the certificate kappaflow's HTTP services present (settings ``tls_cert_file``
and ``tls_key_file``), and what its own HTTP clients trust (``tls_ca_file``)."""

from __future__ import annotations

import ssl

from kappaflow.errors import SettingsError
from kappaflow.settings import Settings

CERT, KEY = "KAPPAFLOW_TLS_CERT_FILE", "KAPPAFLOW_TLS_KEY_FILE"


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The context the services serve HTTPS with, None for plain HTTP; `SettingsError`,
    naming the settings, unless they name a PEM certificate and its private key."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        raise SettingsError(f"{CERT} and {KEY} go together: give both, or neither for HTTP")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise SettingsError(f"{CERT} ({cert}) and {KEY} ({key}) are not a PEM certificate "
                            f"and its private key: {error.reason}") from None  # fmt: skip
    except OSError as error:
        raise SettingsError(f"cannot read {CERT} ({cert}) or {KEY} ({key}): "
                            f"{error.strerror}") from None  # fmt: skip
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """What kappaflow's HTTP clients check the services' certificates against: the
    system's certificate authorities, and those of ``tls_ca_file``."""
    context = ssl.create_default_context()
    if settings.tls_ca_file:
        try:
            context.load_verify_locations(settings.tls_ca_file)
        except (OSError, ssl.SSLError) as error:
            given = f"KAPPAFLOW_TLS_CA_FILE ({settings.tls_ca_file})"
            raise SettingsError(
                f"{given} is not a readable PEM file of certificates: {error}"
            ) from None
    return context
