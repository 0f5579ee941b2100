"""fleetpki core: CA backends, issuance policy, inventory, revocation and CRLs.

This package never imports ``devices`` or ``rotation`` (a test enforces it).
"""

__version__ = "0.1.0"
