"""Keypoint matcher: the same picture under any plane warp, global colour edit and overlay.

The pixel matcher (:mod:`dedupdask.match`) aligns by scale, translation and flip only and
rejects any local difference but added lines of text, so it misses the copies the web makes most: rotated, tilted,
re-framed, recoloured, watermarked, captioned. This matcher asks the question differently,
in three steps, each with a reason a user can check, of pairs in which at least one picture
is not a *graphic* (:data:`MAX_FLAT`, :data:`MIN_UNIFORM`: clip art, icons, cards and signs are
painted with fills of one colour and drawn from templates,
so two different ones share their template's keypoints; two photos do not):

1. **Geometry.** ORB keypoints (OpenCV: oriented FAST corners with binary descriptors over a
   scale pyramid, rotation and scale invariant, computed on the grey image with its long side at
   :data:`SIZE` px, so colour edits do not move them) are matched with Lowe's ratio test
   (:func:`dedupdask.kernels.ratio_matches`: all against all, by Hamming distance), and a
   homography is fitted to the matches by RANSAC (MAGSAC++), once for the image as is and once
   mirrored. The pair goes on only when at least :data:`MIN_INLIERS` matches agree with one
   plane warp that maps one image onto a convex, not degenerate, region of the other, and turns
   the picture by at most :data:`MAX_TURN` degrees from a quarter turn (none, a quarter, a half,
   three quarters: :data:`QUARTER_TURNS`), after a mirror if there is one. Two different photos
   rarely share 30 distinctive points in the same geometric arrangement, and a photo shown on
   its side or upside down is the same photo: one copy lost or gained its orientation tag, or
   was turned by hand. Between two graphics, which this matcher does not decide, the keypoint
   warp keeps which way is up (:func:`plane_warp`): a drawing turned onto its side or upside
   down (an arrow pointing elsewhere, a corner ornament for another corner) is another
   drawing. One of the two pictures must lie inside the other (:data:`MIN_CONTAINED`): two
   windows onto one scene are two photos of it.
2. **Colour.** The warped image is compared with the other at :data:`PHOTO_SIZE` px inside
   their overlap (in the frame of the image the other covers best, so a crop or a padded
   copy is compared on the picture they share). A *global* colour edit is fitted robustly
   (pixels that do not fit are trimmed, so an overlay does not bend the fit): luma becomes a
   smooth function of the colour (a gain, a per-channel weight kept near the luma weights,
   a square term for gamma, an offset) and chroma is turned, scaled and shifted as a whole
   -- greyscale, sepia, hue, saturation, brightness, contrast and gamma are all of this
   form -- or, the other form tried, every colour's hexagon hue is turned by one angle, its
   saturation scaled and its value (largest channel) put through one gain and offset: the
   hue slider of an editor (HSV and HSL turn hues alike), which a turn of the chroma plane
   only approximates for saturated colours; or, the third form, the picture is *toned*: made
   grey, then tinted along its grey levels (chroma a line in luma: sepia, a cyanotype, a
   tint), which a photo's sepia copy needs when the tint follows its light and not its
   colours. The toning is tried for pictures of more than :data:`FEW_HUES` hues only, and only
   onto a picture of at most that many (a ramp of one tint has two hues at most: its ends; a
   colourful sticker on a grey picture is not absorbed by a toning).
   It must be one an editor makes: luma stays an increasing function of luma along the grey
   axis, the contrast gain stays within :data:`GAIN_RANGE`, the hue turns by at
   most :data:`MAX_HUE_TURN`, the chroma gain under
   :data:`MAX_CHROMA_GAIN`, no channel counts negatively (:data:`MIN_LUMA_WEIGHT`). Two
   pictures whose colours differ by a *redesign* (another skin tone of an emoji, another
   paint on the same drawing) need a transform outside this set. A picture with few hues
   (:data:`FEW_HUES`: clip art, an emoji) cannot tell a global edit from a redrawing in
   another lightness (another skin tone), so its copies must keep their contrast.
3. **Overlay budget.** Pixels still off by more than :data:`OFF_LEVEL` after the colour
   edit (after a 3 x 3 opening, which removes edge misalignment and ringing) are what was
   added or changed: a watermark, a caption, a logo, an inset, a frame. Their share of the
   compared area must stay under :data:`MAX_DIFFERING`. An overlay adds content to one of the
   two pictures: where the differing pixels hold content in *each* image where the other is
   plain (a clock's hands at two times, two cards' pips), the picture was redrawn, and the
   share of such content on the less-changed side must stay under :data:`MAX_MOVED`. And an
   overlay brings its own edges: where the differing pixels keep the edges of both images
   (the same outline and shading, another fill colour: another skin tone, a recoloured part of
   a drawing), the picture was repainted, and that share must stay under :data:`MAX_REPAINTED`.

``score = 1 - 0.1 * max(differing / MAX_DIFFERING, moved / MAX_MOVED, repainted / MAX_REPAINTED,
MIN_INLIERS / inliers)``
when the colour edit is one an editor makes (0 otherwise), so ``score >= 0.9`` -- the default
``verify_score`` -- means exactly the conditions above, and a stricter
``verify_score`` asks for more agreeing points and fewer differing pixels together.

Limits, stated rather than hidden: a change to a small part of a picture that only adds
content (one more star on a flag, a frame drawn around a card) or replaces content by other
content (another symbol in the same warning sign) is within the overlay budget and is
accepted here when the rest matches; the pixel matcher, which tolerates no local change but added text, is
tried first and either matcher may accept. Flat pictures with few corners (a solid colour, a simple logo)
give too few keypoints: they are left to the pixel matcher. The constants were set on the
tuning families of ``benchmarks/quality_families.py`` and checked on its held-out families
(``benchmarks/results/quality_families.txt``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "KeypointMatch",
    "Keypoints",
    "channel_curves",
    "fill_shares",
    "is_graphic",
    "match_keypoints",
    "moved_share",
    "plane_warp",
    "repainted_share",
    "rule_score",
    "turn",
]

SIZE = 256
"""Long side, in px, of the grey image keypoints are found on."""
N_FEATURES = 500
"""Keypoints kept per image (the strongest)."""
RATIO = 0.8
"""Lowe's ratio: a match counts when its nearest descriptor is clearly nearer than the next."""
RANSAC_PX = 4.0
"""A match agrees with a homography when it lands within this many px (at :data:`SIZE`)."""
MIN_INLIERS = 30
"""Matches that must agree with one plane warp. An ORB descriptor (256 bits) is less
distinctive than a SIFT one: with SIFT 15 were asked; with ORB, 30 keep the clip-art false pairs
of ``benchmarks/verify_rules.py``'s half A near SIFT's (454 against 414) at the same tuning-family
recall (0.885 against 0.873)."""
REVERSE_INLIERS = 2 * MIN_INLIERS // 3
"""The pair is asked the other way round (the ratio test is not symmetric) only when this many
matches agreed with a warp the first way. On the 10,052 candidate pairs of
``benchmarks/verify_rules.py``, every pair the other way accepted and the first refused had 22 or
more agreeing the first way (median 66); the pairs under 20 were three in five of those asked."""
MAX_TURN = 30.0
"""Largest turn (degrees) of the warp, after a mirror about the vertical or horizontal axis."""
QUARTER_TURNS = True
"""Whether the matcher's rules (pairs with a photo in them) also take a warp that turns the
picture by a quarter, a half or three quarters (within :data:`MAX_TURN`, mirrored or not): a
photo shown on its side or upside down, because one copy lost or gained its orientation tag or
was turned by hand. :func:`plane_warp` (two graphics) keeps which way is up."""
FIT_PIXELS = 2048
"""The colour edit is fitted on at most this many of the compared pixels (an even spread); its
residuals are read on all of them."""
PHOTO_SIZE = 128
"""Long side, in px, of the colour comparison."""
OFF_LEVEL = 0.15
"""A pixel differs when a channel is off by more than this (0..1) after the colour edit."""
MAX_DIFFERING = 0.35
"""Largest share of the compared area that may differ (the overlay budget)."""
MAX_MOVED = 0.005
"""Largest share of the compared area in which *each* image holds content where the other is
plain: content on both sides (a clock's hands at two times, the pips of two cards, two flags'
stars) is a redrawing, while an overlay adds content on one side only (see
:func:`moved_share`)."""
MAX_REPAINTED = 0.02
"""Largest share of the compared area that differs in colour while both images keep its edges
(see :func:`repainted_share`): a fill painted another colour, another skin tone of an emoji."""
SAME_EDGES = 0.7
"""Correlation of the two images' edge strengths over a differing region (and a 2 px rim) from
which the region keeps its drawing and only its paint changed."""
INK_STD = 0.05
"""Local standard deviation of luma (0..1, 5 x 5 px at :data:`PHOTO_SIZE`) above which a pixel
holds content (an edge, a texture, a stroke)."""
PLAIN_STD = 0.02
"""Local standard deviation of luma under which a pixel is plain (background, a flat fill)."""
GAIN_RANGE = (1 / 3, 3.0)
"""Contrast gain of a global edit: the slope of the edited luma against the original's."""
MAX_CHROMA_GAIN = 3.0
"""Largest saturation gain of a global edit."""
MAX_HUE_TURN = 60.0
"""Largest hue turn (degrees) of a global edit; past it the named colours change (red turns
green, a channel swap is a 120-degree turn): the same drawing in other colours."""
MIN_LUMA_WEIGHT = -0.1
"""Smallest weight of one channel in the edited luma, relative to their sum."""
FEW_HUES = 2
"""A picture with this many distinct hues or fewer (see :func:`_hues`: clip art, emoji, a logo)
cannot tell a global tone edit from a redrawing in another lightness: with one skin colour and
greys, making the skin darker fits a contrast change. Its copies may turn their hue, change
saturation or turn grey, but must keep their contrast within :data:`FEW_HUES_GAIN`."""
FEW_HUES_GAIN = 0.35
"""Largest change of the contrast gain (from 1) of a copy of a picture with few hues."""
GREY_CHROMA = 0.1
"""A chroma gain under this is a conversion to grey (or sepia)."""
RIDGE = 0.05
"""Pull of the luma weights towards the standard ones (per pixel): decides ill-posed fits."""
MIN_CONTAINED = 0.9
"""Share of one picture that must lie inside the other under the warp. A copy is the other
picture cropped, resized, framed, padded or tilted: one of the two shows the other whole (a
crop lies inside its original, an original inside its padded or captioned copy). Two windows
onto one larger scene -- two tiles of one photo, a panned shot, the next frame of a video --
each show what the other lacks: another photo of the same place, a look-alike."""
FLAT_LEVELS = 2
"""A pixel is flat when its 3 x 3 neighbourhood spans at most this many grey levels (of 255)."""
MAX_FLAT = 0.45
"""A picture with more than this share of flat pixels (:func:`flat_share`) is a *graphic*:
clip art, an icon, a sign, a card, a drawing, a chart -- made of flat fills. The matcher decides
a pair only when at least one of its pictures is not a graphic (a photo, a painting, a textured
drawing). Graphics are drawn from templates: a deck's cards share their frame and corner
glyphs, warning signs their triangle, a set of puzzle pieces their outline and shading. Design
variants (the 5 of hearts and the 5 of diamonds, two signs, a smiley with and without a tear)
then share 30 and more keypoints under one warp and differ by less than an overlay, so
agreeing keypoints do not show that two graphics are one picture; between two photos they do.
Pairs of two graphics are left to the pixel alignment, which tolerates no local change (under its
own alignment or this matcher's warp: :func:`plane_warp`, :func:`dedupdask.match.warped_score`). Chosen
on the tuning families and clip-art half A of ``benchmarks/verify_rules.py``: packaged photos
and wallpapers have a median flat share of 0.1-0.2, Tux Paint stamps 0.58; up to 0.45 the
clip-art false pairs of half A stay near the pixel alignment's own (79 against 62; 463 when the
matcher decides every pair) while tuning recall goes from 0.626 to 0.741 (0.901 on every pair);
past it they grow (0.5: 90, 0.55: 106)."""
MIN_UNIFORM = 0.15
"""A graphic also has more than this share of *uniform* pixels, whose 3 x 3 neighbourhood is one
grey level (:func:`fill_shares`): fills are painted with one colour. A smooth gradient -- a sky,
a wallpaper, a studio backdrop, a vignette -- is flat (2 levels) nearly everywhere, yet hardly
ever uniform: it is a photo, and its copies are decided by the matcher like a photo's. Among the
pictures that are flat enough to be graphics, packaged wallpapers have a median uniform share of
0.09 and skimage's photos 0.05, Tux Paint stamps 0.51 and Openclipart drawings 0.67 (5 % of them
under 0.31). Checked on the replay of ``benchmarks/verify_rules.py`` (``--min-uniform``): 0.15
adds 32 asked clip-art pairs of 6,825 and no accepted false pair; 0.25 adds 16 false pairs on half A."""
_SEED = 12345

