"""Natural captions from the gesture label and the hands' sides.

Templates live in a registry keyed by label, with a default. A run overrides them with
`PrepConfig.caption_template` / `hand_caption_template` (``--caption-template``,
``--hand-caption-template``: every gesture label) and per label with `PrepConfig.caption_templates`
(a config file or Python: ``{"peace": ..., "hand:peace": ...}``; the keys ``*`` and ``hand:*`` are the
two flags). The most specific wins: the run's template for the label, the run's ``*``, the
registry's template for the label, the registry's default. ``none`` (no gesture) is a label of its
own: ``*`` does not cover it. A template may use:

- ``{gesture}``: the label's phrase ("a peace sign"), from `GESTURE_PHRASES` or the label in words;
- ``{hands}``: "the right hand", "the left hand", "both hands" or "a hand" (side unknown);
- ``{side}``: "right" / "left" / "" for hand captions.

Image captions read "a person showing a peace sign with the right hand"; hand-crop captions read
"a right hand showing a peace sign". Labels that mean "no gesture" (HaGRID's ``none`` and
``no_gesture``) give captions without a gesture.
"""

from __future__ import annotations

# HaGRID v1 (18 gestures) and v2 (33 gestures) labels -> a noun phrase.
GESTURE_PHRASES = {
    "call": "a call-me sign",
    "dislike": "a thumbs-down",
    "fist": "a fist",
    "four": "four fingers",
    "like": "a thumbs-up",
    "mute": "a finger on the lips",
    "ok": "an OK sign",
    "one": "one raised finger",
    "palm": "an open palm",
    "peace": "a peace sign",
    "peace_inverted": "an upside-down peace sign",
    "rock": "a rock-and-roll sign",
    "stop": "a stop sign",
    "stop_inverted": "an upside-down stop sign",
    "three": "three fingers",
    "three2": "three fingers (index, middle and ring)",
    "three3": "three fingers (middle, ring and little)",
    "three_gun": "a finger gun with three fingers",
    "two_up": "two fingers pressed together and raised",
    "two_up_inverted": "two fingers pressed together and pointing down",
    "grabbing": "a grabbing gesture",
    "grip": "a gripping gesture",
    "hand_heart": "a heart shape",
    "hand_heart2": "a heart shape",
    "holy": "praying hands",
    "little_finger": "a raised little finger",
    "middle_finger": "a raised middle finger",
    "point": "a pointing finger",
    "take_picture": "a picture-frame gesture",
    "thumb_index": "the thumb and index finger spread",
    "thumb_index2": "the thumb and index finger spread",
    "timeout": "a time-out sign",
    "xsign": "crossed hands",
}
TWO_HANDED = {"holy", "hand_heart", "hand_heart2", "xsign", "timeout", "take_picture"}
NO_GESTURE = {None, "", "none", "no_gesture", "no-gesture"}

DEFAULT_IMAGE_TEMPLATE = "a person showing {gesture} with {hands}"
DEFAULT_HAND_TEMPLATE = "a {side} hand showing {gesture}"

# Per-label image templates where the default reads badly; hand captions share them through HAND_TEMPLATES.
IMAGE_TEMPLATES = {
    "mute": "a person holding a finger to the lips with {hands}",
    "holy": "a person with palms pressed together in prayer",
    "hand_heart": "a person making a heart shape with {hands}",
    "hand_heart2": "a person making a heart shape with {hands}",
    "xsign": "a person crossing the arms in an X",
    "timeout": "a person making a time-out sign with both hands",
    "none": "a person with {hands} visible",
}
HAND_TEMPLATES = {
    "mute": "a {side} hand holding a finger to the lips",
    "none": "a {side} hand",
}
NO_HANDS_TEMPLATE = "a photo of a person"
PLACEHOLDERS = ("gesture", "hands", "side")


def template_problem(template: str) -> str | None:
    """Why `template` cannot caption (a placeholder other than `PLACEHOLDERS`, a stray brace), or None."""
    try:
        template.format(**dict.fromkeys(PLACEHOLDERS, ""))
    except (KeyError, IndexError, ValueError) as exc:
        return f"{template!r} does not format ({type(exc).__name__}: {exc}); it may use {{gesture}}, {{hands}}, {{side}}"
    return None


def _template(overrides: dict | None, prefix: str, key: str, registry: dict, default: str) -> str:
    overrides = overrides or {}
    found = overrides.get(prefix + key)
    if not found and key != "none":
        found = overrides.get(prefix + "*")
    return found or registry.get(key, default)


def gesture_phrase(label: str | None) -> str | None:
    """Noun phrase for a label; unknown labels are spelled out ("thumbs_left" -> "a thumbs left gesture")."""
    if label in NO_GESTURE:
        return None
    return GESTURE_PHRASES.get(label, f"a {str(label).replace('_', ' ').replace('-', ' ')} gesture")


def _hands_phrase(sides: list[str | None]) -> str:
    known = {s for s in sides if s in ("left", "right")}
    if len(sides) >= 2 and known == {"left", "right"}:
        return "both hands"
    if len(sides) == 1 and known:
        return f"the {next(iter(known))} hand"
    return "both hands" if len(sides) >= 2 else "a hand"


def _clean(text: str) -> str:
    return " ".join(text.split())


def image_caption(
    label: str | None, sides: list[str | None], gesture_hand: int | None = None, overrides: dict | None = None
) -> str:
    """Caption for a whole image.

    `sides` are the handedness of its hands (None where unknown); `gesture_hand` indexes the hand that
    makes the gesture (None: all of them). Two-handed gestures always speak of both hands.
    """
    if not sides:
        return NO_HANDS_TEMPLATE if label in NO_GESTURE else f"a person showing {gesture_phrase(label)}"
    gesture = gesture_phrase(label)
    key = "none" if gesture is None else label
    if gesture is not None and gesture_hand is not None and label not in TWO_HANDED:
        sides = [sides[gesture_hand]]
    template = _template(overrides, "", key, IMAGE_TEMPLATES, DEFAULT_IMAGE_TEMPLATE)
    return _clean(template.format(gesture=gesture or "", hands=_hands_phrase(sides), side=""))


def hand_caption(
    label: str | None, side: str | None, shows_gesture: bool = True, overrides: dict | None = None
) -> str:
    """Caption for one hand crop. `shows_gesture=False` for a hand that is not the one gesturing."""
    gesture = gesture_phrase(label) if shows_gesture else None
    key = "none" if gesture is None else label
    template = _template(overrides, "hand:", key, HAND_TEMPLATES, DEFAULT_HAND_TEMPLATE)
    return _clean(
        template.format(gesture=gesture or "", hands="", side=side if side in ("left", "right") else "")
    )
