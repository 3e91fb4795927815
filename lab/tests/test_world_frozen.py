"""The proxy world is frozen: the shipped proxy and every table in BENCHMARKS.md were made from it, so adding
the broad world (or refactoring the renderer) must leave each of its images and captions bit-identical."""

import hashlib

import numpy as np

from dbprompt_lab.world import DOMAINS, generate
from dbprompt_lab.world.folders import class_scene
from dbprompt_lab.world.render import render

# Computed on main at 42479ec, before the broad world existed.
WORLD_SHA256 = "72c0939968e6e710cae1a13e04e24a27841301a44a253ef997195506f37b1c28"
FOLDERS_SHA256 = "9545cf9858b6a8c5434f5d7f4b16768549b7d877644aa62436dcca06dcea3748"


def test_every_domain_of_the_proxy_world_draws_what_it_drew_before():
    digest = hashlib.sha256()
    for domain in DOMAINS:
        for image, captions in generate(40, domain=domain, seed=7, image_size=64):
            digest.update(image.tobytes())
            digest.update("\n".join(captions).encode())
    assert digest.hexdigest() == WORLD_SHA256


def test_class_folder_images_are_what_they_were():
    digest = hashlib.sha256()
    for i in range(20):
        rng = np.random.default_rng([3, i])
        digest.update(render(class_scene("star", rng, 0.5), rng, size=48, shifted=bool(i % 2)).tobytes())
    assert digest.hexdigest() == FOLDERS_SHA256