_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    np.float64,
)
_YCC_INV = np.linalg.inv(_YCC)


def _cv2() -> Any:
    import cv2

    cv2.setNumThreads(1)  # one pair at a time per task; Dask owns the parallelism
    return cv2


@dataclass
class KeypointMatch:
    """What the keypoint matcher found for one pair.

    Attributes
    ----------
    score : float
        See the module docstring; -1 when no plane warp has :data:`MIN_INLIERS` matches.
    inliers : int
        Matches agreeing with the best homography.
    mirrored : bool
        Whether the best homography includes a mirror.
    homography : ndarray or None
        3 x 3, mapping the second image's pixels (at :data:`SIZE`) to the first's.
    differing : float
        Share of the compared area that differs after the colour edit.
    moved : float
        :func:`moved_share` of the differing pixels (1 when the colour edit is not plausible:
        not measured).
    repainted : float
        :func:`repainted_share` of the differing pixels (likewise).
    flat, uniform : float
        The smaller flat and uniform shares of the two pictures (:func:`fill_shares`; over
        :data:`MAX_FLAT` and :data:`MIN_UNIFORM`: two graphics, not decided).
    contained : float
        The larger share of one picture that lies inside the other under the warp (under
        :data:`MIN_CONTAINED`: two windows onto one scene, score 0).
    colour : dict
        The fitted edit: ``form`` (``"chroma turn"``, ``"hue turn"`` or ``"toned"``, see
        :func:`colour_edit`),
        ``luma_gain``, ``monotone``, ``chroma_gain``, ``hue_degrees``, ``min_weight``, ``hues``
        (of the more colourful picture), and ``plausible`` (within the limits).
    """

    score: float
    inliers: int = 0
    mirrored: bool = False
    homography: np.ndarray | None = None
    differing: float = 1.0
    colour: dict[str, Any] | None = None
    moved: float = 1.0
    repainted: float = 1.0
    flat: float = 0.0
    uniform: float = 0.0
    contained: float = 0.0


def is_graphic(
    flat: Any, uniform: Any, *, max_flat: float = MAX_FLAT, min_uniform: float = MIN_UNIFORM
) -> Any:
    """Whether pictures with these :func:`fill_shares` are graphics (scalars or arrays): more
    than ``max_flat`` flat and ``min_uniform`` uniform pixels. A pair is two graphics when its
    smaller shares are (each bar must hold for both pictures).

    Examples
    --------
    >>> bool(is_graphic(0.9, 0.8)), bool(is_graphic(0.9, 0.02)), bool(is_graphic(0.3, 0.3))
    (True, False, False)
    """
    return np.logical_and(np.greater(flat, max_flat), np.greater(uniform, min_uniform))


