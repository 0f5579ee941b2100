"""Issuing certificates: a CSR (``csr``) through the policy (``policy``, ``profiles``) to
the backend, what came back checked (``check``), recorded and delivered (``issuer``,
``delivery``), many at once on every core (``forkpool``, ``batch``)."""
