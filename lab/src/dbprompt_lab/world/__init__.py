"""A deterministic synthetic image-caption world: shapes on backgrounds, in four domains.

Used by `dbprompt demo`, by tests, and to measure domain shift (visual, textual, both)
against the `source` domain. `world="broad"` (world/broad) draws the broad world instead: more shapes,
styles, backgrounds and relations, captions in several grammars, and shifts of its own.
"""

from dbprompt_lab.world.domains import DOMAINS, Domain, describe
from dbprompt_lab.world.samples import Sample, generate, sample
from dbprompt_lab.world.scene import Scene, Shape
from dbprompt_lab.world.writer import write_database

__all__ = ["DOMAINS", "Domain", "Sample", "Scene", "Shape", "describe", "generate", "sample", "write_database"]
