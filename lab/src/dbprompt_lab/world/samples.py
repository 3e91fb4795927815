"""Random access to the synthetic database: sample `index` of (world, domain, seed) is always the same.

Two worlds: `proxy` (the one the first proxy backbone and BENCHMARKS.md's tables were made from; frozen)
and `broad` (world/broad: more of everything, and captions in several grammars).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from dbprompt_lab.world import broad
from dbprompt_lab.world.captions import captions
from dbprompt_lab.world.domains import DOMAINS, Domain, get_domain
from dbprompt_lab.world.render import render
from dbprompt_lab.world.scene import Scene, sample_scene, twin, twin_key


WORLDS = ("proxy", "broad")


@dataclass(frozen=True)
class Sample:
    scene: Scene | broad.Scene
    image: np.ndarray  # uint8 (size, size, 3)
    captions: list[str]


def check_arguments(domain: str, image_size: int, captions_per_image: int, world: str = "proxy") -> Domain | broad.BroadDomain:
    """The named domain, once the arguments are known to make valid samples; lets callers fail before writing."""
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose one of {', '.join(WORLDS)}")
    return broad.get_domain(domain) if world == "broad" else get_domain(domain)


def shifts(world: str) -> tuple[str, ...]:
    """The world's shifted domains, every one but `source`, in their order: what a comparison measures on it."""
    check_arguments("source", 16, 1, world)
    return tuple(d for d in (broad.DOMAINS if world == "broad" else DOMAINS) if d != "source")


def sample(
    index: int,
    *,
    domain: str = "source",
    seed: int = 0,
    image_size: int = 64,
    captions_per_image: int = 3,
    world: str = "proxy",
    twins: bool = False,
) -> Sample:
    """One image with its captions.

    Each sample has its own generator keyed by (seed, domain, index), so samples
    can be made in any order or in parallel, and two domains with the same seed
    never share images (no accidental train/test overlap across domains).

    `twins`: samples 2p and 2p+1 are one scene drawn, placed, coloured and worded alike
    except that one shape is of another kind, so that only the shape tells them apart; a batch that holds both
    asks the image tower for the shape, which the world's random pairs almost never do.
    """
    d = check_arguments(domain, image_size, captions_per_image, world)
    if isinstance(d, broad.BroadDomain):
        return Sample(*broad.draw(index, d, seed, image_size, captions_per_image, twins))
    member, key = twin_key(index, twins)
    rng = np.random.default_rng([seed, zlib.crc32(d.name.encode()), *key])
    drawn = sample_scene(rng)
    if twins:
        drawn = twin(drawn, rng, member)
    image = render(drawn, rng, size=image_size, shifted=d.visual_shift)
    return Sample(drawn, image, captions(drawn, rng, textual=d.textual_shift, n=captions_per_image))


def generate(
    n: int, *, domain: str = "source", seed: int = 0, image_size: int = 64, captions_per_image: int = 3, world: str = "proxy"
) -> list[tuple[np.ndarray, list[str]]]:
    """The first `n` samples as (image, captions) pairs, for code that does not want files."""
    return [
        (s.image, s.captions)
        for s in (
            sample(i, domain=domain, seed=seed, image_size=image_size, captions_per_image=captions_per_image, world=world)
            for i in range(n)
        )
    ]
