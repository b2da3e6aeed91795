"""The fake Entra ID / ACS identity service and the S2S certificate helpers (SPEC sections 1.2-1.4, 6)."""

from .certs import (
    CertificateError,
    load_cer,
    load_pair,
    load_pfx,
    make_certificate,
    thumbprint,
    write_cer,
    write_pfx,
    x5t,
)
from .service import (
    ACS_PRINCIPAL_ID,
    CRM_APP_ID,
    EXCHANGE_APP_ID,
    EXCHANGE_RESOURCE,
    EXCHANGE_SCOPE,
    IdentityError,
    IdentityService,
    InvalidToken,
    KeyCredential,
    OAuthError,
    ServicePrincipal,
    Tenant,
)

__all__ = [
    "ACS_PRINCIPAL_ID", "CRM_APP_ID", "EXCHANGE_APP_ID", "EXCHANGE_RESOURCE", "EXCHANGE_SCOPE",
    "CertificateError", "IdentityError", "IdentityService", "InvalidToken", "KeyCredential", "OAuthError",
    "ServicePrincipal", "Tenant", "load_cer", "load_pair", "load_pfx", "make_certificate", "thumbprint",
    "write_cer", "write_pfx", "x5t",
]
