"""The async (aiohttp-based) SDK clients against the simulator: azure.identity.aio and SecretClient (aio)."""

from __future__ import annotations

import jwt
from azure.identity.aio import CertificateCredential, ClientSecretCredential
from azure.keyvault.secrets.aio import SecretClient

from tests.simulator.conftest import SimHandle


async def test_aio_credentials_and_secret_client(sim: SimHandle) -> None:
    c = sim.info["connector"]
    tid = sim.tenant_ids[0]
    async with ClientSecretCredential(tid, c["client_id"], c["client_secret"], authority=sim.info["authority"],
                                      disable_instance_discovery=True, connection_verify=sim.ca_path) as cred:
        token = await cred.get_token("https://graph.microsoft.com/.default")
        assert jwt.decode(token.token, options={"verify_signature": False})["tid"] == tid
    async with CertificateCredential(tid, c["client_id"], c["certificate_path"], authority=sim.info["authority"],
                                     disable_instance_discovery=True, connection_verify=sim.ca_path) as cred:
        token = await cred.get_token("https://api.manage.microsoft.com//.default")
        assert jwt.decode(token.token, options={"verify_signature": False})["roles"] == ["update_device_health"]
    async with ClientSecretCredential(c["home_tenant_id"], c["client_id"], c["client_secret"],
                                      authority=sim.info["authority"], disable_instance_discovery=True,
                                      connection_verify=sim.ca_path) as cred, \
            SecretClient(sim.info["key_vault_url"], cred, verify_challenge_resource=False,
                         connection_verify=sim.ca_path) as client:
        secret = await client.get_secret(c["secret_name"])
        assert secret.value
