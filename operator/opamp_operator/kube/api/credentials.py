"""Credentials, loaded once: the `kubernetes` package reads kubeconfig / in-cluster files.

The same loaded `Configuration` feeds Kopf's login (`connection_info`), the REST authorizer
and every request of `ApiSession`; nothing else reads kubeconfig.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate; build with `from_configuration`."""

    configuration: k8s.Configuration
    ssl: ssl.SSLContext | bool

    @property
    def server(self) -> str:
        return str(self.configuration.host).rstrip("/")

    @classmethod
    def from_configuration(cls, configuration: k8s.Configuration) -> Credentials:
        """Blocking (reads certificate files): call once, off the event loop."""
        return cls(configuration, _ssl_context(configuration))

    async def authorization(self) -> str | None:
        """The Authorization header value, if the credentials have one."""
        if self.configuration.refresh_api_key_hook is None:
            return _authorization(self.configuration)
        # The hook may re-read a token file or run a credential plugin: off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _authorization, self.configuration)

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same credentials for Kopf's login (as `kopf.login_via_client` builds them)."""
        configuration = self.configuration
        header = _bearer(configuration)
        parts = header.split(" ", 1) if header else []
        scheme, token = (None, None)
        if len(parts) == 1:
            token = parts[0]
        elif len(parts) == 2:
            scheme, token = parts[0], parts[1]
        return kopf.ConnectionInfo(
            server=configuration.host,
            ca_path=configuration.ssl_ca_cert,
            insecure=not configuration.verify_ssl,
            username=configuration.username or None,
            password=configuration.password or None,
            scheme=scheme,
            token=token,
            certificate_path=configuration.cert_file,
            private_key_path=configuration.key_file,
        )


def load_configuration(kubeconfig: Path | None) -> k8s.Configuration:
    """Credentials from `kubeconfig`; without one, in-cluster, else the default kubeconfig.

    Blocking (reads files): call it from a thread, or before the event loop runs.
    """
    configuration = type.__call__(k8s.Configuration)  # a fresh one, not the global default
    if kubeconfig is not None:
        k8s_config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration, persist_config=False)
    return configuration


async def load_credentials(kubeconfig: Path | None) -> Credentials:
    """`load_configuration` and the TLS context, read off the event loop."""
    loop = asyncio.get_running_loop()
    configuration = await loop.run_in_executor(None, load_configuration, kubeconfig)
    return await loop.run_in_executor(None, Credentials.from_configuration, configuration)


def _ssl_context(configuration: k8s.Configuration) -> ssl.SSLContext | bool:
    if not str(configuration.host).startswith("https"):
        return False
    if not configuration.verify_ssl:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def _bearer(configuration: k8s.Configuration) -> str | None:
    header = configuration.get_api_key_with_prefix("BearerToken")
    header = header or configuration.get_api_key_with_prefix("authorization")
    return str(header) if header else None


def _authorization(configuration: k8s.Configuration) -> str | None:
    bearer = _bearer(configuration)
    if bearer:
        return bearer
    if configuration.username:
        return str(configuration.get_basic_auth_token())
    return None
