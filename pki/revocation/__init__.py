"""Revocation and CRLs: ``revoke`` (idempotent revocation, the hooks), ``signing`` (each
CA's CRL, numbered and kept fresh), ``crl`` (building and checking CRLs, pure) and
``files`` (the CRL files a home publishes). Import the module you need: this package
loads nothing by itself (``pki.home`` uses ``files``)."""
