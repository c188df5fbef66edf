"""Seeded, deterministic traffic of the streaming platform, with ground truth.

>>> sim = Simulator(SimulationConfig(seed=7, duration_s=60.0))
>>> titles = sim.catalog()                      # `title` records, publish first
>>> for event_type, record in sim.events():    # event_type: schema file stem
...     ...
>>> sim.truth.to_json("truth.json")             # what was injected, and counts so far

Modules: ``config`` (what to simulate), ``world`` (catalog, users, edges), ``model``
(behaviour parameters), ``incidents`` (injected faults), ``playback`` and ``activity``
(the event sources), ``engine`` (rates and the time-ordered merge), ``truth``.
"""

from reelpulse.simulator.config import DEFAULT_START_MS, Experiment, Incident, SimulationConfig
from reelpulse.simulator.engine import Simulator
from reelpulse.simulator.truth import GroundTruth

__all__ = [
    "DEFAULT_START_MS",
    "Experiment",
    "GroundTruth",
    "Incident",
    "SimulationConfig",
    "Simulator",
]
