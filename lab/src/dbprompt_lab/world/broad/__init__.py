"""The broad world: the proxy world's shapes with more kinds, colours, sizes, fill styles, patterned
backgrounds and relations between shapes, captioned in several grammars with synonyms (issue 28).

Its domains: `source`; the proxy world's shifts rendered for it (`visual`, `textual`, `both`); and its
own: `grammar` (the source's words in unseen templates, joins and word orders) and `texture`
(background patterns the source never shows, unnamed in the captions).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from dbprompt_lab.world.broad.captions import captions
from dbprompt_lab.world.broad.render import render
from dbprompt_lab.world.broad.scene import PATTERNS, UNSEEN_PATTERNS, Scene, sample_scene


@dataclass(frozen=True)
class BroadDomain:
    name: str
    visual: str  # render.VISUAL: "none", "noise" (the proxy world's visual shift) or "texture"
    language: str  # captions.LANGUAGES: "source", "textual" or "grammar"
    patterns: tuple[str, ...]  # the background patterns drawn


DOMAINS: dict[str, BroadDomain] = {
    d.name: d
    for d in (
        BroadDomain("source", "none", "source", PATTERNS),
        BroadDomain("visual", "noise", "source", ("plain",)),
        BroadDomain("textual", "none", "textual", PATTERNS),
        BroadDomain("both", "noise", "textual", ("plain",)),
        BroadDomain("grammar", "none", "grammar", PATTERNS),
        BroadDomain("texture", "texture", "source", UNSEEN_PATTERNS),
    )
}


def get_domain(name: str) -> BroadDomain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r} of the broad world; choose one of {', '.join(DOMAINS)}") from None


def _generator(index: int, domain: BroadDomain, seed: int) -> np.random.Generator:
    """Sample `index` of (domain, seed)'s own generator, keyed apart from the proxy world's."""
    return np.random.default_rng([seed, zlib.crc32(f"broad:{domain.name}".encode()), index])


def scene_of(index: int, domain: BroadDomain, seed: int) -> Scene:
    """The scene `draw` draws for `index`, without rendering it (a scene is its generator's first draws)."""
    return sample_scene(_generator(index, domain, seed), domain.patterns)


def draw(index: int, domain: BroadDomain, seed: int, image_size: int, captions_per_image: int) -> tuple[Scene, np.ndarray, list[str]]:
    """Sample `index` of (domain, seed): its scene, its image and its captions."""
    rng = _generator(index, domain, seed)
    scene = sample_scene(rng, domain.patterns)
    image = render(scene, rng, size=image_size, visual=domain.visual)
    return scene, image, captions(scene, rng, domain.language, captions_per_image)
