"""Embedding stage: the session cache, normalisation, and the numpy DCT descriptor."""

from __future__ import annotations

import numpy as np
from conftest import jpeg_bytes

from dedupdask.decode import decode_image
from dedupdask.embed import embed_batch, get_session, perceptual_batch
from dedupdask.models import resolve_model


def test_numpy_descriptor_equals_dct_graph():
    spec = resolve_model("dct")
    imgs = np.stack([decode_image(jpeg_bytes(i), (64, 64)).pixels for i in range(8)])
    assert np.allclose(perceptual_batch(imgs), embed_batch(spec, imgs), atol=2e-5)


def test_flat_image_stays_near_zero():
    """A flat image has no AC energy: the graph maps it near zero and nothing re-normalises it."""
    spec = resolve_model("dct")
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    assert np.abs(embed_batch(spec, flat)).max() < 1e-2
    assert np.abs(perceptual_batch(flat)).max() < 1e-2


def test_session_is_cached_per_process():
    spec = resolve_model("dct")
    assert get_session(spec) is get_session(spec)
    assert get_session(spec, 2) is not get_session(spec, 1)
