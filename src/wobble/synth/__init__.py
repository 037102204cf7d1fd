"""The synthetic world: a population whose need rises and falls, and the extracts five systems make of it.

`synth` writes a world (`run`); the hidden process is in `world` (and `population`), the systems'
extracts in `extracts` and `sources`, and the demo's configuration in `demo`.
"""

from wobble.synth.demo import demo_config, demo_key
from wobble.synth.run import SynthResult, synth
from wobble.synth.world import WORLD_START, WORLD_WEEKS

__all__ = ["WORLD_START", "WORLD_WEEKS", "SynthResult", "demo_config", "demo_key", "synth"]
