"""Matcher: is one image an edited copy of the other? (the pixel check of verification)

A candidate pair (two images whose descriptors are close but not close enough to be sure) is
scored by two matchers, and the better score counts (:func:`score_views`):

- the **pixel alignment** below: one image is the other after a resize, a recompression, a
  brightness change, a horizontal flip and/or a crop, with pixels that agree *everywhere*
  after the alignment (look-alikes -- two clocks showing different times, the same arrow in
  two colours, two wood textures -- differ somewhere). Cheap, and the strictest; a pair it
  scores ``early_accept`` or more is not looked at again;
- the **keypoint matcher** (:mod:`dedupdask.match_keypoints`): the same picture under any
  plane warp (rotation, perspective, aspect, crop, padding, frame, flips), a global colour
  edit (greyscale, sepia, hue, saturation, tone) and an overlay on at most 35 % of it
  (watermark, caption, logo, inset, border) -- for pairs in which at least one picture is
  not a graphic (:data:`~dedupdask.match_keypoints.MAX_FLAT` and ``MIN_UNIFORM``: two cards of
  a deck or two signs share their template's keypoints, two photos do not);
- for a pair of two graphics instead, the pixel alignment's residuals under the keypoint
  matcher's plane warp (:func:`warped_score`): a turned, stretched or slanted copy of a drawing,
  compared as strictly as under the pixel alignment's own alignment;
- when none of these reaches ``early_accept``, the pixel alignment's residuals under an affine
  warp found from the grey pixels themselves (:func:`turned_record`: ECC started from the
  pixel alignment's placement): a copy turned by up to :data:`MAX_DENSE_TURN` degrees that is
  too plain for keypoints (an object on white, a smooth wallpaper). The warp must be a turn
  with a resize, no stretch or slant (:func:`_unturned`: one object fits another of other
  proportions, one smooth picture another, with them), unmirrored, one picture inside the other;
  a copy turned farther (up to :data:`MAX_FAR_TURN`) is read the same way from the turn its
  spectra give (:func:`far_turned_record`), each picture turned to the other's orientation and
  placed by the alignment search below.

All give ``>= verify_score`` (0.9) for a duplicate. Runs ask the keypoint matcher unless
``verify_keypoints=False``; :func:`match_score` asks it unless told not to. The pixel alignment, per pair, on images decoded (as displayed: EXIF orientation applied, through
:func:`dedupdask.decode.to_rgb`) with aspect kept to 128 px on the long side:

1. **Alignment search** on 48 px grey images: for each direction (B inside A, A inside B),
   each scale ``s`` in 0.70..1.00 (the inner image covers ``s`` of the outer one's width, its
   height following its own aspect ratio) and each flip, the normalised cross-correlation of
   the inner image with every position in the outer one (one FFT). The best
   :data:`TOP` hypotheses, and the picture as it is (two pictures of one shape, one over the
   whole of the other, unmirrored: a colour edit changes the grey image, and another scale may
   then correlate better), are
   refined at 128 px (scale +-1.25 %); when the best coarse correlation is under
   :data:`COARSE_REJECT` only the picture as it is is refined (none for pictures of two
   shapes), and a refined alignment whose fine correlation is under :data:`FINE_REJECT` gets no
   residuals -- but for the picture as it is, which is always read: an inset or a recolouring
   brings a copy's correlation down to anything, and the residuals decide.
2. **Residual** of each refined alignment, on the colour images blurred by 1 px (which
   forgives sub-pixel misalignment and JPEG noise): one gain and one offset shared by the
   three channels are fitted (brightness may change), and the residual energy
   is divided by the outer image's variance -- over the whole overlap (``residual``) and in
   the worst cell of a 4 x 4 grid (``cell``) -- and the largest blob of pixels off by more
   than 0.2 that survives a 3 x 3 opening is measured (``blob``, a fraction of the overlap:
   a redrawn detail -- a clock hand, a tear, a frame -- is a blob, JPEG ringing is not).
   **Text** is not the picture: when the pixels off by more than 0.2 form lines of text
   (:func:`_text_lines`: bands at most a sixth of the picture high whose rows hold three
   or more separate runs of them on average, as a page's lines are read in :mod:`dedupdask.decode`) covering
   at most :data:`MAX_TEXT` of the overlap, and one picture *added* each line (:func:`_added`:
   in the line's box it has at least :data:`TEXT_ADDED` times the other's runs of ink per row),
   the residuals are computed again without those lines' boxes, and the better reading counts.
   A caption, a watermark or a tag added to a copy lies over plain ground or over a few of the
   picture's outlines and leaves the rest of the picture to agree everywhere; content redrawn in
   both pictures (the pips of two cards, the symbols of two signs, two smileys' eyes) has as
   much ink in each, and a shape added to a drawing (one or two outline crossings per row) is
   no line of text: both stay blobs. A stated limit: a copy with a line of text added and a
   design variant that adds a short line of text to a plain part (a label) look the same here.
   **A pasted rectangle** is not the picture either: when the box of every blob (found again
   with the brightness gain fitted on the pixels that agree, which a bright inset no longer
   pulls) covers at most :data:`MAX_PASTED` of the overlap, is at least :data:`MIN_PASTED` of
   the picture across, and hides one picture's content -- at least :data:`MIN_HIDDEN` of the
   box lay over it, at most :data:`MAX_SHOWING` of it shows through, and along one side the
   differing pixels run straight while the picture goes on, unchanged and of the same colour,
   just outside (:data:`MIN_CUT`; or, over at least :data:`MIN_CROSSING` of the box, along all
   the content that side crosses), and neither what it hides nor what it shows is a field of
   one colour (:data:`MAX_PLAIN`: a flag's canton is drawn, not pasted) -- the residuals are
   read again without the box (:func:`_pasted`). A picture in the picture, a logo's box, an inset cut through the
   picture along straight edges; an element drawn over a drawing lets what lay under its box's
   corners show, one drawn on the plain ground hides nothing, a fill repainted inside its
   outline ends at an edge the picture already had, and a detail smaller than an eighth of the
   picture (an eye, a letter) is left to the blob rule. A stated limit: a design variant that
   pastes a rectangular panel over a drawing looks like a copy with an inset.
3. **Colour.** Unless an alignment already scored ``early_accept``, the one the brightness
   gain liked best (however far under -1 that gain left it: a greyscale copy of a colourful
   picture) and the picture as it is (when refined: always for two pictures of one shape) are
   scored again under the one global colour edit that fits the pair best
   (:func:`~dedupdask.match_keypoints.colour_edit`, the keypoint matcher's: greyscale, sepia,
   saturation, tone, a hue turned as an editor's slider turns it, and a toning: grey, then
   tinted along the grey levels), when it is one an editor
   makes and the more colourful picture has more than
   :data:`~dedupdask.match_keypoints.FEW_HUES` distinct hues. The residuals are read the same
   way, so every pixel must follow the one edit: a part painted another colour is a blob. A
   drawing in one or two hues is not compared under a free colour edit: another colour of its
   one fill is how a designer makes a variant (another skin tone, the same clip art in red and
   in blue), and a copy recoloured as a whole cannot be told from it.
   The same readings are made again under one non-decreasing curve per channel
   (:data:`CURVES`, :func:`~dedupdask.match_keypoints.channel_curves`): curves, levels,
   auto-tone and histogram equalization are steep or stepped, which the colour edit's smooth
   luma does not follow; again only for a picture of more hues than
   :data:`~dedupdask.match_keypoints.FEW_HUES`, and not when either picture is a graphic, whose
   few fills three curves map onto another palette (two flags in other shades, two cards).
4. **Frames.** A border drawn over a copy covers the original's edges, which no alignment of
   the whole pictures explains. When either picture has a frame (rows and columns of one colour
   on all four sides: a border, a passe-partout, plain margins; :func:`frame_box`) and their
   frames differ, steps 1-3 are run again on the two pictures inside their frames, without
   mirror images.
5. **Finer.** A pair steps 1-4 did not accept although its pixels agree as a whole (its
   residual alone would score :data:`FINER_GATE`: a blob or one cell decided) is read again
   at :data:`FINER` px (:attr:`View.finer`), under the alignment steps 1-3 found
   (:func:`_finer_record`): a small mark's letters, one blob at 128 px, are a line of text
   there. The second reading counts only when it is clear (:data:`FINER_CLEAR`), and it is
   the last one asked (:func:`record_views`): after the keypoint matcher and the turned
   reading, of a pair they too left unsure.

``score = 1 - max(residual, cell / 2, 75 * blob)`` of the best hypothesis; the pair is a
duplicate when ``score >= verify_score`` (default 0.9, :mod:`dedupdask.thresholds`: residual
<= 0.1, cell <= 0.2, no blob over 0.13 % of the image); the search stops at the first
alignment scoring ``early_accept`` or more. Measured on real photos and clip art
(``benchmarks/quality.py --tiers``, ``benchmarks/results/quality_tiers.txt``); cost on the real-photo shards of
``benchmarks/vs_fastdup.py``: about 2.8 ms of one core per pair, plus 0.6 ms per image read
back and decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft as _fft
from dask.sizeof import sizeof as dask_sizeof

from .match_keypoints import (
    FEW_HUES,
    MAX_DIFFERING,
    MIN_CONTAINED,
    Keypoints,
    is_graphic,
    match_keypoints,
    plane_warp,
)
from .match_keypoints import MAX_TURN as KEYPOINT_MAX_TURN
from .match_keypoints import SIZE as KEYPOINT_SIZE
from .match_record import MATCHERS, MatchRecord

__all__ = [
    "MATCHER", "MATCHERS", "PIXEL_MATCHER", "MatchRecord", "Prepared", "View", "match_record", "match_score",
    "prepare_image", "record_views", "score_views", "turned_record", "warped_record", "warped_score",
]  # fmt: skip

PIXEL_MATCHER = "pixel-alignment/17"
"""The pixel alignment alone (``verify_keypoints=False``); /2: it also fits a global colour edit;
/4: under the best alignment however far under -1 its gain left it, and under the picture as it is;
/5: lines of text that one picture added are left out of the residuals (:func:`_added`); /6: so is a
rectangle pasted over one picture (:func:`_pasted`), and the picture as it is is read however
low its correlation; /7: a pair no alignment accepts is also read under an affine warp found
from the grey pixels by ECC (:func:`turned_record`: a turned copy of a plain picture); /8: the
picture as it is is read both ways round (:data:`AS_IS`); /9: a pair whose pixels agree but for
details is read again at :data:`FINER` px (:data:`FINER_GATE`); /10: that finer reading comes last,
after the turned reading (the same decisions, fewer pairs read at the finer size); /11: two
pictures of other shapes are also read whole onto whole (:func:`_stretched`); /12: a pasted rectangle
may cover up to 35 % of the overlap (:data:`MAX_PASTED`; 25 % before); /13: a pasted rectangle's cut
may be shorter where it runs along all the content it crosses (:data:`MIN_CROSSING`), and a
reading under -1 keeps its residuals; /14: a copy turned farther than ECC reaches from the
placement (15-45 degrees) is read under the turn its spectra give (:func:`far_turned_record`);
/15: every colour reading is also made under one curve per channel (:data:`CURVES`); /16: a pair
still under the early accept is read again under each global edit times a smooth light field
(:func:`_light_field`: a vignette, a gradient filter, uneven light), unless both pictures are
graphics (light grades a flat fill), the field explaining most of what differed (:data:`LIGHT_SHARE`);
/17: two graphics too, when the field takes away most of the spread inside their flat fills
(:data:`IN_FILLS`, :func:`_in_fills`): a drawing under gentle light is often still a graphic."""
MATCHER = "pixel-alignment+keypoints/27"
"""Which matcher scored a run's pairs (``results/run.json``, ``"verification"``): this one by
default, :data:`PIXEL_MATCHER` with ``verify_keypoints=False``. /6: the keypoint matcher leaves
pairs of two graphics to the pixel alignment (:data:`~dedupdask.match_keypoints.MAX_FLAT`) and
asks one picture to lie inside the other (:data:`~dedupdask.match_keypoints.MIN_CONTAINED`). /7: a
graphic is also uniform (:data:`~dedupdask.match_keypoints.MIN_UNIFORM`): a smooth gradient is a photo. /8: a
pair of two graphics gets the pixel alignment's residuals under the keypoint warp
(:func:`warped_score`): turned, stretched and slanted copies of drawings. /9: the pixel alignment
also fits a global colour edit (pictures of more than two hues), and the colour edit of both
matchers includes an editor's hue turn (hexagon hue, saturation and value). /10: the pixel
alignment also compares two pictures inside their frames (:func:`frame_box`). /11: the colour
edit of both matchers includes a toning (grey, then tinted along the grey levels: sepia, a
cyanotype), for pictures of more than two hues. /12: the pixel alignment fits the colour edit under
the alignment its brightness gain liked best also when that gain left every alignment under -1
(a greyscale copy of a colourful picture), and under the picture as it is (two pictures of one
shape), which it always refines. /13: the pixel alignment leaves lines of text that one picture added (a
caption, a watermark, a tag: at most :data:`MAX_TEXT` of the overlap) out of its residuals. /14: and
a rectangle pasted over one picture (:func:`_pasted`: an inset, a logo's box; at most
:data:`MAX_PASTED` of the overlap), and reads the picture as it is however low its correlation
(a bright inset over a dark picture brings it down to anything). /15: a pair that neither the pixel
alignment nor the keypoint matcher accepts is read under an affine warp that ECC finds from the
grey pixels, started from the pixel alignment's placement, when it is a turn with a resize
(:func:`turned_record`): a turned copy too plain for keypoints (an object on white, a smooth
wallpaper). /16: the pixel alignment reads two pictures of one shape as they are both ways round
(:data:`AS_IS`): the 128 px grid the other is resampled to, the residuals, the gain refitted on
the pixels that agree and the rectangle pasted over one picture are each one picture's, and the
verdict of a pair no longer depends on which of its images came first. /17: a pair whose pixels
agree at 128 px but for details (:data:`FINER_GATE`) is read again at :data:`FINER` px, where a
small line of text can be read as one and an inset's edge seen. /18: the finer reading, the dearest
(four times the pixels), comes last, asked only of pairs the keypoint matcher and the turned
reading left under ``early_accept``: the same decisions (it counts only at :data:`FINER_CLEAR`,
the default ``early_accept``), and on the families benchmark's candidates a third fewer pairs
read at the finer size. /19: the pixel alignment also reads two pictures of other shapes (up to
:data:`MAX_STRETCH`) whole onto whole (:func:`_stretched`), by its rules (text and a pasted
rectangle left out, the colour edit, the finer reading): a copy stretched or squeezed to another
shape, with a caption or a mark, at 128 and 256 px. /20: the keypoint matcher's rules (pairs with a
photo in them) also take a warp that turns the picture by a quarter, a half or three quarters
(:data:`~dedupdask.match_keypoints.QUARTER_TURNS`): a photo shown on its side or upside down. /21:
so does the pixel alignment, whole onto whole, for a pair with a photo in it that nothing accepted
(:func:`turned_over_record`): a plain photo, too plain for keypoints, shown another way. /22: one
overlay budget for both matchers: a pasted rectangle may cover up to the keypoint matcher's
(:data:`MAX_PASTED` = :data:`~dedupdask.match_keypoints.MAX_DIFFERING`, 35 %; 25 % before); and the
keypoint matcher fits an editor's hue turn to pictures of two hues or fewer too, as the slider
alone, saturation and value kept (:func:`~dedupdask.match_keypoints.colour_edit`): a photo of one
or two colours with its hue turned. /23: a pasted rectangle's straight cut through the covered
picture may be as short as a quarter of the box's longer side when it runs along all of where
that side crosses the covered picture's content but its ends (:data:`MIN_CROSSING`: an inset
laid partly on a drawing's white ground), read in the last two rows or columns inside the box
(a straight edge between two pixel rows at 128 px leaves the last one half changed); and the
pixel alignment's record keeps the residuals of a reading under -1 when no colour edit
was fitted (an empty record had replaced it, so the finer reading was never asked of it; the
residuals under a warp likewise, :func:`_with_colour_edit`). /24: a pair nothing accepted is also
read under the turn the two pictures' spectra give (:func:`spectral_turn`, Fourier-Mellin), from
:data:`FAR_FROM` to :data:`MAX_FAR_TURN` degrees, where ECC started from the placement does not reach
(:func:`far_turned_record`; two graphics up to the keypoint warp's 30, which keeps which way is
up): a wallpaper or a smooth photo turned by 20-45 degrees and cut to what stayed whole, an object
on white turned on its ground while one picture stays inside the other. /25: the pixel
alignment's colour readings are also made under one curve per channel (:data:`CURVES`,
:func:`~dedupdask.match_keypoints.channel_curves`: curves, levels, equalization), for pictures of
more than :data:`~dedupdask.match_keypoints.FEW_HUES` hues when neither is a graphic, the
coloured pixels' hue turned by at most :data:`~dedupdask.match_keypoints.MAX_HUE_TURN`. /26: and
under a smooth light field (the pixel alignment's /16). /27: two graphics too, where the light shows
inside their fills (the pixel alignment's /17)."""
FINE = 128
COARSE = 48
SCALES = tuple(float(s) for s in np.round(np.arange(0.70, 1.0001, 0.025), 4))
SIGMA = 1.0
GRID = 4
TOP = 4
BLOB_LEVEL = 0.2
BLOB_WEIGHT = 75.0  # a blob of 0.2 % of the overlap (~25 px at 128 x 96) costs 0.15
AS_IS = (1.0, False)
"""The (scale, flip) of the picture as it is: one picture over the whole width of the other,
unmirrored. For two pictures of one shape it is asked in both directions, so that a pair's
verdict does not depend on the order of its pictures."""
SAME_SHAPE = 0.02
"""Largest difference of two pictures' aspect ratios (log ratio) for which the picture as it is
is always refined (:func:`_hypotheses`)."""
MAX_STRETCH = float(np.log(2.0))
"""Largest difference of two pictures' aspect ratios (log ratio) for which the whole of one is
also read resized onto the whole of the other (:func:`_stretched`): a copy stretched or squeezed
to another shape, as thumbnails are (a 16:9 frame squeezed into a square one is 1.78)."""
COARSE_REJECT = 0.7
"""Best coarse correlation under which only the picture as it is is refined (pictures of one
shape; others score -1 at once). Planted copies of the five first edits scored >= 0.80 on the
benchmark set; about 60 % of rejected candidates are below 0.7, and none of them scored above
0.25 when refined. A picture pasted over a copy brings it lower (matcher /14)."""
ECC_STEPS = 15
"""Iterations of the ECC refinement of a keypoint warp (:func:`warped_score`)."""
ECC_MAX_SHIFT = 3.0
"""Px (at :data:`FINE`) the ECC refinement may move a corner of the frame: about the keypoints'
own tolerance (:data:`~dedupdask.match_keypoints.RANSAC_PX` at twice the size). Farther, ECC has
slid on a plain picture (a sky matches a sky anywhere), and the keypoints' warp stands."""
DENSE_STEPS = 30
"""Iterations of the ECC search of a turned alignment from the pixels (:func:`turned_record`)."""
DENSE_MIN_CC = 0.95
"""Grey correlation the warp ECC finds must reach for its residuals to be read
(:func:`turned_record`). Under one brightness gain a residual of at most 0.1 of the picture's
variance (a score of 0.9) needs a correlation of at least sqrt(0.9) = 0.95; on the tier shards'
candidates the readings under it (three in four) accepted nothing, and every turned copy of the
families benchmark accepted had 0.95 or more."""
SAME_PLACEMENT = 1.0
"""Px (at :data:`FINE`) within which ECC's warp is the pixel alignment's own placement (its fine
search steps the shift by 1 px and the scale by 1.25 %, 1.6 px at the corners): not read again
(:func:`turned_record`)."""
MAX_DENSE_TURN = 15.0
"""Largest turn (degrees) of an alignment found from the pixels (:func:`turned_record`) started
from the pixel alignment's placement: a straightened or tilted copy. Past it ECC, started
unturned, does not reach the alignment; :func:`far_turned_record` starts it turned."""
MAX_FAR_TURN = 45.0
"""Largest turn (degrees) of a copy read by :func:`far_turned_record`: the turn is read from the
two pictures' spectra (:func:`spectral_turn`), which cannot tell a turn from the same turn plus
a half; a photo shown on its side is a quarter turn (:func:`turned_over_record`), and a turn
from one of those by up to 45 degrees covers every angle."""
FAR_FROM = 10.0
"""Smallest turn (degrees), as the spectra read it, that :func:`far_turned_record` reads: ECC
started from the pixel alignment's placement reaches :data:`MAX_DENSE_TURN`, and the spectra
read a turn within a few degrees (one angle of :data:`SPECTRUM`, and the crop's own)."""
SPECTRUM = 64
"""Side (px) of the central squares whose spectra :func:`spectral_turn` compares: 64 angles
over a half turn (2.8 degrees apart, within ECC's reach of the true turn)."""
FRAME_TOLERANCE = 16
"""A row or column of a frame: at least 98 % of its pixels within this many levels (of 255, in
every channel) of its median colour -- JPEG's ringing around a flat band stays within it."""
FRAME_MAX = 0.25
"""At most this share of each side is a frame (:func:`frame_box`): the rest is the picture."""
TEXT_ADDED = 2.0
"""Ratio of ink runs per row between the two pictures in a line of text's box over which the line
was added to one of them (:func:`_added`): at least half of the runs there are new."""
MAX_TEXT = 0.2
"""Largest share of the overlap that lines of text may cover and be left out of the residuals
(a caption, a watermark, a tag added to a copy): with more, the text is the picture (a slide, a
page, a card)."""
MAX_PASTED = MAX_DIFFERING
"""Largest share of the overlap a rectangle pasted over a copy (:func:`_pasted`: a picture in
the picture, a logo's box, an inset) may cover and be left out of the residuals: the keypoint
matcher's overlay budget (:data:`~dedupdask.match_keypoints.MAX_DIFFERING`, 35 %), one bound on
how much of a copy an overlay may hide whichever matcher reads the pair. The rest of the
picture must agree everywhere. The box is measured with a 1 px rim and the blur's spread round
the changed pixels, so the same bound is a little stricter here. Matcher /22; 25 % before, under
which an inset of 20 % of the picture with its frame (24-26 % as measured) was refused between
two graphics and accepted with a photo in the pair."""
MIN_PASTED = 1 / 8
"""Smallest width and height, as a share of the picture's, of a pasted rectangle
(:func:`_pasted`): 16 of the 128 px. A smaller change is a detail (a letter, an eye, a
button, a skin tone's shading), which the blob rule decides, and too short a side to see
that it runs straight."""
MAX_SHOWING = 0.1
"""Share of the picture's content under a pasted rectangle that may still show through it
(:func:`_pasted`): a pasted rectangle is opaque."""
MIN_HIDDEN = 0.25
"""Share of a pasted rectangle that lay over the covered picture's content (:func:`_pasted`)."""
MIN_CUT = 0.5
"""Length, as a share of a pasted rectangle's longer side, of its straightest cut through the
covered picture (:func:`_pasted`): along one side, the differing pixels run straight and the
picture's content goes on, unchanged, just outside. A round or drawn outline touches its box at
a point."""
MIN_CROSSING = 0.25
"""A shorter cut, down to this share of the longer side, counts when it runs along all of where
that side crosses the covered picture's content (its pixels that are not its plain ground, just
inside the box and just outside it) but for :data:`CROSSING_ENDS`: an inset laid partly on a
drawing's white ground cuts the drawing only where the drawing is, and it cuts it there all
along (matcher /23). A round outline still touches the content it crosses at a point. This cut
is read in the box's last two rows (or columns) inside: at 128 px a straight edge between two
pixel rows leaves the last one only partly changed, where the two colours differ most. The long
cut of :data:`MIN_CUT` stays read in one row: in two, a flat curve (a halo over a smiley's
head) runs straight for half its box, and the tier shards' look-alikes showed it."""
CROSSING_ENDS = 4
"""Pixels of a side's crossing with the content (:data:`MIN_CROSSING`) that its cut may miss: two
at each end, the box's 1 px rim and the blur's spread where the cut meets the content's edge."""
MAX_PLAIN = 0.8
"""Largest share of one colour (within :data:`BLOB_LEVEL` / 4 of the median) in what a pasted
rectangle hides and in what it shows (:func:`_pasted`): a panel or a field of one colour -- a
flag's canton on its field, a box over a plain part -- is how designs are drawn, and a pasted
picture, like what it covers, is a picture."""
FINER = 256
"""Long side (px) of the second, finer reading of the pixel alignment: the size images are
decoded to for matching (:class:`Prepared`). At 128 px a corner mark's letters blur into one
blob, which the text rule cannot tell from a redrawn detail."""
FINER_GATE = 0.8
"""A pair the pixel alignment did not accept is read again at :data:`FINER` px, with the same
rules, when its residual over the whole overlap alone would score this much (``1 - residual``):
the picture agrees as a whole, and what decided is local -- a blob, or the worst cell, whose
energy a small mark on a plain corner fills. Pairs that do not align at 128 px (most
candidates) are not read twice."""
FINER_CLEAR = 0.98
"""The finer reading counts only when it scores this much, a clear verdict (the value of the
default ``early_accept`` of :mod:`dedupdask.thresholds`, where the pixel alignment is sure enough
to stop looking; a matcher constant like :data:`FINE_REJECT`, not a run threshold): two
readings of one pair are two chances, and a score near the bar in the second is as likely the
resolution's noise as a detail read (a Tongan flag against a plain red one scores
0.875 at 128 px and 0.902 at 256). A corner mark read as text scores 0.98-1.0."""
FINE_REJECT = 0.75
"""Best fine (128 px, grey) correlation of a hypothesis under which its residuals are not
computed (it scores -1). On the 6,357 candidates of the real-photo benchmark, 27 % of
refinements were under 0.75 and none of them scored above 0.79 with residuals computed."""
CURVES = "channel curves"
"""``colour`` of :func:`_residuals` for the second global colour edit, one curve per channel
(:func:`~dedupdask.match_keypoints.channel_curves`), and the record's ``colour`` under it."""
LIT = "light field"
"""What the record's ``colour`` adds when the residuals were read under a light field
(:func:`_light_field`)."""
LIGHT_TERMS = 3
"""Terms per axis of a light field: ``1, x, x**2`` times ``1, y, y**2`` over the overlap (nine
in all). A field this smooth bends across the whole picture and cannot follow an edge."""
LIGHT_SHARE = 0.5
"""Largest share of what differs (``1 - score`` of :func:`_residual_score`) that may remain
once a light field is read: the light must be most of the difference. A field also bends a
little towards any two pictures' differences, which must not lift a look-alike over the bar."""
IN_FILLS = "in the fills"
"""``lit`` of :func:`_residuals` for two graphics: the light field counts only where it is seen,
inside their flat fills (:func:`_in_fills`)."""
MIN_FILL = 16
"""Fewest pixels of a flat fill whose inside :func:`_in_fills` reads (at 128 px)."""
_NO_READING = (np.inf, np.inf, np.inf)  # a reading that does not count (scores -inf)
MAX_LIGHT = 2.5
"""Largest ratio of a light field's brightest to its darkest point over the overlap: a
vignette that darkens the corners to 40 % of the centre, a lamp's falloff."""


@dataclass(frozen=True)
class Prepared:
    """One decoded image, ready for matching.

    Attributes
    ----------
    width, height : int
        Size of the original image as displayed (its aspect ratio drives the alignment).
    rgb : ndarray
        uint8 ``[h, w, 3]``, the image with its long side at 256 px (the keypoint matcher's
        size; the pixel alignment works on it resized to 128 px).
    keypoints : dict or None
        Its keypoint features (:meth:`~dedupdask.match_keypoints.Keypoints.all_features`), when
        they were computed with the image: an image that several tasks share is then described
        once, not once per task.
    fills : (float, float) or None
        Its :func:`~dedupdask.match_keypoints.fill_shares`, when computed with the image.
    """

    width: int
    height: int
    rgb: np.ndarray
    keypoints: dict[bool, Any] | None = None
    fills: tuple[float, float] | None = None


@dask_sizeof.register(Prepared)
def _sizeof_prepared(p: Prepared) -> int:
    # Dask places a task where the bytes of its inputs are and spills by size: without this it
    # would count a read-back of a thousand images (~150 MB) as a few kilobytes
    feats = [a for f in (p.keypoints or {}).values() for a in f if a is not None]
    return 200 + int(p.rgb.nbytes) + sum(int(a.nbytes) for a in feats)


def _norm(hw: tuple[int, ...]) -> np.ndarray:
    """Normalised coordinates (0..1) -> pixel coordinates of an image of shape ``hw``."""
    return np.diag([float(hw[1]), float(hw[0]), 1.0])


def _unit(H: np.ndarray) -> np.ndarray:
    return H / H[2, 2]


def _better(best: MatchRecord, other: MatchRecord) -> MatchRecord:
    """The record of the higher score (the first on a tie, as ``max`` keeps it)."""
    return other if other.score > best.score else best


def _pixel_record(r: tuple[float, float, float] | None, **kw: Any) -> MatchRecord:
    """A record of the pixel alignment's residual triple, scored by :func:`_residual_score`
    (``r`` None -- no residuals, e.g. no colour edit an editor makes: -1, no matcher)."""
    if r is None:
        return MatchRecord()
    return MatchRecord(_residual_score(r), residual=float(r[0]), cell=float(r[1]), blob=float(r[2]), **kw)


def _form_name(form: bool | str, lit: bool = False) -> str:
    """The record's ``colour`` of a reading under ``form`` (:func:`_residuals`' ``colour``: one
    brightness gain, the colour edit or :data:`CURVES`) and, with ``lit``, a light field."""
    base = {False: "", True: "colour edit", CURVES: CURVES}[form]
    return f"{base}, {LIT}" if base and lit else LIT if lit else base


def _with_colour_edit(
    best: MatchRecord, r: tuple[float, float, float] | None, *, form: str = _form_name(True), **kw: Any
) -> MatchRecord:
    """``best``, or the record of the residuals ``r`` under a global colour edit (``form``: the
    colour edit or the channel curves) when it scores higher. No edit fitted (``r`` None) is no
    reading: its empty record's -1 must not replace a reading that scored under -1 (its
    residuals and placement would be lost)."""
    return best if r is None else _better(best, _pixel_record(r, colour=form, **kw))


def _size(long_side: int, width: int, height: int) -> tuple[int, int]:
    s = long_side / max(width, height, 1)
    return max(8, round(height * s)), max(8, round(width * s))


def _decode_size(width: int, height: int) -> tuple[int, int]:
    return _size(KEYPOINT_SIZE, width, height)


def prepare_image(data: bytes, *, max_image_pixels: int = 100_000_000) -> Prepared | str:
    """Decode one image for :func:`match_score`, or return why it cannot be.

    The size comes from the file itself (as displayed), not from what extraction recorded:
    work_dirs of decode version 1 recorded rotated photos' sizes as stored.

    Parameters
    ----------
    data : bytes
        The encoded image.
    max_image_pixels : int
        Larger images are not decoded.

    Returns
    -------
    Prepared or str

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (256, 64), "red").save(buf, "PNG")
    >>> prepare_image(buf.getvalue()).rgb.shape
    (64, 256, 3)
    """
    from .decode import decode_image

    d = decode_image(data, _decode_size, max_image_pixels=max_image_pixels, min_image_size=1, stats=False)
    if d.error_code != "VALID" or d.pixels is None:
        return f"{d.error_code}: {d.message}"
    return Prepared(int(d.width), int(d.height), d.pixels)


# -- matching ------------------------------------------------------------------------------------
def _pil_image(arr: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(arr, "F")


def _pil_resize(im: Any, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _resize(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    if arr.ndim == 3:
        return np.stack([_resize(arr[..., c], w, h) for c in range(arr.shape[2])], axis=-1)
    if arr.shape == (h, w):
        return arr
    return _pil_resize(_pil_image(arr), w, h)


def _integral(x: np.ndarray) -> np.ndarray:
    s = np.zeros((x.shape[0] + 1, x.shape[1] + 1), np.float64)
    s[1:, 1:] = x.cumsum(0).cumsum(1)
    return s


def _box(s: np.ndarray, h: int, w: int) -> np.ndarray:
    return s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]


class _Plan:
    """FFT and integral images of one image, shared by every template matched inside it."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.spec = _fft.rfft2(img)
        self.s1 = _integral(img)
        self.s2 = _integral(img * img)
        self._windows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def windows(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Variance and inverse standard deviation of every ``h x w`` window (cached)."""
        got = self._windows.get((h, w))
        if got is None:
            s1 = _box(self.s1, h, w)
            var = _box(self.s2, h, w) - s1 * s1 / (h * w)
            got = (var, 1.0 / np.sqrt(np.maximum(var, 1e-12)))
            self._windows[(h, w)] = got
        return got


def _ncc(plan: _Plan, tpl: np.ndarray) -> np.ndarray | None:
    """Normalised cross-correlation of ``tpl`` at every position inside the plan's image (FFT)."""
    H, W = plan.img.shape
    h, w = tpl.shape
    if h > H or w > W or h < 4 or w < 4:
        return None
    t0 = tpl - tpl.mean()
    energy = float((t0 * t0).sum())
    if energy < 1e-8:
        return None
    spec = plan.spec * _fft.rfft2(t0[::-1, ::-1], s=(H, W))
    corr = _fft.irfft2(spec, s=(H, W))[h - 1 :, w - 1 :]
    var, inv = plan.windows(h, w)
    ok = var > max(0.01 * energy, 1e-8)  # windows much flatter than the template never match
    out = np.where(ok, corr * inv, 0.0) / np.sqrt(energy)
    return np.clip(out, -1.0, 1.0)


def frame_box(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the part of a picture inside its frame, or None when
    it has none.

    A frame goes round a picture: a border, a passe-partout, a mat, plain margins. Rows and
    columns that are each one colour (:data:`FRAME_TOLERANCE`) are peeled off the four sides a
    ring at a time, so that a line inside a border (which spans only the inside of the border)
    is peeled too, until each side reaches the picture or :data:`FRAME_MAX` of its length. A
    picture has a frame when each of its four sides lost a row or column: one plain edge is a
    sky or a wall, not a frame.

    Examples
    --------
    >>> pic = np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    >>> framed = np.pad(pic, ((5, 5), (5, 5), (0, 0)), constant_values=200)
    >>> framed[3:-3, 3] = framed[3, 3:-3] = 20  # a dark line inside the border, on two sides
    >>> frame_box(framed), frame_box(pic)  # and one row more, where frame and picture meet
    ((6, 52, 6, 68), None)
    """
    from .kernels import frame_peel  # numba: imported where pairs are scored

    h, w = rgb.shape[:2]
    cap_y, cap_x = int(FRAME_MAX * h), int(FRAME_MAX * w)
    # a plain row or column: every pixel within FRAME_TOLERANCE of any colour in its range
    # (the median's), or at most 2 % of them farther than that from its median colour
    top, bottom, left, right = frame_peel(rgb, cap_y, cap_x, FRAME_TOLERANCE)
    if top == 0 or left == 0 or bottom == h or right == w:
        return None
    # the row where the frame meets the picture holds both (resampled, JPEG-ringed): not kept
    top, left = min(top + 1, cap_y), min(left + 1, cap_x)
    bottom, right = max(bottom - 1, h - cap_y), max(right - 1, w - cap_x)
    return top, bottom, left, right


class View:
    """Grey fine and coarse versions of a prepared image (computed once per task).

    The templates this image becomes inside outer images of a given coarse shape (every scale
    and flip, their FFTs and energies) are cached too: in a dataset most images share a few
    shapes, so a template stack is built once per image and shape, not once per pair.
    """

    def __init__(self, p: Prepared, fine: int = FINE) -> None:
        self.keypoints = Keypoints(p.rgb, p.keypoints, p.fills)
        self._prepared = p
        self._size = (p.width, p.height)
        self._framed: View | None | bool = False
        self._finer: View | None | bool = False
        self.box = np.eye(3)  # this view's normalised coordinates -> its picture's (a frame's inside)
        self.fine = fine
        fh, fw = _size(fine, p.rgb.shape[1], p.rgb.shape[0])
        if (fh, fw) != p.rgb.shape[:2]:
            from PIL import Image

            small = Image.fromarray(p.rgb).resize((fw, fh), Image.Resampling.BILINEAR, reducing_gap=None)
            self._rgb8 = np.asarray(small)
        else:
            self._rgb8 = p.rgb  # uint8; the float copy is made only for pairs that get refined
        rgb = self._rgb8.astype(np.float32) / 255.0
        self.aspect = p.width / max(p.height, 1)
        self.grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        h, w = self.grey.shape
        s = COARSE / max(h, w)
        self.coarse = _resize(self.grey, max(4, round(w * s)), max(4, round(h * s)))
        self.coarse_plan = _Plan(self.coarse)
        self._fine_plan: _Plan | None = None
        self._spectrum: np.ndarray | None = None
        self._stacks: dict[tuple[int, int], _Stack | None] = {}
        self._rgb: np.ndarray | None = None
        self._pil: dict[str, Any] = {}

    @property
    def rgb(self) -> np.ndarray:
        """float32 colour image in 0..1 (made on first use, kept while the view lives)."""
        if self._rgb is None:
            self._rgb = self._rgb8.astype(np.float32) / 255.0
        return self._rgb

    def resized(self, what: str, w: int, h: int) -> np.ndarray:
        """``grey``, ``coarse`` or ``rgb`` resized to ``w x h`` (the PIL images are kept)."""
        ims = self._pil.get(what)
        if ims is None:
            arr = getattr(self, what)
            chans = [arr[..., c] for c in range(arr.shape[2])] if arr.ndim == 3 else [arr]
            ims = self._pil[what] = [_pil_image(np.ascontiguousarray(c)) for c in chans]
        if ims[0].size == (w, h):
            return getattr(self, what)
        out = [_pil_resize(im, w, h) for im in ims]
        return np.stack(out, axis=-1) if len(out) > 1 else out[0]

    @property
    def edge_colour(self) -> np.ndarray:
        """Median colour (uint8 levels) of the outermost rows and columns: a frame's colour."""
        return np.median(_ring(self._rgb8), axis=0)

    @property
    def framed(self) -> View | None:
        """The picture inside its frame (:func:`frame_box`, found at 128 px and cut from the
        256 px image), None when it has none (made on first use)."""
        if self._framed is False:
            box = frame_box(self._rgb8)
            if box is None:
                self._framed = None
            else:
                (h, w), (H, W) = self._rgb8.shape[:2], self.keypoints.rgb.shape[:2]
                top, bottom, left, right = box
                t, b = round(top * H / h), round(bottom * H / h)
                x0, x1 = round(left * W / w), round(right * W / w)
                width, height = self._size
                inner = Prepared(max(1, round(width * (x1 - x0) / W)), max(1, round(height * (b - t) / H)),
                                 np.ascontiguousarray(self.keypoints.rgb[t:b, x0:x1]))  # fmt: skip
                self._framed = View(inner, self.fine)
                self._framed.box = np.array([[(x1 - x0) / W, 0.0, x0 / W], [0.0, (b - t) / H, t / H], [0.0, 0.0, 1.0]])
        assert self._framed is not False
        return self._framed

    @property
    def finer(self) -> View | None:
        """This picture at :data:`FINER` px (made on first use), None when it has no more pixels
        than this view."""
        if self._finer is False:
            more = max(self._prepared.rgb.shape[:2]) > max(self.grey.shape)
            self._finer = View(self._prepared, FINER) if more and self.fine < FINER else None
        assert self._finer is not False
        return self._finer

    @property
    def spectrum(self) -> np.ndarray:
        """:func:`_log_polar` of the grey picture (made on first use): a picture is in many pairs."""
        if self._spectrum is None:
            self._spectrum = _log_polar(self.grey)
        return self._spectrum

    @property
    def fine_plan(self) -> _Plan:
        if self._fine_plan is None:  # only pairs that pass the coarse search need it
            self._fine_plan = _Plan(self.grey)
        return self._fine_plan

    def stack(self, outer_hw: tuple[int, int]) -> _Stack | None:
        """This image as templates inside an outer coarse image of shape ``outer_hw``."""
        if outer_hw not in self._stacks:
            self._stacks[outer_hw] = _Stack.build(self, outer_hw)
        return self._stacks[outer_hw]


@dataclass
class _Stack:
    """Templates of one inner image for one outer shape: one entry per scale, both flips."""

    scales: list[float]
    shapes: np.ndarray  # int64 [n, 2]: each scale's template height and width
    root_energy: np.ndarray
    spec: np.ndarray  # rfft2 of [2 * len(scales), H, W]: scale i unflipped at 2i, flipped at 2i+1

    @staticmethod
    def build(inner: View, outer_hw: tuple[int, int]) -> _Stack | None:
        H, W = outer_hw
        scales, shapes, energies, tpls = [], [], [], []
        for s in SCALES:
            th, tw = _inner_size((H, W), s, inner.aspect)
            if th > H or tw > W or th < 4 or tw < 4:
                continue
            t0 = inner.resized("coarse", tw, th)
            t0 = t0 - t0.mean()
            energy = float((t0 * t0).sum())
            if energy < 1e-8:
                continue  # a flat template matches nothing (and its flip is as flat)
            scales.append(s)
            shapes.append((th, tw))
            energies.append(energy)
            tpls.append(t0)
        if not tpls:
            return None
        stack = np.zeros((2 * len(tpls), H, W), np.float32)
        for i, t0 in enumerate(tpls):
            h, w = t0.shape
            stack[2 * i, :h, :w] = t0[::-1, ::-1]
            stack[2 * i + 1, :h, :w] = t0[::-1, :]  # the flipped template, reversed
        return _Stack(scales, np.asarray(shapes, np.int64), np.sqrt(np.asarray(energies)), _fft.rfft2(stack))


def _inner_size(outer_hw: tuple[int, int], scale: float, aspect: float) -> tuple[int, int]:
    H, W = outer_hw
    tw = round(scale * W)
    th = round(tw / aspect)
    if abs(th - H) <= 1:
        th = H
    return th, tw


def _stack_best(plan: _Plan, st: _Stack) -> np.ndarray:
    """Best normalised correlation of every template of ``st`` inside the plan's image."""
    from .kernels import window_maxima  # numba: imported where pairs are scored

    H, W = plan.img.shape
    corr = _fft.irfft2(st.spec * plan.spec, s=(H, W))
    return np.clip(window_maxima(corr, plan.s1, plan.s2, st.shapes, st.root_energy), -1.0, 1.0)


def _one_shape(a: View, b: View) -> bool:
    """Whether two pictures are of one shape (aspect ratios within :data:`SAME_SHAPE`): the
    picture as it is, one over the whole of the other, is then always read, both ways round."""
    return bool(abs(np.log(a.aspect / b.aspect)) <= SAME_SHAPE)


def _hypotheses(a: View, b: View, mirrors: bool = True) -> list[tuple[float, int, float, bool]]:
    """The :data:`TOP` best (correlation, direction, scale, flip) of the coarse search, best
    first: correlations compared to 4 decimals, then the larger scale, then search order;
    flipped ones only with ``mirrors``."""
    vals, dirs, scales = [], [], []
    for direction, (outer, inner) in enumerate(((a, b), (b, a))):
        st = inner.stack(outer.coarse.shape)
        if st is None:
            continue
        vals.append(_stack_best(outer.coarse_plan, st).astype(np.float64))  # [s0, s0 flipped, s1, ...]
        dirs.append(np.full(len(vals[-1]), direction))
        scales.append(np.repeat(st.scales, 2))
    if not vals:
        return []
    v, d, s = np.concatenate(vals), np.concatenate(dirs), np.concatenate(scales)
    flip = np.arange(len(v)) % 2 == 1
    if not mirrors:
        v = np.where(flip, -np.inf, v)
    # np.round of a float32 correlation is Python's round: no product of one lands on a half
    top = list(np.lexsort((-s, -np.round(v, 4)))[:TOP])
    # the picture as it is (two pictures of one shape, one over the whole of the other,
    # unmirrored) is always asked: a colour edit (a hue turn, a greyscale) changes the grey
    # image the search correlates, and a wrong scale may then correlate better than the frame
    # the copy never left. Asked both ways round: its residuals are read in one picture's
    # terms (the grid it is resampled to, its gain, the pixels that agree with it, the rectangle
    # pasted over it), and a pair's verdict must not depend on which of the two came first
    if _one_shape(a, b):
        top += [int(i) for i in np.flatnonzero((s == AS_IS[0]) & (flip == AS_IS[1])) if i not in top]
    return [(float(v[i]), int(d[i]), float(s[i]), bool(flip[i])) for i in top if np.isfinite(v[i])]


_SQUARE = np.ones((3, 3), np.uint8)  # the 3 x 3 neighbourhood of the masks' opening and growth


def _blur_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images (same shape) blurred by :data:`SIGMA` px: a Gaussian truncated at 4 sigma,
    edges repeated (OpenCV's separable filter: ten times faster than SciPy's on these small
    float images, and within 2e-7 of it)."""
    from .match_keypoints import _cv2

    cv2 = _cv2()
    k = 2 * int(4 * SIGMA + 0.5) + 1
    blur = [cv2.GaussianBlur(np.ascontiguousarray(x), (k, k), SIGMA, borderType=cv2.BORDER_REPLICATE) for x in (a, b)]
    return blur[0], blur[1]


def _opened(mask: np.ndarray) -> np.ndarray:
    """A boolean mask's 3 x 3 opening, outside the picture counted as unset (what SciPy's
    ``binary_opening`` gives, bit for bit, about 25 times faster)."""
    from .match_keypoints import _cv2

    cv2 = _cv2()
    return _grown(cv2.erode(mask.astype(np.uint8), _SQUARE, borderType=cv2.BORDER_CONSTANT, borderValue=0))


def _grown(mask: np.ndarray) -> np.ndarray:
    """A mask (bool or 0/1) grown by one pixel (3 x 3), as SciPy's ``binary_dilation`` grows it."""
    from .match_keypoints import _cv2

    cv2 = _cv2()
    return cv2.dilate(mask.astype(np.uint8), _SQUARE, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _largest_blob(mask: np.ndarray) -> int:
    """Pixels of a boolean mask's largest 4-connected blob (0 when it is empty)."""
    from .match_keypoints import _cv2

    cv2 = _cv2()
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


def _text_lines(off: np.ndarray) -> np.ndarray | None:
    """The boxes of the lines of text among the differing pixels ``off`` (bool), or None.

    Read like a page's lines, with the differing pixels as the marks
    (:func:`dedupdask.decode.text_line_bands`): a row is marked when more than 2 % of its pixels
    (at least 3) differ; consecutive marked rows form a band, and a band is a **line of text**
    when it is at most a sixth of the picture high and its rows start a differing run at least
    3 times on average (letters side by side; an added shape's outline crosses a row once or
    twice). Each line's box spans its differing columns, with a 1 px rim.
    """
    from .decode import text_line_bands
    from .kernels import ink_rows

    tops, bottoms, _ = text_line_bands(*ink_rows(off.view(np.uint8), 0, 0), off.shape[1])
    if not tops.size:
        return None
    lines = np.zeros(off.shape, bool)
    for top, bottom in zip(tops.tolist(), bottoms.tolist(), strict=True):
        cols = np.flatnonzero(off[top:bottom].any(axis=0))
        lines[max(top - 1, 0) : bottom + 1, max(int(cols[0]) - 1, 0) : int(cols[-1]) + 2] = True
    return lines


def _ink_runs(rgb: np.ndarray) -> float:
    """Runs of ink per row: pixels whose luma is more than :data:`BLOB_LEVEL` from the median."""
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    ink = np.abs(y - np.median(y)) > BLOB_LEVEL
    return float(ink[:, 0].sum() + (ink[:, 1:] & ~ink[:, :-1]).sum()) / max(ink.shape[0], 1)


def _added(a: np.ndarray, b: np.ndarray, lines: np.ndarray) -> np.ndarray | None:
    """The lines of text (:func:`_text_lines`) that one of the two aligned pictures added.

    In a line's box, each picture's ink (luma more than :data:`BLOB_LEVEL` from the box's
    median) is counted in runs per row. Text added over a picture crosses each row many times
    over what lay beneath (nothing, or a drawing's few outlines); a line is kept when one picture
    has at least :data:`TEXT_ADDED` times the other's runs (at least half of them new) and one
    run every other row. Content redrawn in both (the pips of two cards, two signs' symbols,
    two smileys' eyes) has as many runs in each and is not text added to a copy.
    """
    from scipy.ndimage import find_objects, label

    lab, _ = label(lines)
    kept = np.zeros(lines.shape, bool)
    for sl in find_objects(lab):
        ra, rb = _ink_runs(a[sl]), _ink_runs(b[sl])
        hi, lo = max(ra, rb), min(ra, rb)
        if hi >= 0.5 and hi >= TEXT_ADDED * lo:
            kept[sl] = True
    return kept if kept.any() else None


def _ground(rgb: np.ndarray) -> np.ndarray:
    """The plain ground of a picture: when one colour holds half or more of its outermost rows
    and columns (within :data:`BLOB_LEVEL` / 4: flat, as a texture or a photo's edge is not), the
    pixels within :data:`BLOB_LEVEL` / 2 of it (JPEG's ringing round a drawing's outlines
    included); none when no colour does."""
    colour = _ground_colour(rgb)
    if colour is None:
        return np.zeros(rgb.shape[:2], bool)
    return _abs_max(rgb - colour.astype(rgb.dtype)) <= BLOB_LEVEL / 2


def _ground_colour(rgb: np.ndarray) -> np.ndarray | None:
    """The colour of a picture's plain ground (:func:`_ground`: the median of its outermost rows
    and columns when half or more of them are within :data:`BLOB_LEVEL` / 4 of it), None when
    it has none. ``rgb`` in 0..1."""
    ring = _ring(rgb)
    return np.median(ring, axis=0) if _plain(ring) >= 0.5 else None


def _ring(x: np.ndarray) -> np.ndarray:
    """The outermost rows and columns of an (h, w, c) image, as (n, c) pixels."""
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def _near(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Whether two rows of pixels are within :data:`BLOB_LEVEL` of each other in every channel."""
    return np.abs(p - q).max(axis=-1) <= BLOB_LEVEL


def _plain(rgb: np.ndarray) -> float:
    """Share of pixels (n x 3) within :data:`BLOB_LEVEL` / 4 of their median colour."""
    return float((np.abs(rgb - np.median(rgb, axis=0)).max(axis=1) <= BLOB_LEVEL / 4).mean())


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """First row, row after the last, first column, column after the last of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _cuts(pic: np.ndarray, blobs: np.ndarray, content: np.ndarray, shown: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether the blobs cut ``pic`` in a straight line along a side of ``box`` (``y0, y1, x0,
    x1``, with its 1 px rim) that has room outside it (:func:`_pasted`). Along a side: where the
    blobs run straight (in their first row or column inside; for a short cut, either of their
    first two) and the picture goes on across the edge -- its content, unchanged 2 px outside
    (``shown``), of the colour it had inside (a rectangle cuts through the picture; a fill
    repainted within its outline ends at an edge the picture already had) -- over
    :data:`MIN_CUT` of the box's longer side, or over :data:`MIN_CROSSING` of it and all of
    where its content crosses that side but :data:`CROSSING_ENDS`. Rows, then columns (the
    arrays transposed)."""
    y0, y1, x0, x1 = box
    longer = max(y1 - y0, x1 - x0)
    pic_t = pic.transpose(1, 0, 2)
    for B, S, C, P, lo, hi, a0, a1 in (
        (blobs, shown, content, pic, y0, y1, x0, x1),
        (blobs.T, shown.T, content.T, pic_t, x0, x1, y0, y1),
    ):
        for first, second, outside in ((lo + 1, lo + 2, lo - 1), (hi - 2, hi - 3, hi)):
            if not 0 <= outside < len(B):
                continue
            out = S[outside, a0:a1] & _near(P[first, a0:a1], P[outside, a0:a1])
            one = int((B[first, a0:a1] & out).sum())
            two = int(((B[first, a0:a1] | B[second, a0:a1]) & out).sum())
            reach = int((C[first, a0:a1] & C[outside, a0:a1]).sum())
            if one >= MIN_CUT * longer or (two >= MIN_CROSSING * longer and two >= reach - CROSSING_ENDS):
                return True
    return False


def _pasted(a: np.ndarray, b: np.ndarray, changed: np.ndarray, blobs: np.ndarray, size: int) -> np.ndarray | None:
    """The box of a rectangle pasted over one of two aligned pictures, or None.

    The box is that of every blob (``blobs``: differing pixels that survived the opening). It
    is a pasted rectangle when it covers at most :data:`MAX_PASTED` of the overlap, is at least
    :data:`MIN_PASTED` of the picture wide and high, and, for one
    picture (the covered one): at least :data:`MIN_HIDDEN` of the box lay over its content
    (what is not its plain ground, :func:`_ground`), at most :data:`MAX_SHOWING` of that content
    is unchanged (``changed``, grown by 1 px: the rectangle is opaque), and along one side the
    blobs run straight, with the picture's content going on unchanged 2 px outside, over at
    least :data:`MIN_CUT` of the box's longer side, or over at least :data:`MIN_CROSSING` of it
    and all of where that side crosses the picture's content (the rectangle cuts the picture);
    and neither what it hides nor what it shows is a field of one colour (:data:`MAX_PLAIN`). An element
    drawn over a drawing lets what lay under its box's corners show; one drawn on the plain
    ground hides no content; a round or drawn outline touches its box at a point; content
    redrawn in both pictures (two rows of signs) is not cut along a side.
    """
    h, w = blobs.shape
    y0, y1, x0, x1 = _extent(blobs)
    y0, y1, x0, x1 = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)  # a 1 px rim
    if (y1 - y0) * (x1 - x0) > MAX_PASTED * size or y1 - y0 < MIN_PASTED * h or x1 - x0 < MIN_PASTED * w:
        return None
    grown = _grown(changed)
    for pic in (a, b):
        content = ~_ground(pic)
        inside = content[y0:y1, x0:x1]
        hidden = int(inside.sum())
        showing = int((inside & ~grown[y0:y1, x0:x1]).sum())
        cut = _cuts(pic, blobs, content, content & ~changed, (y0, y1, x0, x1))
        if hidden < MIN_HIDDEN * inside.size or showing > MAX_SHOWING * hidden or not cut:
            continue
        # both what the rectangle hides and what it shows are pictures, not one colour's field
        over = (b if pic is a else a)[y0:y1, x0:x1].reshape(-1, 3)
        if _plain(pic[y0:y1, x0:x1][inside]) <= MAX_PLAIN and _plain(over) <= MAX_PLAIN:
            box = np.zeros(blobs.shape, bool)
            box[y0:y1, x0:x1] = True
            return box
    return None


def _light_field(a: np.ndarray, p: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The smooth light field ``v`` (``[h, w]``) of ``a ~ v * p`` (``p``: a's prediction from the
    other picture under a global edit), or None when it is no light an editor or a lens casts.

    ``v`` is a product of quadratics in x and y (:data:`LIGHT_TERMS`), fitted by least squares
    over the overlap (``mask``, or all of ``a``), again on the pixels that fit (what is off far
    past the median -- an overlay, a redrawn detail -- is left out of the fit and stays off),
    pulled slightly towards no change. It is light when it stays positive and its brightest
    point is at most :data:`MAX_LIGHT` times its darkest over the overlap: a vignette, a
    gradient filter, uneven lighting change a picture's brightness smoothly across it, as no
    other content does.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.random((48, 64, 3)).astype(np.float32)
    >>> y, x = np.mgrid[-1:1:48j, -1:1:64j]
    >>> vignette = 1 - 0.25 * (x**2 + y**2)  # corners at half the centre
    >>> v = _light_field((vignette[..., None] * p).astype(np.float32), p, None)
    >>> float(np.abs(v - vignette).max()) < 1e-3
    True
    >>> _light_field(0.2 * p + (x > 0)[..., None] * p, p, None) is None  # one half lit 6x: no light
    True
    """
    from .match_keypoints import _fitting

    h, w = a.shape[:2]
    py = np.vander(np.linspace(-1.0, 1.0, h), LIGHT_TERMS, increasing=True)
    px = np.vander(np.linspace(-1.0, 1.0, w), LIGHT_TERMS, increasing=True)
    pp = np.einsum("ijc,ijc->ij", p, p, dtype=np.float64)
    ap = np.einsum("ijc,ijc->ij", a, p, dtype=np.float64)
    inside = np.ones((h, w), bool) if mask is None else mask
    keep = inside
    n = LIGHT_TERMS * LIGHT_TERMS
    still = np.zeros(n)
    still[0] = 1.0  # v = 1: no change
    for _ in range(2):
        wy = np.einsum("ik,im,ij->kmj", py, py, np.where(keep, pp, 0.0))
        m = np.einsum("kmj,jl,jn->klmn", wy, px, px).reshape(n, n)
        t = np.einsum("ik,ij,jl->kl", py, np.where(keep, ap, 0.0), px).reshape(n)
        ridge = 1e-4 * max(float(np.trace(m)) / n, 1e-9)
        c = np.linalg.solve(m + ridge * np.eye(n), t + ridge * still)
        v = py @ c.reshape(LIGHT_TERMS, LIGHT_TERMS) @ px.T
        off = _abs_max(a - v[..., None].astype(np.float32) * p)
        keep = inside & _fitting(off)
        if not keep.any():
            return None
    lo, hi = float(v[inside].min()), float(v[inside].max())
    if lo <= 0.0 or hi > MAX_LIGHT * lo:
        return None
    return v.astype(np.float32)


def _flat(x: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood stays within :data:`BLOB_LEVEL` / 4 in every channel."""
    from .match_keypoints import _cv2

    cv2 = _cv2()
    x = np.ascontiguousarray(x, np.float32)
    return _abs_max(cv2.dilate(x, _SQUARE) - cv2.erode(x, _SQUARE)) <= BLOB_LEVEL / 4


def _in_fills(a: np.ndarray, p: np.ndarray, r0: np.ndarray, r1: np.ndarray, mask: np.ndarray | None) -> bool:
    """Whether a light field read over two graphics is seen inside their fills.

    ``a`` and its prediction ``p`` from the other picture, with the residuals ``r0`` without the
    field and ``r1`` with it. In the fills (connected pixels where both ``a`` and ``p`` are flat,
    :data:`MIN_FILL` or more), the residual's spread about each fill's own mean must fall to at
    most :data:`LIGHT_SHARE` of what it was without the field. Light falling on a drawing grades
    each fill from one side to the other, and the field takes that grading away; two drawings
    whose fills are other flat shades (two flags of one layout) differ by a step at each fill's
    edge and not inside it, and a field bent to their steps adds a grading inside instead. A
    picture of fills has few of them: a field of nine numbers can come close to any few shades,
    so the fills' insides are where light and a repainting differ.

    Examples
    --------
    >>> p = np.zeros((48, 64, 3), np.float32)
    >>> p[:, :32], p[:, 32:] = 0.8, 0.3  # two fills
    >>> ramp = np.linspace(0.85, 1.15, 64, dtype=np.float32)[None, :, None]
    >>> a = ramp * p  # lit from the right
    >>> r0, r1 = a - p, a - ramp * p
    >>> _in_fills(a, p, r0, r1, None)
    True
    >>> shade = p * np.where(np.arange(64) < 32, 1.1, 0.9).astype(np.float32)[None, :, None]  # a step
    >>> _in_fills(shade, p, shade - p, shade - ramp * p, None)
    False
    """
    from .match_keypoints import _cv2

    flat = _flat(a) & _flat(p)
    if mask is not None:
        flat &= mask
    n, lab = _cv2().connectedComponents(flat.view(np.uint8), connectivity=4)
    n -= 1  # label 0 is what is not flat
    if n == 0:
        return False
    lab = lab.ravel()
    count = np.bincount(lab, minlength=n + 1).astype(np.float64)
    fill = count >= MIN_FILL
    fill[0] = False

    def spread(r: np.ndarray) -> float:
        total = 0.0
        for c in range(r.shape[2]):
            x = r[..., c].ravel().astype(np.float64)
            s, s2 = np.bincount(lab, x, minlength=n + 1), np.bincount(lab, x * x, minlength=n + 1)
            total += float((s2[fill] - s[fill] ** 2 / count[fill]).sum())
        return total

    before = spread(r0)
    return before > 0.0 and spread(r1) <= LIGHT_SHARE * before


def _global_edit(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, colour: bool | str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The two pictures blurred (:func:`_blur_pair`) and the residual of ``a`` under the global
    edit of :func:`_residuals` (``colour``: one brightness gain, the colour edit or
    :data:`CURVES`), zero outside ``mask``; ``a`` is ``b`` when the edit maps ``a`` onto ``b``
    (its residual is in ``b``'s colours). None when the edit is not one an editor makes."""
    a, b = _blur_pair(a, b)
    inside = slice(None) if mask is None else mask
    if colour:
        from .match_keypoints import channel_curves, colour_edit

        # with few hues a global edit cannot be told from a repainting: not fitted
        if colour == CURVES:
            d, edit = channel_curves(b[inside].reshape(-1, 3), a[inside].reshape(-1, 3))
        else:
            d, edit = colour_edit(b[inside].reshape(-1, 3), a[inside].reshape(-1, 3), signed=True, min_hues=FEW_HUES + 1)
        if not edit["plausible"]:
            return None
        if edit["swapped"]:
            a = b  # the edit maps a onto b: the residual is in b's colours
        r = np.zeros(a.shape, np.float32)
        r[inside] = d.reshape(r[inside].shape)
    else:
        x, y = b[inside].ravel(), a[inside].ravel()
        xm, ym = float(x.mean()), float(y.mean())
        vx = float(((x - xm) ** 2).mean())
        g = float(np.clip(((x - xm) * (y - ym)).mean() / max(vx, 1e-9), 0.5, 2.0))
        r = np.clip(a - (g * b + (ym - g * xm)), -1.0, 1.0)
    return a, b, r


def _residuals(
    a: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    colour: bool | str = False,
    text: bool = True,
    lit: bool | str = False,
    edits: dict[bool | str, Any] | None = None,
) -> tuple[float, float, float] | None:
    """(whole-overlap, worst-cell, largest-blob) residual of ``a ~ g * b + o``.

    The first two are residual energies relative to a's variance; the third is the area
    (fraction of the overlap) of the largest blob of pixels off by more than
    :data:`BLOB_LEVEL` that survives a 3 x 3 opening (JPEG ringing and 1-px edge misalignment
    are thin and vanish; a redrawn detail does not). ``mask`` (bool, a's shape): the overlap,
    when it is not the whole of a (a picture warped onto another); a cell of the grid less than
    a quarter inside it is not counted.

    With ``colour`` (True), ``g * b + o`` (one brightness gain shared by the channels) becomes the
    global colour edit of the keypoint matcher
    (:func:`~dedupdask.match_keypoints.colour_edit`: greyscale, sepia, hue, saturation, tone,
    fitted over the whole overlap, in the direction from the more colourful picture); None
    when the best such edit is not one an editor makes; with ``colour`` :data:`CURVES`, one
    curve per channel (:func:`~dedupdask.match_keypoints.channel_curves`: curves, levels,
    equalization; None for a picture of few hues). The residuals are read the same way:
    a part painted another colour is not a global edit, and stays a blob.

    With ``lit``, the global edit's prediction of ``a`` is also multiplied by a smooth light
    field (:func:`_light_field`: a vignette, a gradient filter, uneven light); None when the
    best field is no light, or, with ``lit`` :data:`IN_FILLS` (two graphics), when it does not
    take away most of the spread inside the flat fills (:func:`_in_fills`).

    ``edits``: the global edits (:func:`_global_edit`) already fitted to these two whole
    pictures, by ``colour``, kept and reused (a reading under light fits the same edit as the
    reading without it).

    With ``text`` (the default), lines of text one image added (:func:`_text_lines`,
    :func:`_added`; at most :data:`MAX_TEXT` of the overlap) and a rectangle pasted over one
    image (:func:`_pasted`; at most :data:`MAX_PASTED`) are each left out of another reading,
    and the best of the readings is returned.
    """
    from .kernels import centred_squares

    a0, b0 = a, b
    if edits is None or mask is not None:
        fitted = _global_edit(a, b, mask, colour)
    elif colour in edits:
        fitted = edits[colour]
    else:
        fitted = edits[colour] = _global_edit(a, b, mask, colour)
    if fitted is None:
        return None
    a, b, r = fitted
    if mask is None:
        var = max(float(centred_squares(a).mean()), 1e-6)
    else:
        av = a[mask]
        var = max(float(((av - av.mean(axis=0)) ** 2).mean()), 1e-6)
    if lit:
        unlit = _residual_score(_read(r, mask, var)[0])
        predicted = a - r  # the global edit's prediction of a
        v = _light_field(a, predicted, mask)
        if v is None:
            return None
        r_lit = np.clip(a - v[..., None] * predicted, -1.0, 1.0)
        if lit == IN_FILLS and not _in_fills(a, predicted, r, r_lit, mask):
            return None
        r = r_lit
        if mask is not None:
            r[~mask] = 0.0
    got, changed, off = _read(r, mask, var)
    blob = got[2]
    if lit and 1.0 - _residual_score(got) > LIGHT_SHARE * (1.0 - unlit):
        got = _NO_READING  # the light is not most of what differs: only a reading with less left out may count
    if not text or blob == 0:
        return None if got is _NO_READING else got
    h, w = r.shape[:2]
    size = h * w if mask is None else max(int(mask.sum()), 1)
    left_out = []
    lines = _text_lines(changed)
    if lines is not None:
        lines = _added(a0, b0, lines)
    if lines is not None:
        left_out.append((lines, MAX_TEXT))  # the text is not the picture
    box = None
    y0, y1, x0, x1 = _extent(off)
    wide = y1 - y0 >= MIN_PASTED * h and x1 - x0 >= MIN_PASTED * w
    # a pasted rectangle covers at most MAX_PASTED: when twice that differs, the pictures do
    if wide and np.count_nonzero(changed) <= 2 * MAX_PASTED * size:
        if not colour and not lit:
            # the brightness gain fitted again on the pixels that agree (a bright inset pulls
            # the first fit, and more of the picture then differs): where does it differ?
            changed, off = _changed_where(a, b, changed, mask)
        if off is not None:
            box = _pasted(a0, b0 if mask is None else np.where(mask[..., None], b0, a0), changed, off, size)
    if box is not None:
        left_out.append((box, MAX_PASTED))
    for out, most in left_out:
        keep = ~out if mask is None else mask & ~out
        if keep.sum() >= (1.0 - most) * size:
            again = _residuals(a0, b0, keep, colour=colour, text=False, lit=lit)
            if again is not None and _residual_score(again) > _residual_score(got):
                got = again
    return None if got is _NO_READING else got


def _read(r: np.ndarray, mask: np.ndarray | None, var: float) -> tuple[tuple[float, float, float], np.ndarray, np.ndarray]:
    """The residual triple of :func:`_residuals` from the residual image ``r`` (zero outside
    ``mask``) and a's variance, with the pixels off by more than :data:`BLOB_LEVEL` and their
    blobs (what survives a 3 x 3 opening)."""
    h, w, c = r.shape
    # per-pixel mean square and largest |r| over the channels, as slices (a reduction over
    # the 3-long last axis is several times slower, with the same result)
    r2 = r[..., 0] * r[..., 0]
    worst = np.abs(r[..., 0])
    for i in range(1, c):
        r2 += r[..., i] * r[..., i]
        np.maximum(worst, np.abs(r[..., i]), out=worst)
    r2 /= c
    if mask is not None:
        r2[~mask] = 0.0
        worst[~mask] = 0.0
    # mean of each cell of the GRID x GRID grid (empty cells of tiny images skipped), in float64
    ys = np.unique([i * h // GRID for i in range(GRID)] + [h])
    xs = np.unique([j * w // GRID for j in range(GRID)] + [w])
    sums = np.add.reduceat(np.add.reduceat(r2.astype(np.float64), ys[:-1], axis=0), xs[:-1], axis=1)
    if mask is None:
        cells = (sums / np.outer(np.diff(ys), np.diff(xs))).ravel().tolist()
        total, size = float(r2.mean()), r2.size
    else:
        n = np.add.reduceat(np.add.reduceat(mask.astype(np.float64), ys[:-1], axis=0), xs[:-1], axis=1)
        counted = n >= 0.25 * np.outer(np.diff(ys), np.diff(xs))
        cells = (sums[counted] / n[counted]).tolist()
        size = max(int(mask.sum()), 1)
        total = float(r2.sum()) / size
    changed = worst > BLOB_LEVEL
    blob = 0.0
    off = changed
    if off.any():
        off = _opened(off)
        blob = _largest_blob(off) / size
    return (total / var, max(cells, default=0.0) / var, blob), changed, off


def _changed_where(
    a: np.ndarray, b: np.ndarray, changed: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels off by more than :data:`BLOB_LEVEL` under ``a ~ g * b + o`` fitted on the pixels
    not ``changed`` under the first fit, and their blobs (the pixels that survive a 3 x 3
    opening; None when none does)."""
    agree = ~changed if mask is None else mask & ~changed
    n = 3 * np.count_nonzero(agree)
    if n >= 48:
        from .kernels import refitted_off

        changed = refitted_off(a, b, agree, BLOB_LEVEL)
        if mask is not None:
            changed &= mask
    off = _opened(changed)
    return changed, off if off.any() else None


def _abs_max(d: np.ndarray) -> np.ndarray:
    """Largest absolute value over the channels of an (h, w, c) array, by slices (a reduction
    over the short last axis is several times slower)."""
    m = np.abs(d[..., 0])
    for i in range(1, d.shape[-1]):
        np.maximum(m, np.abs(d[..., i]), out=m)
    return m


def _residual_score(r: tuple[float, float, float]) -> float:
    """``1 - max(residual, cell / 2, BLOB_WEIGHT * blob)`` of :func:`_residuals`' triple."""
    return 1.0 - max(r[0], r[1] / 2.0, r[2] * BLOB_WEIGHT)


def _refine(
    outer: View, inner: View, scale: float, flip: bool, memo: dict[tuple, Any] | None = None, *, whole: bool = False
) -> tuple[tuple[float, float, float], tuple[int, int, int, int], float] | None:
    """Residuals of the best fine alignment near ``scale``, that alignment (``dy, dx, th, tw``:
    where, at what size, the inner image lies in the outer one) and its normalised correlation,
    or None when there is none or its correlation is under :data:`FINE_REJECT` (unless
    ``whole``: the picture as it is is always read). ``memo`` (one per pair) keeps the
    correlations and residuals already computed: neighbouring hypotheses share scales."""
    memo = {} if memo is None else memo
    H, W = outer.grey.shape
    best: tuple[float, tuple[int, int, int, int]] | None = None
    for s in (scale, scale - 0.0125, scale + 0.0125):
        th, tw = _inner_size((H, W), s, inner.aspect)
        if th > H or tw > W or th < 4 or tw < 4:
            continue
        key = ("ncc", id(outer), flip, th, tw)
        got = memo.get(key, False)
        if got is False:
            tpl = inner.resized("grey", tw, th)
            m = _ncc(outer.fine_plan, tpl[:, ::-1] if flip else tpl)
            if m is None:
                got = None
            else:
                k = int(np.argmax(m))
                got = (float(m.flat[k]), divmod(k, m.shape[1]))
            memo[key] = got
        if got is None:
            continue
        if best is None or got[0] > best[0]:
            dy, dx = got[1]
            best = (got[0], (dy, dx, th, tw))
    if best is None or (best[0] < FINE_REJECT and not whole):
        return None
    dy, dx, th, tw = best[1]
    key = ("res", id(outer), flip, dy, dx, th, tw)
    if key not in memo:
        memo[key] = _aligned_residuals(outer, inner, flip, (dy, dx, th, tw))
    return memo[key], (dy, dx, th, tw), best[0]


def _aligned_residuals(
    outer: View, inner: View, flip: bool, at: tuple[int, int, int, int], *, colour: bool | str = False,
    lit: bool | str = False, edits: dict[bool | str, Any] | None = None,
) -> tuple[float, float, float] | None:
    """:func:`_residuals` of the inner image resized and placed at ``at`` in the outer one."""
    dy, dx, th, tw = at
    b = inner.resized("rgb", tw, th)
    return _residuals(outer.rgb[dy : dy + th, dx : dx + tw], b[:, ::-1] if flip else b, colour=colour, lit=lit, edits=edits)


def _colour_residuals(
    outer: View, inner: View, flip: bool, at: tuple[int, int, int, int], shared: dict[Any, Any],
    colour: bool | str = True, lit: bool | str = False,
) -> tuple[float, float, float] | None:
    """:func:`_aligned_residuals` under the colour edit, read once for both directions of two
    pictures of one size laid whole on each other, unmirrored (``shared``: one per pair). Those
    two readings compare the same pixels, and the colour edit is fitted from the more colourful
    picture onto the other whichever is outer (:func:`~dedupdask.match_keypoints.colour_edit`),
    its residuals read in the other's colours: the same triple (but for two pictures whose
    colours spread exactly as far, where each direction fits its own way round). ``colour``:
    the colour edit (True) or the channel curves (:data:`CURVES`), fitted the same way round;
    ``lit``: under a light field too."""
    edits = shared.setdefault(("edits", id(outer), id(inner), flip, at), {})  # fitted once, with light or without
    if flip or at != (0, 0, *outer.grey.shape) or inner.grey.shape != outer.grey.shape:
        return _aligned_residuals(outer, inner, flip, at, colour=colour, lit=lit, edits=edits)
    key = (frozenset((id(outer), id(inner))), colour, lit)
    if key not in shared:
        shared[key] = _aligned_residuals(outer, inner, flip, at, colour=colour, lit=lit, edits=edits)
    return shared[key]


def match_score(
    a: Prepared, b: Prepared, *, early_accept: float | None = None, keypoints: bool = True
) -> float:
    """How well ``b`` is a resized/recompressed/brightened/flipped/cropped ``a``, or vice versa.

    Parameters
    ----------
    a, b : Prepared
        The two images (:func:`prepare_image`).
    early_accept : float, optional
        Stop at the first alignment scoring this much (the run's
        :attr:`dedupdask.thresholds.Thresholds.early_accept`); None tries every one.

    Returns
    -------
    float
        ``1 - max(residual, cell / 2, 75 * blob)`` of the best alignment (1 = same pixels; <= 0 = no
        alignment explains the pair); see the module docstring.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    >>> round(match_score(Prepared(128, 96, img), Prepared(128, 96, img[:, ::-1])), 3)
    1.0
    """
    return record_views(View(a), View(b), early_accept, keypoints=keypoints).score


def match_record(
    a: Prepared, b: Prepared, *, early_accept: float | None = None, keypoints: bool = True
) -> MatchRecord:
    """:func:`match_score` with what it found: the matcher, the alignment and the sub-scores.

    Examples
    --------
    >>> from dedupdask.datasets import random_picture
    >>> img = np.asarray(random_picture(np.random.default_rng(3), (256, 192)))
    >>> r = match_record(Prepared(256, 192, img), Prepared(192, 160, img[16:176, 32:224]))  # a crop
    >>> r.matcher, r.score >= 0.9  # the crop's corners (0, 0) and (1, 1) on the picture:
    ('pixel', True)
    >>> np.round(r.homography @ [0, 0, 1], 3).tolist(), np.round(r.homography @ [1, 1, 1], 3).tolist()
    ([0.125, 0.083, 1.0], [0.875, 0.917, 1.0])
    """
    return record_views(View(a), View(b), early_accept, keypoints=keypoints)


def score_views(va: View, vb: View, early_accept: float | None, *, keypoints: bool = True) -> float:
    """:func:`record_views`' score."""
    return record_views(va, vb, early_accept, keypoints=keypoints).score


def record_views(va: View, vb: View, early_accept: float | None, *, keypoints: bool = True) -> MatchRecord:
    """The better of the pixel alignment and (with ``keypoints``) the keypoint matcher; the
    keypoint matcher is asked only when the pixel alignment scored under ``early_accept``.
    A pair of two graphics, which the keypoint matcher does not decide, gets the pixel
    alignment's residuals under the keypoint warp instead (:func:`warped_score`). A pair that
    neither scored ``early_accept`` is also read under a turn found from the pixels
    (:func:`turned_record`, started from the pixel alignment's placement). Last, a pair still
    under ``early_accept`` although its pixels agree but for details (:data:`FINER_GATE`) is
    read again by the pixel alignment at :data:`FINER` px, which counts only at
    :data:`FINER_CLEAR`: the dearest reading, asked of the fewest pairs."""
    pixel = best = _pixel_match(va, vb, early_accept)
    if early_accept is not None and best.score >= early_accept:
        return best
    if keypoints:
        best = _better(best, _keypoint_record(va, vb))
    if early_accept is None or best.score < early_accept:
        best = _better(best, turned_record(va, vb, pixel.homography))
    if early_accept is None or best.score < early_accept:
        best = _better(best, far_turned_record(va, vb))
    unsure = early_accept is None or best.score < early_accept
    if unsure and 1.0 - pixel.residual >= FINER_GATE:  # NaN (nothing aligned): False
        finer = _finer_record(va, vb, pixel)
        if finer.score >= FINER_CLEAR:
            best = _better(best, finer)
    if early_accept is None or best.score < early_accept:
        best = _better(best, turned_over_record(va, vb, early_accept, as_shown=pixel.score))
    return best


# The six ways a picture can be shown (EXIF's eight orientations) but the two the pixel
# alignment reads itself (as it is, mirrored): how the second picture's pixels are turned
# (numpy, on [h, w, ...] arrays) and the map of its normalised coordinates (x / width,
# y / height) onto the turned picture's; a map with a zero top-left entry swaps the axes.
_TURNED_OVER = (
    (lambda x: np.rot90(x, 1), np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),  # a quarter, anticlockwise
    (lambda x: x[::-1, ::-1], np.array([[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0], [0.0, 0.0, 1.0]])),  # a half
    (lambda x: np.rot90(x, -1), np.array([[0.0, -1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])),  # a quarter, clockwise
    (lambda x: np.swapaxes(x, 0, 1), np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])),  # transposed
    (lambda x: np.swapaxes(x[::-1, ::-1], 0, 1), np.array([[0.0, -1.0, 1.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),
    (lambda x: x[::-1], np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, 1.0]])),  # upside down, mirrored
)


def turned_over_record(va: View, vb: View, early_accept: float | None, *, as_shown: float = -1.0) -> MatchRecord:
    """The pixel alignment of the first picture and the second shown another way -- turned by a
    quarter, a half or three quarters, mirrored or not, or upside down (the eight orientations a
    photo's tag can give it, but the two the alignment reads itself) -- whole onto whole, for a
    pair with a photo in it: a plain photo shown on its side (a lost or added orientation tag)
    has too few corners for the keypoint matcher, which reads the same turns
    (:data:`~dedupdask.match_keypoints.QUARTER_TURNS`). Only a way that leaves the two pictures
    of one shape (:data:`SAME_SHAPE`) and correlating at 48 px (:data:`COARSE_REJECT`) is read,
    by :func:`_pixel_match`'s rules. Two graphics are not: a drawing turned over is another
    drawing (an arrow pointing elsewhere). And the way must explain the pair: its ``1 - score``
    at most half the pixel alignment's of the pictures as shown (``as_shown``). Two plain
    pictures that agree nearly as well either way (two soft grey textures) are alike in every
    orientation, and turning them is no evidence. -1 when no way is read or none explains.

    Examples
    --------
    >>> from dedupdask.datasets import random_picture
    >>> img = np.asarray(random_picture(np.random.default_rng(2), (256, 192)))
    >>> v = lambda x: View(Prepared(x.shape[1], x.shape[0], np.ascontiguousarray(x)))
    >>> r = turned_over_record(v(img), v(np.rot90(img)), None)
    >>> r.matcher, r.score >= 0.9, np.round(r.homography @ [0, 0, 1], 3).tolist()  # its corner (0, 0)
    ('pixel', True, [1.0, 0.0, 1.0])
    """
    if _two_graphics(va, vb):
        return MatchRecord()
    h, w = va.coarse.shape
    p = vb._prepared
    best = MatchRecord()
    for turned, M in _TURNED_OVER:
        sideways = M[0, 0] == 0.0  # width and height swap places
        if abs(np.log(va.aspect * (vb.aspect if sideways else 1.0 / vb.aspect))) > SAME_SHAPE:
            continue  # of other shapes once turned
        if _corr(va.coarse, _resize(np.ascontiguousarray(turned(vb.coarse)), w, h)) < COARSE_REJECT:
            continue
        size = (p.height, p.width) if sideways else (p.width, p.height)
        got = _pixel_match(va, View(Prepared(*size, np.ascontiguousarray(turned(p.rgb))), va.fine), early_accept)
        if got.homography is not None:
            got.homography = _unit(got.homography @ M)
        best = _better(best, got)
        if early_accept is not None and best.score >= early_accept:
            break
    return best if 1.0 - best.score <= 0.5 * (1.0 - as_shown) else MatchRecord()


def _finer_record(va: View, vb: View, pixel: MatchRecord) -> MatchRecord:
    """The pixel alignment's record ``pixel`` (of the two whole pictures) read again at
    :data:`FINER` px: its placement refined there (scale +-1.25 %) and its residuals computed
    again, under the colour edit when ``pixel`` was read under one; and, for two pictures of
    one shape, the picture as it is, both ways round, as at 128 px (:data:`AS_IS`: a mark that
    sank the picture as it is at 128 px may have left a slightly other scale best there); a
    stretched reading (two shapes, whole onto whole: :func:`_stretched`) again stretched. -1
    when neither picture has more pixels than its 128 px view, or ``pixel`` is no alignment of
    the whole pictures (inside frames, or none)."""
    fa, fb = va.finer, vb.finer
    if (fa is None and fb is None) or pixel.matcher != "pixel" or pixel.homography is None:
        return MatchRecord()
    fa, fb = fa or va, fb or vb
    H = pixel.homography  # second picture -> first, normalised: the inner one's box in the outer
    flip, span = bool(H[0, 0] < 0), abs(float(H[0, 0]))
    reads = [(0, span, flip)] if span <= 1 else [(1, 1 / span, flip)]
    if _one_shape(va, vb):
        reads += [(0, *AS_IS), (1, *AS_IS)]
    elif np.allclose(H, np.eye(3)):  # stretched, whole onto whole (scale None): read so again
        reads = [(0, None, False), (1, None, False)]
    readings = {_form_name(f, lit): (f, lit) for f in (False, True, CURVES) for lit in (False, True)}
    form, lit = readings.get(pixel.colour, (False, False))  # read under the same edit (and light) again
    if lit and _two_graphics(va, vb):
        lit = IN_FILLS
    best, memo, shared = MatchRecord(), {}, {}
    for direction, scale, flip in dict.fromkeys(reads):  # the placement's own read may be the picture as it is
        outer, inner = (fa, fb) if direction == 0 else (fb, fa)
        got = _stretched(outer, inner) if scale is None else _refine(outer, inner, scale, flip, memo, whole=True)
        if got is None:
            continue
        r = _colour_residuals(outer, inner, flip, got[1], shared, form, lit) if form or lit else got[0]
        placed = _placed(outer, inner, flip, got[1], direction == 0)
        best = _better(best, _pixel_record(r, matcher="pixel", homography=placed, colour=pixel.colour))
    return best


def _a_graphic(va: View, vb: View) -> bool:
    """Whether either picture is a graphic (:func:`~dedupdask.match_keypoints.is_graphic`):
    a pair not read under channel curves (:data:`CURVES`)."""
    ka, kb = va.keypoints, vb.keypoints
    return bool(is_graphic(ka.flat, ka.uniform) or is_graphic(kb.flat, kb.uniform))


def _two_graphics(va: View, vb: View) -> bool:
    """Whether both pictures are graphics (:func:`~dedupdask.match_keypoints.is_graphic`), a
    pair the keypoint matcher's rules do not decide."""
    ka, kb = va.keypoints, vb.keypoints
    return bool(is_graphic(min(ka.flat, kb.flat), min(ka.uniform, kb.uniform)))


def _keypoint_record(va: View, vb: View) -> MatchRecord:
    """The keypoint matcher's record; for two graphics, the pixel residuals under its warp."""
    ka, kb = va.keypoints, vb.keypoints
    if _two_graphics(va, vb):
        return warped_record(va, vb)
    m = match_keypoints(ka, kb)
    if m.homography is None:
        return MatchRecord(float(m.score), inliers=int(m.inliers))
    H = np.linalg.inv(_norm(ka.grey.shape)) @ m.homography @ _norm(kb.grey.shape)
    return MatchRecord(float(m.score), "keypoints", _unit(H), inliers=int(m.inliers),
                       differing=float(m.differing), colour=str((m.colour or {}).get("form", "")))  # fmt: skip


def _to_fine(kp_hw: tuple[int, ...], fine_hw: tuple[int, ...]) -> np.ndarray:
    """Pixel coordinates at the keypoint size -> at the fine size (pixel centres kept)."""
    sy, sx = fine_hw[0] / kp_hw[0], fine_hw[1] / kp_hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _corner_shift(W: np.ndarray, V: np.ndarray, hw: tuple[int, int]) -> float:
    """Largest distance (px) between where two warps send the corners of an ``hw`` frame."""
    h, w = hw
    c = np.array([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [w, h, 1.0], [0.0, h, 1.0]]).T
    p, q = W.astype(np.float64) @ c, V.astype(np.float64) @ c
    return float(np.max(np.hypot(*(p[:2] / p[2] - q[:2] / q[2]))))


def warped_score(va: View, vb: View) -> float:
    """:func:`warped_record`'s score (see there)."""
    return warped_record(va, vb).score


def warped_record(va: View, vb: View) -> MatchRecord:
    """The pixel alignment's score of a pair under the keypoint matcher's plane warp.

    The pixel alignment's own geometry is a scale, a shift and a flip; a copy turned by a few
    degrees, stretched or put in perspective has no such alignment. When keypoints agree on a
    plane warp without a mirror (:func:`~dedupdask.match_keypoints.plane_warp`), the warp is
    refined on the grey pixels (ECC: keypoints place it to a pixel or two, thin strokes need a
    fraction of one), the picture that lies more inside the other is kept as the frame, the
    other is warped onto it, and the residuals are those of the pixel alignment (one
    brightness gain, the whole overlap, the worst cell, the largest blob) on the part both
    show: as strict on content as the pixel alignment, so two cards of a deck stay apart. -1
    when keypoints find no such warp. Mirror images stay the pixel alignment's (an exact
    horizontal flip): a drawing's mirror image is often a drawing of its own, an arrow
    pointing the other way, an ornament for the other corner.

    Examples
    --------
    >>> import cv2
    >>> rng = np.random.default_rng(1)
    >>> card = np.full((192, 256, 3), 255, np.uint8)  # a graphic: flat fills on white
    >>> for _ in range(12):
    ...     pts = rng.integers(20, (236, 172), (5, 2)).astype(np.int32)
    ...     _ = cv2.fillPoly(card, [pts], rng.integers(0, 255, 3).tolist())
    >>> turned = cv2.warpAffine(card, cv2.getRotationMatrix2D((128, 96), 8, 1.12), (256, 192),
    ...                         borderValue=(255, 255, 255))
    >>> v = lambda x: View(Prepared(x.shape[1], x.shape[0], x))
    >>> warped_score(v(card), v(turned)) >= 0.9, warped_score(v(card), v(cv2.resize(card, (256, 150)))) >= 0.9
    (True, True)
    >>> other = card.copy(); other[150:180, 180:240] = (0, 120, 0)  # a detail redrawn
    >>> warped_score(v(card), v(other)) < 0.9
    True
    >>> warped_record(v(card), v(turned)).matcher
    'warped'
    """
    import cv2

    w = plane_warp(va.keypoints, vb.keypoints, mirrors=False)
    if w is None:
        return MatchRecord()
    assert w.homography is not None  # plane_warp returns a warp or None
    F = _to_fine(va.keypoints.grey.shape, va.grey.shape) @ w.homography
    F = F @ np.linalg.inv(_to_fine(vb.keypoints.grey.shape, vb.grey.shape))  # b -> a, fine px
    best: tuple[float, View, View, np.ndarray, np.ndarray] | None = None
    for frame, other, M in ((va, vb, F), (vb, va, np.linalg.inv(F))):
        mask = _held(frame, other, M, forward=True)
        if best is None or mask.mean() > best[0]:
            best = (float(mask.mean()), frame, other, M, mask)
    assert best is not None
    _, frame, other, M, mask = best
    h, wd = frame.grey.shape
    # frame -> other, as ECC and an inverse-mapped warp take it
    W = np.linalg.inv(M)
    W = (W / W[2, 2]).astype(np.float32)
    # keypoints place the warp to a pixel or two; thin strokes need it to a fraction of one
    try:
        _, refined = cv2.findTransformECC(
            frame.grey, other.grey, W, cv2.MOTION_HOMOGRAPHY, (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, ECC_STEPS, 1e-4), None, 1
        )
        # a refinement stays within the keypoints' tolerance; on a plain picture ECC drifts
        if _corner_shift(W, refined, (h, wd)) <= ECC_MAX_SHIFT:
            W = refined
            mask = _held(frame, other, W)
    except cv2.error:
        pass  # did not converge: the keypoints' warp stands
    # the frame is the picture that lies inside the other: the other covers it, as a copy does
    if mask.mean() < MIN_CONTAINED:
        return MatchRecord(inliers=int(w.inliers))
    return _warped_residuals(va, frame, other, W, mask, matcher="warped", inliers=int(w.inliers))


def _held(frame: View, other: View, M: np.ndarray, *, forward: bool = False) -> np.ndarray:
    """Which of ``frame``'s pixels (uint8 0/1) ``other`` covers under the warp ``M``: frame px ->
    other px, as ECC and an inverse-mapped warp take it (``forward``: other px -> frame px)."""
    import cv2

    h, wd = frame.grey.shape
    flags = cv2.INTER_NEAREST if forward else cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    return cv2.warpPerspective(np.ones(other.grey.shape, np.uint8), M, (wd, h), flags=flags)


def _warped_residuals(va: View, frame: View, other: View, W: np.ndarray, mask: np.ndarray, **kw: Any) -> MatchRecord:
    """The pixel alignment's residuals of ``other`` warped onto ``frame`` by ``W`` (frame px ->
    other px, as ECC and an inverse-mapped warp take it) over ``mask`` (the part both show),
    under its brightness gain and under a global colour edit; the record maps the second
    picture of the pair (``va`` is the first) onto the first."""
    import cv2

    h, wd = frame.grey.shape
    # the blur reaches 2 px past the overlap's edge: those pixels are not compared
    inside = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
    warped = cv2.warpPerspective(other.rgb, W.astype(np.float32), (wd, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    # frame -> other in normalised coordinates; the record maps the second picture onto the first
    N = np.linalg.inv(_norm(other.grey.shape)) @ W.astype(np.float64) @ _norm(frame.grey.shape)
    kw["homography"] = _unit(np.linalg.inv(N) if frame is va else N)
    best = _pixel_record(_residuals(frame.rgb, warped, inside), **kw)
    if best.score < 1.0:
        best = _with_colour_edit(best, _residuals(frame.rgb, warped, inside, colour=True), **kw)
        if not _a_graphic(frame, other):
            best = _with_colour_edit(best, _residuals(frame.rgb, warped, inside, colour=CURVES), form=CURVES, **kw)
    if best.matcher == "":  # no residuals under the warp: the warp found, scored -1
        best = MatchRecord(**kw)
    best.score = max(best.score, -1.0)
    return best


def turned_record(
    va: View, vb: View, seed: np.ndarray | None = None, *, max_turn: float | None = None, read: bool = True
) -> MatchRecord:
    """The pixel alignment's score of a pair under a turn found from the pixels themselves, for
    copies too plain for keypoints (an object on white, a smooth wallpaper).

    The alignment ``seed`` (a record's homography: the second picture's normalised coordinates
    onto the first's; by default the whole picture onto the whole) is refined on the grey
    pixels by ECC under an affine warp (the two pictures' correlation, free of brightness and
    contrast, maximised from the seed), at half size and then at :data:`FINE`, with the picture
    lying inside the other as the template (and the other way round when ECC does not converge).
    When the refined correlation reaches :data:`DENSE_MIN_CC`, the warp moves a corner more than
    :data:`SAME_PLACEMENT` from the seed (else the pixel alignment read it; unless ``read`` is
    False: a seed it did not read, :func:`far_turned_record`'s), is a turn of at most
    ``max_turn`` degrees (by default :data:`MAX_DENSE_TURN`) with a resize (no mirror; within
    :data:`ECC_MAX_SHIFT` px of one, :func:`_unturned`) and one picture lies at least
    :data:`~dedupdask.match_keypoints.MIN_CONTAINED` inside the other, the residuals are read as
    under the keypoints' warp (:func:`warped_record`): as strict on content. -1 otherwise.

    Examples
    --------
    >>> import cv2
    >>> from dedupdask.datasets import random_picture
    >>> img = np.asarray(random_picture(np.random.default_rng(2), (256, 192)))
    >>> turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((128, 96), 7, 1.2), (256, 192))
    >>> v = lambda x: View(Prepared(x.shape[1], x.shape[0], x))
    >>> r = turned_record(v(img), v(turned))
    >>> r.matcher, r.score >= 0.9
    ('pixel_turned', True)
    >>> turned_record(v(img), v(np.asarray(random_picture(np.random.default_rng(5), (256, 192))))).score
    -1.0
    """
    import cv2

    from .match_keypoints import turn

    H = np.eye(3) if seed is None else np.asarray(seed, np.float64)
    F = _norm(va.grey.shape) @ H @ np.linalg.inv(_norm(vb.grey.shape))  # the second's px -> the first's

    def ecc(frame: View, other: View, W: np.ndarray) -> tuple[float, np.ndarray] | None:
        """ECC from ``W`` at half size (the search reaches farther turns), then at full size;
        None when it does not converge."""
        W = np.float32((W / W[2, 2])[:2])
        steps = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, DENSE_STEPS, 1e-4)
        half = [cv2.resize(x.grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for x in (frame, other)]
        try:
            cc, W = cv2.findTransformECC(half[0], half[1], np.float32(W * [[1, 1, 0.5]]), cv2.MOTION_AFFINE, steps, None, 5)
            if cc < FINE_REJECT:  # converged, too weak (under DENSE_MIN_CC): no other start tried
                return cc, W
            return cv2.findTransformECC(frame.grey, other.grey, np.float32(W * [[1, 1, 2]]), cv2.MOTION_AFFINE, steps, None, 5)
        except cv2.error:
            return None

    # ECC's template is the picture lying more inside the other under the seed (every pixel
    # compared); when ECC does not converge from it, the other one
    pairs = [(va, vb, np.linalg.inv(F)), (vb, va, F)]
    pairs.sort(key=lambda p: -float(_held(*p).mean()))
    for frame, other, W0 in pairs:
        got = ecc(frame, other, W0)
        if got is not None:
            break
    else:
        return MatchRecord()
    cc, refined = got
    W = np.vstack([refined, [0.0, 0.0, 1.0]]).astype(np.float64)
    if not np.isfinite(W).all() or abs(np.linalg.det(W[:2, :2])) < 1e-6 or cc < DENSE_MIN_CC:
        return MatchRecord()
    if read and seed is not None and _corner_shift(W, W0 / W0[2, 2], frame.grey.shape) <= SAME_PLACEMENT:
        return MatchRecord()  # the seed's own placement, which the pixel alignment has read
    degrees, mirrored = turn(W, frame.grey.shape)
    if mirrored or abs(degrees) > (MAX_DENSE_TURN if max_turn is None else max_turn) or _unturned(W[:2, :2], frame.grey.shape) > ECC_MAX_SHIFT:
        return MatchRecord()
    # the frame is the picture that lies inside the other under the refined warp
    frame, other, M = max([(frame, other, W), (other, frame, np.linalg.inv(W))], key=lambda p: float(_held(*p).mean()))
    mask = _held(frame, other, M)
    if mask.mean() < MIN_CONTAINED:
        return MatchRecord()
    return _warped_residuals(va, frame, other, M, mask, matcher="pixel_turned")


def _unturned(A: np.ndarray, hw: tuple[int, ...]) -> float:
    """How far (px, the largest over the corners of an ``hw`` frame about its centre) the linear
    map ``A`` is from the nearest turn with a resize (a scaled rotation, which keeps the
    picture's proportions): what an affine warp adds to a turned copy -- a stretch, a slant --
    and what fits one object onto another of other proportions, or one smooth picture onto
    another.

    Examples
    --------
    >>> import cv2
    >>> round(_unturned(cv2.getRotationMatrix2D((0, 0), 8, 1.1)[:, :2], (96, 128)), 3)
    0.0
    >>> round(_unturned(np.diag([1.0, 0.92]), (96, 128)), 1)  # squeezed by 8 %
    3.2
    """
    h, w = hw[0], hw[1]
    p, q = (A[0, 0] + A[1, 1]) / 2, (A[1, 0] - A[0, 1]) / 2  # the nearest scaled rotation
    corners = np.array([[-w, w, w, -w], [-h, -h, h, h]], np.float64) / 2
    return float(np.hypot(*((A - [[p, -q], [q, p]]) @ corners)).max())


def spectral_turn(a: np.ndarray, b: np.ndarray) -> float:
    """The turn (degrees, anticlockwise as shown) that brings grey picture ``b`` to ``a``'s
    orientation, read from their spectra (Fourier-Mellin).

    A shift or a crop of a picture leaves the magnitude of its spectrum where it was, and a turn
    turns it: in log-polar coordinates a turn is a shift along the angles, which a phase
    correlation finds. Each picture's central square is resized to :data:`SPECTRUM` px and
    windowed (Hann: the square's edges, which do not turn with the picture, would otherwise
    draw lines through the spectrum), and the log magnitudes are weighted up with the frequency
    (fine texture turns as clearly as coarse shapes). The spectrum of a real picture is
    symmetric: a turn is read modulo a half turn, within +-90 degrees.

    Examples
    --------
    >>> import cv2
    >>> from dedupdask.datasets import random_picture
    >>> img = np.asarray(random_picture(np.random.default_rng(1), (192, 192)).convert("L"), np.float32) / 255
    >>> turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((96, 96), -25, 1.0), (192, 192))
    >>> round(spectral_turn(img[48:144, 48:144], turned[48:144, 48:144]) / 5) * 5
    25
    """
    return _turn_between(_log_polar(a), _log_polar(b))


def _turn_between(pa: np.ndarray, pb: np.ndarray) -> float:
    """:func:`spectral_turn` of two pictures' :func:`_log_polar` spectra: the phase correlation's
    shift along the angles, in degrees."""
    import cv2

    (_, shift), _ = cv2.phaseCorrelate(pa, pb)
    return float(shift * 180.0 / SPECTRUM)


def _log_polar(grey: np.ndarray) -> np.ndarray:
    """The log-polar log magnitude spectrum of a grey picture's central square, weighted up with
    the frequency (:func:`spectral_turn`): :data:`SPECTRUM` angles over a half turn (the rest
    repeats them) by :data:`SPECTRUM` radii."""
    import cv2

    n = SPECTRUM
    y, x = np.mgrid[-0.5 : 0.5 : 1 / n, -0.5 : 0.5 : 1 / n]
    low = np.cos(np.pi * x) * np.cos(np.pi * y)
    emphasis = ((1 - low) * (2 - low)).astype(np.float32)
    h, w = grey.shape
    side = min(h, w)
    sq = grey[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    sq = cv2.resize(np.ascontiguousarray(sq, np.float32), (n, n), interpolation=cv2.INTER_AREA)
    windowed = (sq - sq.mean()) * cv2.createHanningWindow((n, n), cv2.CV_32F)
    mag = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(windowed)))).astype(np.float32)
    lp = cv2.warpPolar(mag * emphasis, (n, 2 * n), (n / 2, n / 2), n / 2, cv2.WARP_POLAR_LOG | cv2.INTER_LINEAR)
    return np.ascontiguousarray(lp[:n])


def _straightened(v: View, degrees: float) -> tuple[View, np.ndarray]:
    """Picture ``v`` turned by ``degrees`` (anticlockwise as shown) about its centre, and the map
    of the turned view's normalised coordinates onto ``v``'s. A picture on a plain ground
    (:func:`_ground`: one colour holds half its outermost rows and columns) is turned on it, the
    corners filled with that colour, as an editor turns a drawing or an object on white; any
    other is cut to the largest box of its shape that the turn leaves whole, as an editor's
    straighten tool cuts a photo."""
    import cv2

    rgb = v.keypoints.rgb  # the 256 px picture: turned at 128 px, the view loses detail twice
    h, w = rgb.shape[:2]
    R = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), [0.0, 0.0, 1.0]])
    ground = _ground_colour(rgb.astype(np.float32) / 255.0)
    if ground is not None:
        fill = tuple(float(c) * 255.0 for c in ground)
        turned = cv2.warpAffine(rgb, R[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        k, x0, y0, cw, ch = 1.0, 0, 0, w, h
    else:
        c, s = abs(np.cos(np.radians(degrees))), abs(np.sin(np.radians(degrees)))
        k = min(w, h) / (max(w, h) * s + min(w, h) * c)
        cw, ch = max(4, round(w * k)), max(4, round(h * k))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        turned = cv2.warpAffine(rgb, R[:2], (w, h), flags=cv2.INTER_LINEAR)[y0 : y0 + ch, x0 : x0 + cw]
    width, height = v._size
    view = View(Prepared(max(1, round(width * k)), max(1, round(height * k)), np.ascontiguousarray(turned)), v.fine)
    T = np.diag([1.0 / w, 1.0 / h, 1.0]) @ np.linalg.inv(R) @ np.array([[cw, 0.0, x0], [0.0, ch, y0], [0.0, 0.0, 1.0]])
    return view, T


def far_turned_record(va: View, vb: View) -> MatchRecord:
    """:func:`turned_record` for a copy turned farther than ECC reaches from the pixel
    alignment's placement (:data:`MAX_DENSE_TURN`; up to :data:`MAX_FAR_TURN` degrees), too plain
    for keypoints: a wallpaper or a smooth photo turned by 20 or 30 degrees and cropped.

    The turn is read from the two pictures' spectra (:func:`spectral_turn`); each picture in
    turn is turned to the other's orientation (on its plain ground, or cut to what stays whole:
    :func:`_straightened`), and the pixel alignment's own search places it in the other (or the
    other in it) -- the scale and the shift, unmirrored. When the better search correlates
    (:data:`COARSE_REJECT` at 48 px, :data:`FINE_REJECT` at 128), the placement composed with the
    turn is the start from which :func:`turned_record` refines the warp on the pictures
    themselves and reads the residuals, by its rules (a turn with a resize, one picture inside
    the other, as strict on content). Two graphics are turned by at most the keypoint warp's
    :data:`~dedupdask.match_keypoints.MAX_TURN`, which keeps which way is up: an arrow turned by
    45 degrees points another way, as icon sets draw their arrows. -1 when the spectra read a
    turn under :data:`FAR_FROM` (ECC reaches it from the placement) or over
    :data:`MAX_FAR_TURN`, or none of these holds.

    Examples
    --------
    >>> import cv2
    >>> from dedupdask.datasets import random_picture
    >>> img = np.asarray(random_picture(np.random.default_rng(3), (256, 192)))
    >>> M = cv2.getRotationMatrix2D((128, 96), 28, 1.0)
    >>> turned = cv2.warpAffine(img, M, (256, 192))[40:152, 52:204]  # turned, cut to what stays whole
    >>> v = lambda x: View(Prepared(x.shape[1], x.shape[0], np.ascontiguousarray(x)))
    >>> turned_record(v(img), v(turned)).score  # ECC started unturned does not reach 28 degrees
    -1.0
    >>> r = far_turned_record(v(img), v(turned))
    >>> r.matcher, r.score >= 0.9
    ('pixel_turned', True)
    """
    degrees = _turn_between(va.spectrum, vb.spectrum)  # each picture's spectrum read once
    if not FAR_FROM <= abs(degrees) <= MAX_FAR_TURN:
        return MatchRecord()
    # the copy may be either picture: each is turned to the other's orientation in turn, and
    # the search places it (a copy turned and cut to what stayed whole is then the other
    # picture as it is; cut further, inside it)
    best = None
    for turned_a in (False, True):
        turned, T = _straightened(va, -degrees) if turned_a else _straightened(vb, degrees)
        first, second = (turned, vb) if turned_a else (va, turned)
        hyps = _hypotheses(first, second, mirrors=False)
        if hyps and hyps[0][0] >= COARSE_REJECT and (best is None or hyps[0][0] > best[0][0]):
            best = (hyps[0], first, second, turned_a, T)
    if best is None:
        return MatchRecord()
    (_, direction, scale, _), first, second, turned_a, T = best
    outer, inner = (first, second) if direction == 0 else (second, first)
    got = _refine(outer, inner, scale, False)
    if got is None:
        return MatchRecord()
    placed = _placed(outer, inner, False, got[1], direction == 0)  # second -> first, normalised
    seed = T @ placed if turned_a else placed @ np.linalg.inv(T)  # the second picture -> the first
    # two graphics keep which way is up as under the keypoint warp: an arrow turned by 45
    # degrees points another way, as icon sets draw it
    upright = KEYPOINT_MAX_TURN if _two_graphics(va, vb) else MAX_FAR_TURN
    return turned_record(va, vb, seed, max_turn=upright, read=False)


def _pixel_match(va: View, vb: View, early_accept: float | None) -> MatchRecord:
    """The pixel alignment's record: of the two pictures, and of the two inside their frames
    (:func:`frame_box`) when either has one and the pictures themselves scored under
    ``early_accept``. A frame drawn round a copy covers the original's edges and is no part of
    the picture; a frame round both is ignored like the rest of what lies outside the overlap.
    Only a frame that differs between the two counts (one has it, or theirs are of other
    colours): two drawings on the same white ground differ, if at all, in the drawing. Inside
    frames, mirror images are not compared: plain margins cut off, the mirror image of a
    drawing is often a drawing of its own (an arrow pointing the other way, an ornament for the
    other corner), which the placement on its canvas had told apart."""
    best = _aligned_record(va, vb, early_accept)
    if early_accept is not None and best.score >= early_accept:
        return best
    fa, fb = va.framed, vb.framed
    if fa is None and fb is None:
        return best
    if fa is not None and fb is not None and np.abs(va.edge_colour - vb.edge_colour).max() <= FRAME_TOLERANCE:
        return best  # the same frame round both
    inside = _aligned_record(fa or va, fb or vb, early_accept, mirrors=False)
    if inside.homography is not None:  # onto the whole pictures
        ba, bb = (fa or va).box, (fb or vb).box
        inside.homography = _unit(ba @ inside.homography @ np.linalg.inv(bb))
        inside.matcher = "pixel_framed"
    return _better(best, inside)


def _stretched(outer: View, inner: View) -> tuple[tuple[float, float, float], tuple[int, int, int, int]] | None:
    """Residuals of the inner picture resized onto the whole of the outer one (another aspect
    ratio: a stretched or squeezed copy) and that placement, or None when its grey correlation
    is under :data:`COARSE_REJECT` at 48 px or :data:`FINE_REJECT` at 128 px."""
    h, w = outer.coarse.shape
    if _corr(outer.coarse, inner.resized("coarse", w, h)) < COARSE_REJECT:
        return None
    H, W = outer.grey.shape
    if _corr(outer.grey, inner.resized("grey", W, H)) < FINE_REJECT:
        return None
    at = (0, 0, H, W)
    return _aligned_residuals(outer, inner, False, at), at


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two images of one shape (0 when either is flat)."""
    x, y = x - x.mean(), y - y.mean()
    d = float(np.sqrt(float(np.vdot(x, x)) * float(np.vdot(y, y))))
    return float(np.vdot(x, y)) / d if d > 1e-12 else 0.0


def _placed(outer: View, inner: View, flip: bool, at: tuple[int, int, int, int], a_is_outer: bool) -> np.ndarray:
    """The alignment ``at`` (inner at ``dy, dx``, size ``th x tw``, maybe mirrored, in the outer
    picture at :data:`FINE`) as a homography of normalised coordinates, second picture -> first."""
    dy, dx, th, tw = at
    H, W = outer.grey.shape
    M = np.array([[-tw if flip else tw, 0.0, dx + (tw if flip else 0)], [0.0, th, dy], [0.0, 0.0, 1.0]])
    M = np.diag([1.0 / W, 1.0 / H, 1.0]) @ M  # inner normalised -> outer normalised
    return M if a_is_outer else np.linalg.inv(M)


def _aligned_record(va: View, vb: View, early_accept: float | None, *, mirrors: bool = True) -> MatchRecord:
    best = MatchRecord()
    hyps = _hypotheses(va, vb, mirrors)
    weak = bool(hyps) and hyps[0][0] < COARSE_REJECT
    if weak:
        # nothing aligns even coarsely: only the picture as it is is read, both ways round (a
        # picture pasted over a copy of one shape, a recolouring, can bring its correlation
        # down to anything)
        hyps = [h for h in hyps if h[2:] == AS_IS]
    if not hyps:
        return best
    memo: dict[tuple, Any] = {}

    def readings() -> Any:
        """(direction, outer, inner, flip, (residuals, placement), kind, gated) of each reading
        that found a placement, lazily: the hypotheses, then the pictures stretched."""
        for _, direction, scale, flip in hyps:
            outer, inner = (va, vb) if direction == 0 else (vb, va)
            as_is = (scale, flip) == AS_IS  # either way round
            got = _refine(outer, inner, scale, flip, memo, whole=as_is)
            if got is not None:
                # the picture as it is, read although it does not correlate (an inset or a
                # recolouring brought its correlation down): under its brightness gain only
                gated = as_is and (weak or got[2] < FINE_REJECT)
                yield direction, outer, inner, flip, got[:2], "as is" if as_is else "", gated
        if not _one_shape(va, vb) and abs(np.log(va.aspect / vb.aspect)) <= MAX_STRETCH:
            # a stretched copy: the whole of one picture resized onto the whole of the other,
            # both ways round (the coarse search keeps each picture's shape)
            for direction, (outer, inner) in enumerate(((va, vb), (vb, va))):
                got = _stretched(outer, inner)
                if got is not None:
                    yield direction, outer, inner, False, got, "stretched", False

    aligned: dict[str, tuple[View, View, bool, tuple[int, int, int, int], np.ndarray]] = {}
    scored, liked = False, -np.inf
    for direction, outer, inner, flip, (res, at), kind, gated in readings():
        placed = _placed(outer, inner, flip, at, direction == 0)
        score = _residual_score(res)
        if not gated and ("best" not in aligned or score > liked):
            aligned["best"], liked = (outer, inner, flip, at, placed), score
        if kind and not gated:
            aligned[f"{kind} {direction}"] = (outer, inner, flip, at, placed)
        if not scored or score > best.score:
            scored, best = True, _pixel_record(res, matcher="pixel", homography=placed)
        if early_accept is not None and best.score >= early_accept:
            return best  # a clear duplicate: the other readings cannot change the decision
    # Under a global colour edit: the alignment the one brightness gain liked best (however far
    # under -1 it left it: a greyscale copy of a colourful picture) and the picture as it is
    # or stretched when it was refined (a recoloured copy's grey image may correlate better at a
    # wrong scale).
    for key in ("as is 0", "as is 1", "stretched 0", "stretched 1"):
        if key in aligned and "best" in aligned and aligned[key][:4] == aligned["best"][:4]:
            del aligned[key]
    shared: dict[Any, Any] = {}
    for outer, inner, flip, at, placed in aligned.values():
        best = _with_colour_edit(best, _colour_residuals(outer, inner, flip, at, shared), matcher="pixel", homography=placed)
        if not _a_graphic(outer, inner):  # a graphic's few fills: curves map one palette onto another
            best = _with_colour_edit(best, _colour_residuals(outer, inner, flip, at, shared, CURVES), form=CURVES,
                                     matcher="pixel", homography=placed)  # fmt: skip
    if early_accept is None or best.score < early_accept:
        # under each global edit and a light field: a vignette, a gradient, uneven light
        for outer, inner, flip, at, placed in aligned.values():
            # two graphics: a few flat shades any field comes close to; the light must show in the fills
            lit = IN_FILLS if _two_graphics(outer, inner) else True
            forms = (False, True) if _a_graphic(outer, inner) else (False, True, CURVES)
            for form in forms:
                best = _with_colour_edit(best, _colour_residuals(outer, inner, flip, at, shared, form, lit),
                                         form=_form_name(form, True), matcher="pixel", homography=placed)  # fmt: skip
    best.score = max(best.score, -1.0)
    return best
