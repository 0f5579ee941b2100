"""Certificate rotation: renewal schedule, planner, executor and the daemon.

May import ``pki`` and ``devices``.
"""