def fill_shares(grey: np.ndarray) -> tuple[float, float]:
    """Shares of the pixels whose 3 x 3 neighbourhood spans at most :data:`FLAT_LEVELS` grey
    levels (flat) and exactly one level (uniform).

    Photos hold texture and noise nearly everywhere; graphics are made of fills of one colour
    (flat and uniform); a smooth gradient is flat but not uniform.

    Examples
    --------
    >>> from dedupdask.datasets import random_picture
    >>> card = np.full((96, 64), 255, np.uint8); card[20:40, 20:40] = 30  # a square on white
    >>> [round(v, 2) for v in fill_shares(card)]
    [0.97, 0.97]
    >>> sky = np.add.outer(np.arange(96) // 2, np.arange(64) // 2).astype(np.uint8) + 100
    >>> [round(v, 2) for v in fill_shares(sky)]  # a gradient: one level every 2 px
    [1.0, 0.0]
    >>> photo = np.asarray(random_picture(np.random.default_rng(0), (256, 192)).convert("L"))
    >>> fill_shares(photo)[0] < MAX_FLAT
    True
    """
    cv2 = _cv2()
    k = np.ones((3, 3), np.uint8)
    g = np.ascontiguousarray(grey, np.uint8)
    span = cv2.dilate(g, k) - cv2.erode(g, k)
    return float((span <= FLAT_LEVELS).mean()), float((span == 0).mean())


