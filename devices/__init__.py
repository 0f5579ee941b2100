"""Device-side tooling: IoT Core provisioning, local stand-ins and the fleet simulator.

Imports ``pki`` only.
"""
