"""An offline stand-in for Replicate's HTTP API, faithful enough for the official client.

    python -m service.simulator --port 8100 --latency 3.0

See app.py (create_app), config.py (SimulatorConfig) and admin.py (the /_sim/ test controls).
"""

from service.simulator.app import create_app
from service.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_app"]