class Keypoints:
    """Grey image and ORB keypoints of one picture (computed on first use, kept per task).

    Parameters
    ----------
    rgb : ndarray
        uint8 ``[h, w, 3]``, long side about :data:`SIZE` px.
    features : dict, optional
        Features computed before (:meth:`all_features`), e.g. when the image was read.
    fills : (float, float), optional
        Its :func:`fill_shares`, when computed before.
    """

    def __init__(
        self,
        rgb: np.ndarray,
        features: dict[bool, Any] | None = None,
        fills: tuple[float, float] | None = None,
    ) -> None:
        self.rgb = np.ascontiguousarray(rgb)
        self._grey: np.ndarray | None = None
        self._fills = fills
        self._feats: dict[bool, tuple[np.ndarray, np.ndarray | None]] = dict(features or {})

    @property
    def grey(self) -> np.ndarray:
        if self._grey is None:
            self._grey = _cv2().cvtColor(self.rgb, _cv2().COLOR_RGB2GRAY)
        return self._grey

    @property
    def fills(self) -> tuple[float, float]:
        """:func:`fill_shares` of the picture: its flat and uniform shares."""
        if self._fills is None:
            self._fills = fill_shares(self.grey)
        return self._fills

    @property
    def flat(self) -> float:
        """Share of flat pixels (:func:`fill_shares`)."""
        return self.fills[0]

    @property
    def uniform(self) -> float:
        """Share of uniform pixels (:func:`fill_shares`)."""
        return self.fills[1]

    @property
    def graphic(self) -> bool:
        """Whether the picture is a graphic (more than :data:`MAX_FLAT` flat and
        :data:`MIN_UNIFORM` uniform): pairs of two are not decided."""
        return bool(is_graphic(self.flat, self.uniform))

    def features(self, mirrored: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Keypoint positions (of the mirrored image when asked) and binary descriptors."""
        if mirrored not in self._feats:
            cv2 = _cv2()
            g = np.ascontiguousarray(self.grey[:, ::-1]) if mirrored else self.grey
            # small patches and a low corner threshold: a 256 px picture, flat drawings included
            orb = cv2.ORB_create(nfeatures=N_FEATURES, edgeThreshold=15, patchSize=15, fastThreshold=10)
            kp, des = orb.detectAndCompute(g, None)
            pts = np.array([k.pt for k in kp], np.float32).reshape(-1, 2)
            self._feats[mirrored] = (pts, des)
        return self._feats[mirrored]

    def all_features(self) -> dict[bool, tuple[np.ndarray, np.ndarray | None]]:
        """The features of the image as is and mirrored (keyed by ``mirrored``), to keep with it.

        Examples
        --------
        >>> from dedupdask.datasets import random_picture
        >>> img = np.asarray(random_picture(np.random.default_rng(0), (256, 192)))
        >>> f = Keypoints(img).all_features()
        >>> sorted(f), f[False][1].shape[1]  # 32-byte binary descriptors
        ([False, True], 32)
        >>> k = Keypoints(img, f)  # seeded: nothing is computed again
        >>> k.features(True)[0] is f[True][0]
        True
        """
        return {m: self.features(m) for m in (False, True)}


def _homography(a: Keypoints, b: Keypoints, mirrors: bool = True) -> tuple[int, np.ndarray | None, bool]:
    """Most-supported homography mapping b onto a, over b as is and (with ``mirrors``) mirrored."""
    # numba: imported where pairs are matched, not with the package
    from .kernels import ratio_matches

    cv2 = _cv2()
    pa, da = a.features(False)
    best: tuple[int, np.ndarray | None, bool] = (0, None, False)
    if da is None or len(pa) < 4:
        return best
    for mirrored in (False, True) if mirrors else (False,):
        pb, db = b.features(mirrored)
        if db is None or len(pb) < 4:
            continue
        qi, ti = ratio_matches(db, da, RATIO)
        if len(qi) < MIN_INLIERS:
            continue  # the inliers are some of these matches: MIN_INLIERS cannot be reached
        src, dst = pb[qi], pa[ti]
        cv2.setRNGSeed(_SEED)  # RANSAC's sampling: the same pair always gets the same answer
        H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, RANSAC_PX, maxIters=2000, confidence=0.999)
        n = int(mask.sum()) if H is not None and mask is not None else 0
        if H is not None and n > best[0]:
            if mirrored:  # the points were found on b mirrored: undo the mirror first
                w = b.grey.shape[1]
                H = H @ np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            best = (n, H, mirrored)
        if best[0] >= 3 * MIN_INLIERS:
            break  # clearly aligned: the mirror cannot do better
    return best


def turn(H: np.ndarray, hw: tuple[int, int]) -> tuple[float, bool]:
    """How far a warp turns the picture at its centre (degrees) and whether it mirrors it.

    A mirror is taken about the vertical axis first, so a mirror about the horizontal axis
    (a vertical flip) is a mirror turned by 180 degrees.

    Examples
    --------
    >>> import cv2
    >>> R = np.vstack([cv2.getRotationMatrix2D((50, 40), 8, 1.2), [0, 0, 1]])
    >>> t, m = turn(R, (80, 100)); round(t), m
    (-8, False)
    >>> vflip = np.array([[1.0, 0, 0], [0, -1, 79], [0, 0, 1]])
    >>> t, m = turn(vflip, (80, 100)); round(abs(t)), m
    (180, True)
    """
    h, w = hw
    c = np.array([w / 2, h / 2])

    def at(p: np.ndarray) -> np.ndarray:
        q = H @ np.array([p[0], p[1], 1.0])
        return q[:2] / q[2]

    J = np.c_[(at(c + [1.0, 0]) - at(c - [1.0, 0])) / 2, (at(c + [0, 1.0]) - at(c - [0, 1.0])) / 2]
    mirrored = bool(np.linalg.det(J) < 0)
    if mirrored:
        J = J @ np.diag([-1.0, 1.0])
    return float(np.degrees(np.arctan2(J[1, 0], J[0, 0]))), mirrored


def _upright(H: np.ndarray, hw: tuple[int, int], quarter: bool = False) -> bool:
    """The warp keeps which way is up: a turn of at most :data:`MAX_TURN` degrees, after a mirror
    about either axis; with ``quarter``, after a turn by a quarter, a half or three quarters too
    (a photo stored on its side or upside down, :data:`QUARTER_TURNS`)."""
    t, mirrored = turn(H, hw)
    if quarter:
        return abs((t + 45.0) % 90.0 - 45.0) <= MAX_TURN
    return abs(t) <= MAX_TURN or (mirrored and abs(t) >= 180.0 - MAX_TURN)


def _sane(H: np.ndarray, a_hw: tuple[int, int], b_hw: tuple[int, int], quarter: bool = False) -> bool:
    """b's outline mapped into a is a convex quadrilateral of reasonable area, kept upright
    (:func:`_upright`)."""
    cv2 = _cv2()
    h, w = b_hw
    if not _upright(H, b_hw, quarter):
        return False
    q = cv2.perspectiveTransform(np.float32([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]]), H)
    if not np.isfinite(q).all() or not cv2.isContourConvex(q.reshape(-1, 2)):
        return False
    ratio = cv2.contourArea(q.reshape(-1, 2)) / max(w * h, 1)
    return 1 / 25 < ratio < 25


def _coverage(H: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> float:
    cv2 = _cv2()
    ones = np.ones(src_hw, np.uint8)
    return float(cv2.warpPerspective(ones, H, dst_hw[::-1], flags=cv2.INTER_NEAREST).mean())


def _covered(H: np.ndarray, a: Keypoints, b: Keypoints) -> tuple[float, float]:
    """Under the warp ``H`` (b onto a): the share of a's frame that b covers (a inside b) and
    the share of b's frame that a covers (b inside a)."""
    return _coverage(H, b.grey.shape, a.grey.shape), _coverage(np.linalg.inv(H), a.grey.shape, b.grey.shape)


def _hues(ycc: np.ndarray) -> int:
    """Distinct hues of a set of colours (``[n, 3]`` YCbCr): 30-degree hue sectors holding at
    least 3 % of the chromatic pixels (chroma over 0.04)."""
    cb, cr = ycc[:, 1], ycc[:, 2]
    m = cb * cb + cr * cr > 0.04**2
    if m.sum() < 50:
        return 0
    sector = (np.degrees(np.arctan2(cr[m], cb[m])) % 360 // 30).astype(np.int64)
    return int((np.bincount(sector, minlength=12) >= 0.03 * m.sum()).sum())


def _least_squares(*blocks: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Least-squares solution of the stacked rows ``A x = b`` from its normal equations.

    The colour fit has thousands of rows and a few unknowns (6 for luma, 4 for chroma): a system
    of that size is solved instead of a QR of the whole matrix (which costs over 100 ms a pair
    when LAPACK's threads compete with Dask's), giving the same minimum-norm solution.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A, x = rng.random((200, 4)), np.array([1.0, -2.0, 0.5, 3.0])
    >>> bool(np.allclose(_least_squares((A[:50], A[:50] @ x), (A[50:], A[50:] @ x)), x))
    True
    """
    m = sum(a.T @ a for a, _ in blocks)
    v = sum(a.T @ b for a, b in blocks)
    return np.linalg.lstsq(m, v, rcond=None)[0]


def _fitting(r: np.ndarray) -> np.ndarray:
    """The pixels that fit a global edit (``r``: each one's error): what is off by much more
    than most pixels is an overlay, trimmed before the edit is fitted again."""
    return r < max(2.5 * float(np.median(r)), 0.04)


def colour_edit(
    src: np.ndarray, dst: np.ndarray, *, signed: bool = False, min_hues: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``dst ~ edit(src)`` for a global tone/colour edit; per-pixel residual and the edit.

    ``src`` and ``dst`` are ``[n, 3]`` colours in 0..1 of the same pixels. The edit is fitted
    from the more colourful side to the other (colour cannot be told from grey), in three forms:
    a smooth luma with a turned and scaled chroma plane (from two starts), an editor's hue turn
    (:func:`_hue_turn`), and a toning (the same luma, chroma a line in the luma: sepia, a
    cyanotype; onto a side of at most :data:`FEW_HUES` hues); of the edits an editor makes, the
    one leaving fewest pixels off.

    Returns
    -------
    (ndarray, dict)
        The largest channel error of each pixel (with ``signed``: the ``[n, 3]`` error of each
        channel, edited minus target, in the direction the edit was fitted: ``edit["swapped"]``
        when it maps ``dst`` onto ``src``), and the edit (see :class:`KeypointMatch`). With
        ``min_hues``, a more colourful side of fewer hues is not fitted: the edit is then not
        plausible, and the error 1 everywhere.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((500, 3))
    >>> grey = np.repeat(x @ [[0.299], [0.587], [0.114]], 3, axis=1)
    >>> r, edit = colour_edit(x, grey)
    >>> bool(r.max() < 0.01), edit["plausible"]
    (True, True)
    >>> r, edit = colour_edit(x, x[:, ::-1])  # red and blue swapped: no editor's tone change
    >>> bool(np.median(r) > 0.05) or not edit["plausible"]
    True
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    X, T = src @ _YCC.T, dst @ _YCC.T
    from .kernels import chroma_spread

    swap = chroma_spread(T) > chroma_spread(X)  # the chroma of each side
    if swap:
        src, dst, X, T = dst, src, T, X
    hues = _hues(X)
    if hues < min_hues:
        return (np.ones_like(dst) if signed else np.ones(len(dst))), {"plausible": False, "hues": hues, "swapped": bool(swap)}
    n = len(X)
    Y, Cb, Cr = X[:, 0], X[:, 1], X[:, 2]
    sample = np.arange(0, n, max(1, -(-n // FIT_PIXELS)))  # the pixels the edit is fitted on, evenly
    ns = len(sample)
    # The edited colour is linear in the parameters p = (g, d_r, d_g, d_b, h, o | u, v, t_b, t_r):
    # luma' = g Y + d . rgb + h Y^2 + o;  (Cb', Cr') = (u Cb - v Cr + t_b, u Cr + v Cb + t_r);
    # so rgb' = F @ (P(p) @ YCC_INV.T) with F = [Y, rgb, Y^2, 1, Cb, Cr].
    F = np.empty((n, 8))
    F[:, 0], F[:, 1:4], F[:, 4], F[:, 5], F[:, 6], F[:, 7] = Y, src, Y * Y, 1.0, Cb, Cr
    Fs, dst_s, Ts = F[sample], dst[sample], T[sample]
    # The luma and chroma parameters are fitted apart (their least-squares system is block
    # diagonal); the chroma rows are the Cb rows [Cb, -Cr, 1, 0] and the Cr rows [Cr, Cb, 0, 1].
    lu = Fs[:, :6]
    cb = np.zeros((ns, 4))
    cb[:, 0], cb[:, 1], cb[:, 2] = Fs[:, 6], -Fs[:, 7], 1.0
    cr = np.zeros((ns, 4))
    cr[:, 0], cr[:, 1], cr[:, 3] = Fs[:, 7], Fs[:, 6], 1.0
    ridge = np.zeros((3, 6))
    ridge[0, 1] = ridge[1, 2] = ridge[2, 3] = np.sqrt(RIDGE * ns)

    def edited(p: np.ndarray, f: np.ndarray) -> np.ndarray:
        """The colours of the rows ``f`` of F under the edit ``p``."""
        P = np.zeros((8, 3))
        P[:6, 0] = p[:6]
        P[5, 1:] = p[8:10]
        P[6:, 1:] = [[p[6], p[7]], [-p[7], p[6]]]
        return np.clip(f @ (P @ _YCC_INV.T), 0.0, 1.0)

    def trimmed(
        keep: np.ndarray, chroma: Callable[[np.ndarray], np.ndarray], colours: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fit on the sample (the luma, then the chroma's parameters ``chroma(keep)``), trim what
        does not fit (overlays), refit; the edit ``p``, whose colours of the rows ``f`` of F are
        ``colours(p, f)``, and each sample pixel's largest channel error under it."""
        p, r = np.zeros(10), np.ones(ns)
        for _ in range(4):
            if keep.sum() < 10:
                break
            p[:6] = _least_squares((lu[keep], Ts[keep, 0]), (ridge, np.zeros(3)))
            p[6:] = chroma(keep)
            r = _worst_channel(colours(p, Fs) - dst_s)
            keep = _fitting(r)
        return p, r

    def fit(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chroma plane turned (:func:`trimmed`); residuals of every pixel, and which fit."""
        p, _ = trimmed(keep, lambda k: _least_squares((cb[k], Ts[k, 1]), (cr[k], Ts[k, 2])), edited)
        r = _worst_channel(edited(p, F) - dst)
        return p, r, _fitting(r)

    # Two starts: every pixel (an edit of the whole picture), and the pixels that did not change
    # (an overlay on an unedited copy: a frame or an inset in a new colour over a large share
    # would otherwise pull the first fit before trimming can drop it). Of the fits whose edit is
    # one an editor makes, the one leaving fewer pixels off is kept.
    fits = [fit(np.ones(ns, bool))]
    unchanged = _worst_channel(src[sample] - dst_s) <= OFF_LEVEL
    if unchanged.sum() >= max(10, 0.2 * ns) and (fits[0][1] > OFF_LEVEL).any():
        fits.append(fit(unchanged))
    grey_range = tuple(np.quantile(Y, [0.02, 0.98])) if n else (0.0, 1.0)
    # (each pixel's largest error, the edit, its signed errors: computed only for the one kept)
    found: list[tuple[np.ndarray, dict[str, Any], Callable[[], np.ndarray]]] = [
        (r, _describe(p, keep, Y, src, hues, swap, grey_range), lambda p=p: edited(p, F) - dst)
        for p, r, keep in fits
    ]
    d, turned = _hue_turn(src, dst, sample, hues, swap)
    found.append((_worst_channel(d), turned, lambda d=d: d))
    if hues > FEW_HUES and _hues(T) <= FEW_HUES:
        # toned: made grey, then tinted along its grey levels (sepia, a cyanotype, a tint);
        # a toned picture is a ramp of one tint, of two hues at most (the ramp's ends)
        yt = np.stack([Fs[:, 0], np.ones(ns)], axis=1)

        def toned(q: np.ndarray, f: np.ndarray) -> np.ndarray:
            luma, y = f[:, :6] @ q[:6], f[:, 0]  # the chroma a line in the source's luma
            return np.clip(np.stack([luma, q[6] * y + q[7], q[8] * y + q[9]], axis=1) @ _YCC_INV.T, 0.0, 1.0)

        def tint(k: np.ndarray) -> np.ndarray:
            return np.r_[_least_squares((yt[k], Ts[k, 1])), _least_squares((yt[k], Ts[k, 2]))]

        q, r_s = trimmed(np.ones(ns, bool), tint, toned)
        # kept only when it may explain as many pixels as every other form, an editor's or not
        if float((r_s > OFF_LEVEL).mean()) <= min(float((f[0] > OFF_LEVEL).mean()) for f in found):
            d = toned(q, F) - dst
            r = _worst_channel(d)
            # described with no chroma plane: chroma gain 0, the source's colours dropped
            tone = _describe(np.r_[q[:6], 0.0, 0.0, 0.0, 0.0], _fitting(r), Y, src, hues, swap, grey_range)
            tone["form"] = "toned"
            found.append((r, tone, lambda d=d: d))
    r, edit, errors = min(  # plausible first, then fewer pixels off, then closer
        found, key=lambda f: (not f[1]["plausible"], float((f[0] > OFF_LEVEL).mean()), float(f[0].mean()))
    )
    if signed:
        edit["swapped"] = bool(swap)
        return errors(), edit
    return r, edit


CURVE_BINS = 32
"""Source levels per channel at which :func:`channel_curves` reads its curves."""


def _monotone(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing curve ``y ~ f(x)`` of least squares over the pixels ``keep``, read at
    :data:`CURVE_BINS` levels of ``x`` (0..1): each level's mean ``x`` and its fitted ``y``, the
    level means pooled where they fall (pool-adjacent-violators)."""
    level = np.minimum((x * CURVE_BINS).astype(np.int64), CURVE_BINS - 1)[keep]
    n = np.bincount(level, minlength=CURVE_BINS).astype(np.float64)
    sx = np.bincount(level, weights=x[keep], minlength=CURVE_BINS)
    sy = np.bincount(level, weights=y[keep], minlength=CURVE_BINS)
    at = n > 0
    blocks: list[list[float]] = []  # [sum of y, weight, levels pooled]
    for total, weight in zip(sy[at], n[at], strict=True):
        blocks.append([total, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            t, w, k = blocks.pop()
            blocks[-1][0] += t
            blocks[-1][1] += w
            blocks[-1][2] += k
    fitted = np.repeat([t / w for t, w, _ in blocks], [k for _, _, k in blocks])
    return sx[at] / n[at], fitted


def channel_curves(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``dst ~ curves(src)``: one non-decreasing curve per channel, as an editor's curves
    and levels, auto-tone and histogram equalization (Pillow's equalizes each channel on its
    own) or an app's filter make them; the signed per-pixel error and the edit.

    The pixel alignment's second global colour edit, beside :func:`colour_edit`, whose smooth
    luma (a square term) and turned chroma plane do not follow a steep or stepped curve. Fitted
    from the more colourful side to the other, on the pixels that fit (an overlay is trimmed,
    as there). Plausible only when the more colourful side has more than :data:`FEW_HUES`
    hues: three free curves recolour a drawing of one fill into any lighter, darker or
    warmer one (another skin tone), while a photo's many colours must all follow the same three
    curves (the pixel alignment also leaves out any pair with a graphic in it, whose few fills
    three curves map onto another palette: :func:`dedupdask.match._a_graphic`). Each curve
    must rise across the source channel's 2-98 % range by a gain in :data:`GAIN_RANGE` (no
    channel crushed flat or turned into a mask), and the curves may turn
    the coloured pixels' hue by :data:`MAX_HUE_TURN` at most (median): past it the named colours
    change, as in a wallpaper's colour series (its warm, cold and radioactive versions).

    Returns
    -------
    (ndarray, dict)
        The ``[n, 3]`` error (edited minus target, in the direction fitted) and the edit:
        ``form`` "channel curves", ``plausible``, ``hues``, ``swapped`` (fitted from ``dst``
        onto ``src``), ``gains`` (each channel's rise over its 2-98 % range) and
        ``hue_degrees`` (the median hue turn).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((4000, 3))
    >>> d, edit = channel_curves(x, np.sqrt(x) * [1.0, 0.9, 0.8])  # gamma, then a warm cast
    >>> edit["form"], edit["plausible"], bool(np.quantile(np.abs(d), 0.99) < 0.05)
    ('channel curves', True, True)
    >>> d, edit = channel_curves(x, x[:, ::-1])  # red and blue swapped: no curve explains it
    >>> bool(np.median(np.abs(d)) > 0.1)
    True
    """
    from .kernels import chroma_spread

    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    X, T = src @ _YCC.T, dst @ _YCC.T
    swap = chroma_spread(T) > chroma_spread(X)
    if swap:
        src, dst, X = dst, src, T
    hues = _hues(X)
    curves: list[tuple[np.ndarray, np.ndarray]] = []
    n = len(src) if hues > FEW_HUES else 0  # a drawing of few hues: not fitted (see above)
    sample = np.arange(0, n, max(1, -(-n // FIT_PIXELS)))
    xs, ys = src[sample], dst[sample]
    keep = np.ones(len(sample), bool)
    for _ in range(3):  # fit, trim what does not fit (an overlay), refit
        if keep.sum() < 10:
            break
        curves = [_monotone(xs[:, c], ys[:, c], keep) for c in range(3)]
        edited = np.stack([np.interp(xs[:, c], *curves[c]) for c in range(3)], axis=1)
        r = _worst_channel(edited - ys)
        keep = _fitting(r)
    if not curves:
        return np.ones_like(dst), {"form": "channel curves", "plausible": False, "hues": hues, "swapped": bool(swap)}
    gains = []
    for c in range(3):
        lo, hi = np.quantile(src[:, c], [0.02, 0.98])
        rise = float(np.interp(hi, *curves[c]) - np.interp(lo, *curves[c]))
        gains.append(rise / float(hi - lo) if hi - lo > 0.05 else 1.0)
    out = np.stack([np.interp(src[:, c], *curves[c]) for c in range(3)], axis=1)
    degrees = _hue_moved(src[sample], out[sample])
    edit = {"form": "channel curves", "hues": hues, "swapped": bool(swap), "gains": gains, "hue_degrees": degrees,
            "plausible": bool(hues > FEW_HUES and all(GAIN_RANGE[0] <= g <= GAIN_RANGE[1] for g in gains)
                              and degrees <= MAX_HUE_TURN)}  # fmt: skip
    return out - dst, edit


def _hue_moved(src: np.ndarray, out: np.ndarray) -> float:
    """Median turn (degrees, unsigned) of the hexagon hue of the pixels that are coloured in
    both ``[n, 3]`` sets: how far channel curves moved the named colours."""
    from .kernels import hsv

    hs, ss, vs = hsv(src)
    ho, so, vo = hsv(out)
    both = (ss > 0.15) & (vs > 0.15) & (so > 0.15) & (vo > 0.15)
    if both.sum() < 10:
        return 0.0
    return float(np.median(np.abs((ho[both] - hs[both] + 3.0) % 6.0 - 3.0)) * 60.0)


def _hue_turn(
    src: np.ndarray, dst: np.ndarray, sample: np.ndarray, hues: int, swap: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """The hue slider of an editor: every colour's hexagon hue turned by one angle, its
    saturation scaled, its value (the largest channel) through one gain and offset, fitted
    robustly on ``sample`` (medians; the value's line refitted on the pixels it fits). This is
    how editors turn a hue (HSV and HSL turn it alike: the largest and smallest channel are
    kept), which the linear turn of the chroma plane in :func:`colour_edit` only approximates
    for saturated colours. In a picture of :data:`FEW_HUES` hues or fewer, its value and
    saturation alone make another skin tone of an emoji, so there only the slider itself is
    taken: the hue turned, saturation and value kept (their gains within :data:`FEW_HUES_GAIN`
    of 1, the value's offset within it of 0). A photo of one or two hues whose hue was
    turned (a lamp's glow, a red coat) is then read as one (matcher /22; before, only the chroma
    turn was fitted to it, whose error on saturated colours read as repainting). Returns the
    ``[n, 3]`` error (edited minus ``dst``) and the edit."""
    from .kernels import from_hsv, hsv

    hs, ss, vs = hsv(src)
    hd, sd, vd = hsv(dst)
    i = sample
    chromatic = i[(ss[i] > 0.15) & (vs[i] > 0.15) & (sd[i] > 0.05) & (vd[i] > 0.15)]
    if len(chromatic) < 10:
        return np.ones_like(dst), {"form": "hue turn", "plausible": False, "hues": hues}
    turn = (hd[chromatic] - hs[chromatic] + 3.0) % 6.0 - 3.0
    centre = float(np.angle(np.exp(1j * np.pi / 3 * turn).mean()) * 3 / np.pi)  # circular mean
    turn = float(np.median((turn - centre + 3.0) % 6.0 - 3.0) + centre)
    sat = float(np.median(sd[chromatic] / ss[chromatic]))
    keep = np.ones(len(i), bool)
    gain, offset = 1.0, 0.0
    for _ in range(3):
        if keep.sum() < 10:
            break
        A = np.stack([vs[i][keep], np.ones(int(keep.sum()))], axis=1)
        gain, offset = (float(v) for v in _least_squares((A, vd[i][keep])))
        err = np.abs(gain * vs[i] + offset - vd[i])
        keep = _fitting(err)
    out = from_hsv((hs + turn) % 6.0, np.clip(sat * ss, 0.0, 1.0), np.clip(gain * vs + offset, 0.0, 1.0))
    degrees = turn * 60.0
    g = 1 / gain if swap and gain > 1e-6 else gain
    edit = {"form": "hue turn", "luma_gain": g, "monotone": bool(gain > 0), "chroma_gain": sat,
            "hue_degrees": degrees, "min_weight": 0.0, "hues": hues}  # fmt: skip
    # the limits of the other form; in a picture of few hues, the slider alone (see above)
    edit["plausible"] = bool(
        GAIN_RANGE[0] <= g <= GAIN_RANGE[1] and gain > 0 and sat <= MAX_CHROMA_GAIN and abs(degrees) <= MAX_HUE_TURN
        and (hues > FEW_HUES or max(abs(gain - 1), abs(sat - 1), abs(offset)) <= FEW_HUES_GAIN)
    )
    return out - dst, edit


def _worst_channel(diff: np.ndarray) -> np.ndarray:
    """The largest absolute channel difference of each ``[n, 3]`` row (three column maxima: an
    ``axis=1`` reduction over 3 values is over ten times slower on 16k rows)."""
    e = np.abs(diff)
    return np.maximum(np.maximum(e[:, 0], e[:, 1]), e[:, 2])


def _describe(
    p: np.ndarray,
    keep: np.ndarray,
    Y: np.ndarray,
    src: np.ndarray,
    hues: int,
    swap: bool,
    grey_range: tuple[float, float],
) -> dict[str, Any]:
    """The fitted edit's parameters, and whether an editor makes it (see :class:`KeypointMatch`);
    ``grey_range`` is the 2-98 % range of the source luma, along which luma must keep rising."""
    g, h = p[0], p[4]
    w = g * _YCC[0] + p[1:4]
    total = float(w.sum())
    lo, hi = grey_range
    grey_slopes = [total + 2 * h * lo, total + 2 * h * hi]  # along the grey axis
    rows = keep if keep.sum() >= 10 else slice(None)
    y_in = Y[rows]
    fitted = g * y_in + src[rows] @ p[1:4] + h * y_in * y_in + p[5]
    var = float(y_in.var())
    gain = float(((y_in - y_in.mean()) * (fitted - fitted.mean())).mean() / var) if var > 1e-6 else 1.0
    if swap:  # the edit went the other way
        gain = 1 / gain if gain > 1e-6 else -1.0
    edit = {
        "form": "chroma turn",
        "luma_gain": gain,
        "monotone": bool(min(grey_slopes) > 0),
        "chroma_gain": float(np.hypot(p[6], p[7])),
        "hue_degrees": float(np.degrees(np.arctan2(p[7], p[6]))),
        "min_weight": float(w.min() / total) if abs(total) > 1e-6 else -1.0,
    }
    edit["hues"] = hues
    relit = abs(gain - 1) > FEW_HUES_GAIN and edit["chroma_gain"] >= GREY_CHROMA
    edit["plausible"] = bool(
        GAIN_RANGE[0] <= gain <= GAIN_RANGE[1]
        and edit["monotone"]
        and edit["chroma_gain"] <= MAX_CHROMA_GAIN
        and (abs(edit["hue_degrees"]) <= MAX_HUE_TURN or edit["chroma_gain"] < GREY_CHROMA)
        and edit["min_weight"] >= MIN_LUMA_WEIGHT
        and not (relit and edit["hues"] <= FEW_HUES)
    )
    return edit


def _local_std(grey: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    m = cv2.blur(grey, (5, 5))
    return np.sqrt(np.maximum(cv2.blur(grey * grey, (5, 5)) - m * m, 0.0))


def moved_share(a: np.ndarray, b: np.ndarray, off: np.ndarray, mask: np.ndarray) -> float:
    """Content each image holds where the other is plain, in the differing regions: the smaller side.

    Each connected region of differing pixels (``off``) is given to the image that holds more
    content (:data:`INK_STD`) there where the other is plain (:data:`PLAIN_STD`): a watermark, a
    caption, a sticker or an inset belongs to the copy, a frame over the picture to the original
    (its content is covered by plain paint), and content over content to neither. Overlays put
    every region on one side; a redrawing (hands of a clock at another time, the pips of another
    card) puts regions on both.

    Parameters
    ----------
    a, b : ndarray
        ``[h, w, 3]`` float colours in 0..1 of the two images, aligned.
    off, mask : ndarray
        ``[h, w]``: the differing pixels, and the compared area.

    Returns
    -------
    float
        Area of the regions given to the image with fewer of them, over the compared area.

    Examples
    --------
    >>> a = np.ones((64, 64, 3), np.float32)
    >>> a[10:20, 10:20] = 0  # a square on a plain background
    >>> b = a.copy(); b[40:50, 40:50] = 0  # the same with a square added: an overlay
    >>> off = np.zeros((64, 64), np.uint8); off[38:52, 38:52] = 1
    >>> moved_share(a, b, off, np.ones((64, 64), bool))
    0.0
    >>> c = np.ones_like(a); c[40:50, 40:50] = 0  # the square moved: a redrawing
    >>> off[8:22, 8:22] = 1
    >>> round(moved_share(a, c, off, np.ones((64, 64), bool)), 3)
    0.048
    """
    cv2 = _cv2()
    luma = np.asarray(_YCC[0], np.float32)
    sa, sb = _local_std(a @ luma), _local_std(b @ luma)
    n, labels = cv2.connectedComponents(off.astype(np.uint8), connectivity=8)
    if n <= 1:
        return 0.0
    lab = labels.ravel()
    only_a = np.bincount(lab, ((sa > INK_STD) & (sb < PLAIN_STD)).ravel(), minlength=n)[1:]
    only_b = np.bincount(lab, ((sb > INK_STD) & (sa < PLAIN_STD)).ravel(), minlength=n)[1:]
    size = np.bincount(lab, minlength=n)[1:]
    side_a = float(size[only_a > only_b].sum())
    side_b = float(size[only_b > only_a].sum())
    return min(side_a, side_b) / max(int(mask.sum()), 1)


def repainted_share(a: np.ndarray, b: np.ndarray, off: np.ndarray, mask: np.ndarray) -> float:
    """Differing regions whose edges both images keep: the share of the compared area repainted.

    For each connected region of ``off`` (with a 2 px rim, inside ``mask``), the edge strengths
    (luma gradient magnitudes) of the two images are correlated. An overlay, a caption, an inset
    or a frame brings edges of its own and covers the picture's, so the correlation is low; a
    region painted another colour keeps the drawing's outline and shading, and the correlation
    is :data:`SAME_EDGES` or more.

    Parameters
    ----------
    a, b : ndarray
        ``[h, w, 3]`` float colours in 0..1 of the two images, aligned.
    off, mask : ndarray
        ``[h, w]``: the differing pixels, and the compared area.

    Returns
    -------
    float
        Area of the repainted regions over the compared area.

    Examples
    --------
    >>> a = np.ones((64, 64, 3), np.float32)
    >>> a[16:48, 16:48] = 0.2  # a dark square with a white dot
    >>> a[30:34, 30:34] = 1.0
    >>> b = a.copy(); b[16:48, 16:48, 0] = 0.9; b[30:34, 30:34] = 1.0  # painted red, same drawing
    >>> off = np.zeros((64, 64), np.uint8); off[16:48, 16:48] = 1; off[30:34, 30:34] = 0
    >>> round(repainted_share(a, b, off, np.ones((64, 64), bool)), 3)
    0.246
    >>> c = a.copy(); c[20:44, 20:44] = (1.0, 0.8, 0.0); c[26:38, 26:38] = 0.0  # a sticker on it
    >>> off2 = np.zeros((64, 64), np.uint8); off2[20:44, 20:44] = 1
    >>> repainted_share(a, c, off2, np.ones((64, 64), bool))
    0.0
    """
    cv2 = _cv2()
    n, labels = cv2.connectedComponents(off.astype(np.uint8), connectivity=8)
    if n <= 1:
        return 0.0
    luma = np.asarray(_YCC[0], np.float32)

    def edges(x: np.ndarray) -> np.ndarray:
        y = np.ascontiguousarray(x @ luma, np.float32)
        return np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0), cv2.Sobel(y, cv2.CV_32F, 0, 1)).ravel().astype(np.float64)

    ea, eb = edges(a), edges(b)
    rim = cv2.dilate(labels.astype(np.float32), np.ones((5, 5), np.uint8)).astype(np.int64)
    rim[~mask] = 0  # each region with its rim (a rim shared by two regions goes to the later one)
    lab = rim.ravel()

    def total(w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(lab, w, minlength=n)[1:]

    cnt = np.maximum(total(), 1.0)
    ma, mb = total(ea) / cnt, total(eb) / cnt
    cov = total(ea * eb) / cnt - ma * mb
    var = (total(ea * ea) / cnt - ma * ma) * (total(eb * eb) / cnt - mb * mb)
    corr = cov / np.sqrt(np.maximum(var, 1e-12))
    size = np.bincount(labels.ravel(), minlength=n)[1:]
    return float(size[corr >= SAME_EDGES].sum() / max(int(mask.sum()), 1))


def _compare(
    a: Keypoints, b: Keypoints, H: np.ndarray, in_frame_of_a: bool
) -> tuple[float, dict[str, Any], float, float]:
    """Differing share, colour edit, moved and repainted shares of b warped by H onto a, in the
    frame of a or of b (the better covered one, which the caller measured)."""
    cv2 = _cv2()
    frame, other, M = (a, b, H) if in_frame_of_a else (b, a, np.linalg.inv(H))
    h, w = frame.grey.shape
    s = PHOTO_SIZE / max(h, w)
    W, Hh = max(8, round(w * s)), max(8, round(h * s))
    M = np.diag([W / w, Hh / h, 1.0]) @ M
    warped = cv2.warpPerspective(other.rgb, M, (W, Hh), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.ones(other.grey.shape, np.uint8), M, (W, Hh), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    if mask.sum() < 100:
        return 1.0, {"plausible": False}, 1.0, 1.0
    f = cv2.resize(frame.rgb, (W, Hh), interpolation=cv2.INTER_AREA)
    A = cv2.GaussianBlur(f.astype(np.float32) / 255, (0, 0), 1.0)
    B = cv2.GaussianBlur(warped.astype(np.float32) / 255, (0, 0), 1.0)
    r, edit = colour_edit(B[mask], A[mask])
    off = np.zeros(mask.shape, np.uint8)
    off[mask] = r > OFF_LEVEL
    off = cv2.morphologyEx(off, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    off[~mask] = 0
    if not edit["plausible"]:
        return float(off[mask].mean()), edit, 1.0, 1.0  # refused already: the shares are not measured
    return float(off[mask].mean()), edit, moved_share(A, B, off, mask), repainted_share(A, B, off, mask)


def rule_score(
    differing: Any,
    moved: Any,
    inliers: Any,
    repainted: Any = 0.0,
    *,
    max_differing: float = MAX_DIFFERING,
    max_moved: float = MAX_MOVED,
    max_repainted: float = MAX_REPAINTED,
) -> Any:
    """The score of a warp whose colour edit is plausible (scalars or arrays).

    ``1 - 0.1 * max(differing / max_differing, moved / max_moved, repainted / max_repainted,
    MIN_INLIERS / inliers)``: 0.9 or more exactly when every budget holds. The budgets are
    parameters so that ``benchmarks/verify_rules.py`` can replay other ones on recorded matches.

    Examples
    --------
    >>> round(float(rule_score(0.0, 0.0, 2 * MIN_INLIERS)), 3)
    0.95
    >>> bool(rule_score(MAX_DIFFERING, 0.0, MIN_INLIERS) >= 0.9)
    True
    >>> bool(rule_score(0.0, 2 * MAX_MOVED, 100) >= 0.9)
    False
    >>> bool(rule_score(0.1, 0.0, 100, 2 * MAX_REPAINTED) >= 0.9)
    False
    """
    with np.errstate(divide="ignore"):
        worst = np.maximum.reduce(
            [
                np.divide(differing, max_differing),
                np.divide(moved, max_moved),
                np.divide(repainted, max_repainted),
                np.divide(MIN_INLIERS, inliers),
            ]
        )
    return 1.0 - 0.1 * worst


def match_keypoints(
    a: Keypoints,
    b: Keypoints,
    *,
    max_flat: float = MAX_FLAT,
    min_uniform: float = MIN_UNIFORM,
    min_contained: float = MIN_CONTAINED,
) -> KeypointMatch:
    """Whether ``b`` is ``a`` warped, recoloured and partly overlaid (or the reverse).

    Parameters
    ----------
    a, b : Keypoints
        The two pictures (long side about :data:`SIZE` px).
    max_flat, min_uniform : float
        When both pictures have larger flat and uniform shares (:func:`fill_shares`: two
        graphics), the pair is not decided here: score -1 (see :data:`MAX_FLAT` and
        :data:`MIN_UNIFORM`; ``max_flat=1`` decides every pair).
    min_contained : float
        A warp under which neither picture lies this much inside the other scores 0 (see
        :data:`MIN_CONTAINED`; 0 measures every warp's colours and overlay).

    Returns
    -------
    KeypointMatch

    Examples
    --------
    >>> from dedupdask.datasets import random_picture
    >>> rng = np.random.default_rng(3)
    >>> img = np.asarray(random_picture(rng, (256, 192)))
    >>> import cv2
    >>> turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((128, 96), 7, 1.1), (256, 192))
    >>> grey = np.repeat(cv2.cvtColor(turned, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    >>> m = match_keypoints(Keypoints(img), Keypoints(grey))
    >>> m.score >= 0.9, m.inliers >= 15
    (True, True)
    >>> other = np.asarray(random_picture(rng, (256, 192)))
    >>> match_keypoints(Keypoints(img), Keypoints(other)).score < 0.9
    True
    >>> card = np.full((192, 256, 3), 255, np.uint8); card[40:150, 60:200] = (200, 30, 30)
    >>> m = match_keypoints(Keypoints(card), Keypoints(card[:, ::-1].copy()))
    >>> m.score, m.flat > MAX_FLAT  # two graphics: left to the pixel alignment (match.warped_score)
    (-1.0, True)
    """
    flat, uniform = min(a.flat, b.flat), min(a.uniform, b.uniform)
    if is_graphic(flat, uniform, max_flat=max_flat, min_uniform=min_uniform):  # both pictures
        return KeypointMatch(-1.0, flat=flat, uniform=uniform)
    first = _match_one_way(a, b, min_contained)
    first.flat, first.uniform = flat, uniform
    if first.score >= 0.9:
        return first  # every rule holds this way (see rule_score)
    if first.inliers < REVERSE_INLIERS:
        return first  # too few matches agree this way for the other way to reach MIN_INLIERS
    # the ratio test and the colour fit are not symmetric: the same pair, asked the other way,
    # may find the warp; the answer must not depend on which image is "from"
    back = _match_one_way(b, a, min_contained)
    if back.score <= first.score:
        return first
    if back.homography is not None:
        back.homography = np.linalg.inv(back.homography)
    back.flat, back.uniform = flat, uniform
    return back


def plane_warp(
    a: Keypoints, b: Keypoints, *, min_contained: float = MIN_CONTAINED, mirrors: bool = True
) -> KeypointMatch | None:
    """The geometry alone: a plane warp of b onto a that :data:`MIN_INLIERS` keypoints agree
    with, upright, under which one picture lies at least ``min_contained`` inside the other;
    None when there is none. Colours and content are not compared: the caller does (for two
    graphics, :mod:`dedupdask.match` compares their pixels under the warp as strictly as under
    its own alignment). ``mirrors=False``: warps without a mirror only.

    Returns
    -------
    KeypointMatch or None
        ``score`` -1 (not decided), with ``inliers``, ``mirrored``, ``homography`` (b onto a,
        at :data:`SIZE`) and ``contained``.

    Examples
    --------
    >>> import cv2
    >>> from dedupdask.datasets import random_picture
    >>> img = np.asarray(random_picture(np.random.default_rng(3), (256, 192)))
    >>> turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((128, 96), 6, 1.15), (256, 192))
    >>> w = plane_warp(Keypoints(img), Keypoints(turned))
    >>> w.inliers >= MIN_INLIERS, round(turn(w.homography, (192, 256))[0])  # b turned back onto a
    (True, 6)
    """
    n, H, mirrored = _homography(a, b, mirrors)
    if H is None or n < MIN_INLIERS or not _sane(H, a.grey.shape, b.grey.shape):
        if n >= REVERSE_INLIERS:  # the ratio test is not symmetric: ask the other way too
            n2, H2, m2 = _homography(b, a, mirrors)
            if H2 is not None and n2 >= MIN_INLIERS and _sane(H2, b.grey.shape, a.grey.shape):
                n, H, mirrored = n2, np.linalg.inv(H2), m2
        if H is None or n < MIN_INLIERS or not _sane(H, a.grey.shape, b.grey.shape):
            return None
    contained = max(_covered(H, a, b))
    if contained < min_contained:
        return None
    return KeypointMatch(-1.0, n, mirrored, H, contained=contained)


def _match_one_way(a: Keypoints, b: Keypoints, min_contained: float = MIN_CONTAINED) -> KeypointMatch:
    n, H, mirrored = _homography(a, b)
    if H is None or n < MIN_INLIERS or not _sane(H, a.grey.shape, b.grey.shape, QUARTER_TURNS):
        return KeypointMatch(-1.0, n, mirrored, H)
    covered_a, covered_b = _covered(H, a, b)
    contained = max(covered_a, covered_b)
    if contained < min_contained:
        return KeypointMatch(0.0, n, mirrored, H, contained=contained)
    differing, edit, moved, repainted = _compare(a, b, H, in_frame_of_a=covered_a >= covered_b)
    if not edit.get("plausible", False):
        score = 0.0
    else:
        score = float(rule_score(differing, moved, n, repainted))
    return KeypointMatch(float(score), n, mirrored, H, differing, edit, moved, repainted, contained=contained)
