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
from dbprompt_lab.world.broad.scene import PATTERNS, SHAPES, UNSEEN_PATTERNS, Scene, sample_scene
from dbprompt_lab.world.scene import twin, twin_key


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


def _scene(index: int, domain: BroadDomain, seed: int, twins: bool) -> tuple[Scene, np.random.Generator]:
    """Sample `index`'s scene and its generator, which goes on to render and word it. The generator is the
    sample's own, keyed apart from the proxy world's; twins (world/samples.py) share their pair's."""
    member, key = twin_key(index, twins)
    rng = np.random.default_rng([seed, zlib.crc32(f"broad:{domain.name}".encode()), *key])
    scene = sample_scene(rng, domain.patterns)
    if twins:
        scene = twin(scene, rng, member, SHAPES)
    return scene, rng


def scene_of(index: int, domain: BroadDomain, seed: int, twins: bool = False) -> Scene:
    """The scene `draw` draws for `index`, without rendering it (a scene is its generator's first draws)."""
    return _scene(index, domain, seed, twins)[0]


def draw(
    index: int, domain: BroadDomain, seed: int, image_size: int, captions_per_image: int, twins: bool = False
) -> tuple[Scene, np.ndarray, list[str]]:
    """Sample `index` of (domain, seed): its scene, its image and its captions."""
    scene, rng = _scene(index, domain, seed, twins)
    image = render(scene, rng, size=image_size, visual=domain.visual)
    return scene, image, captions(scene, rng, domain.language, captions_per_image)
