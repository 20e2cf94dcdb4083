"""Text preprocessing shared by training and inference.

Standard library only: the light inference package imports this module and must not
pull in torch, transformers, numpy or pandas.

The pipeline (each step can be switched off, see :class:`Preprocessor`) runs in this
order, and the order matters:

1. ``normalize_unicode`` - NFKC. Folds full-width letters/digits (``０２０``, ``＠``),
   ligatures and non-breaking spaces to their plain forms, so the later regexes only
   have to know ASCII digits and the plain ``@``.
2. ``clean_whitespace`` - drops invisible characters (zero-width space, BOM, bidi
   controls, soft hyphen, C0/C1 control characters, lone surrogates) and collapses
   every run of whitespace (spaces, tabs, newlines, NBSP, ...) to one space, then
   strips. Invisible characters are dropped *before* collapsing, so ``"a \\u200b b"``
   becomes ``"a b"``; and before PII scrubbing, so ``"john\\u200b@example.com"`` is
   still recognised as an e-mail. The zero-width joiner is kept where it is part
   of an emoji ZWJ sequence (``👩‍💻``, ``🏳️‍🌈``): removing it would split one
   emoji into two different ones and change meaning. ZWJ/ZWNJ are also kept between
   letters of scripts whose spelling needs them (Arabic/Persian, Indic, Myanmar,
   Khmer), and tag characters are kept in emoji tag sequences (subdivision flags).
3. ``lowercase`` - keeps the mask tokens (GoEmotions' ``[NAME]``, ``[RELIGION]`` and
   ours) upper-case. It runs before the scrub (whose patterns are case-insensitive)
   because lower-casing can change what counts as a word character next to a
   candidate ("İ" -> "i" + U+0307), and the scrub must see the final text for the
   pipeline to be idempotent; the text is re-normalised after it when (1) is on.
4. ``scrub_pii`` - replaces URLs, e-mails, card numbers, phone numbers and @handles
   by ``[URL]``, ``[EMAIL]``, ``[CARD]``, ``[PHONE]``, ``[USER]``.

Every step is idempotent and so is the whole pipeline: ``p(p(x)) == p(x)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from emotrain.pii import MASK_TOKENS, scrub_pii  # step 4 of the pipeline

__all__ = [
    "MASK_TOKENS",
    "Preprocessor",
    "clean_whitespace",
    "lowercase",
    "normalize",
    "normalize_unicode",
    "preprocess",
    "scrub_pii",
]


# --------------------------------------------------------------------------- unicode


def normalize_unicode(text: str, form: str = "NFKC") -> str:
    """Unicode normalisation (NFKC by default). ASCII text is returned as is."""
    if text.isascii():  # ASCII is already in every normal form
        return text
    return unicodedata.normalize(form, text)


# --------------------------------------------------------------------------- whitespace

# Emoji code points that may stand on either side of a ZWJ in an emoji ZWJ sequence
# (a superset is fine: a ZWJ between two symbols is harmless, and a stray one next to
# a letter is still removed). U+FE0F (emoji presentation) and skin-tone modifiers
# (U+1F3FB..U+1F3FF, inside the 1F000 block) may precede the ZWJ.
_EMOJI = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21ff\u2300-\u23ff\u24c2"
    "\u25a0-\u27bf\u2900-\u297f\u2b00-\u2bff\u3030\u303d\u3297\u3299"
    "\U0001f000-\U0001faff"
)
# Scripts whose orthography uses ZWJ/ZWNJ (Persian half-space, Indic conjunct forms):
# Hebrew..Arabic Extended, Devanagari..Sinhala, Myanmar, Khmer, Indic extensions.
_JOINING_SCRIPTS = "\u0590-\u08ff\u0900-\u0dff\u1000-\u109f\u1780-\u17ff\ua8e0-\ua8ff\ua9e0-\ua9ff\uaa60-\uaa7f"
_TAGS = "\U000e0020-\U000e007f"
_BLACK_FLAG = "\U0001f3f4"

# Always-invisible characters: C0/C1 controls that are not whitespace, soft hyphen,
# Arabic letter mark, Mongolian vowel separator, zero-width space, LRM/RLM, bidi
# embeddings/overrides/isolates, word joiner and invisible operators, deprecated
# format chars, BOM / zero-width no-break space, interlinear annotation, shorthand
# and musical format controls, language tag, lone surrogates. Whitespace controls
# (\t \n \v \f \r, \x1c-\x1f, \x85) are left to the whitespace collapse.
_ALWAYS_INVISIBLE = (
    "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u180e\u200b\u200e\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\ud800-\udfff"
)
_INVISIBLE_RE = re.compile(
    f"[{_ALWAYS_INVISIBLE}]+"
    # ZWJ survives between two emoji, or between two letters of a joining script.
    f"|(?<![{_EMOJI}\ufe0f{_JOINING_SCRIPTS}])\u200d"
    f"|\u200d(?![{_EMOJI}{_JOINING_SCRIPTS}])"
    f"|(?<=[{_EMOJI}\ufe0f])\u200d(?=[{_JOINING_SCRIPTS}])"
    f"|(?<=[{_JOINING_SCRIPTS}])\u200d(?=[{_EMOJI}])"
    # ZWNJ survives only between two letters of a joining script.
    f"|(?<![{_JOINING_SCRIPTS}])\u200c|\u200c(?![{_JOINING_SCRIPTS}])"
    # A run of tag characters survives only right after U+1F3F4 (🏴 + tags = a
    # subdivision flag). Matching whole runs keeps this idempotent.
    f"|(?<![{_BLACK_FLAG}{_TAGS}])[{_TAGS}]+"
)
_ASCII_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1b\x7f]+")


def clean_whitespace(text: str) -> str:
    """Drop invisible/control characters, collapse whitespace runs to one space, strip."""
    if text.isascii():
        text = _ASCII_CONTROL_RE.sub("", text)
    else:
        text = _INVISIBLE_RE.sub("", text)
    # str.split() splits on exactly the Unicode whitespace set (NBSP, U+2028, U+3000, ...).
    return " ".join(text.split())


# --------------------------------------------------------------------------- lowercase

_MASK_SPLIT_RE = re.compile("(" + "|".join(re.escape(m) for m in sorted(MASK_TOKENS)) + ")")


def lowercase(text: str) -> str:
    """Lower-case the text but keep mask tokens (``[NAME]``, ``[EMAIL]``, ...) as they are."""
    if "[" not in text:
        return text.lower()
    parts = _MASK_SPLIT_RE.split(text)
    # split() with one capture group: odd indices are the masks.
    return "".join(p if i % 2 else p.lower() for i, p in enumerate(parts))


# --------------------------------------------------------------------------- pipeline


def normalize(
    text: str,
    *,
    normalize_unicode: bool = True,
    clean_whitespace: bool = True,
    lowercase: bool = False,
    scrub_pii: bool = True,
) -> str:
    """Run the pipeline with the given switches (same defaults as :class:`Preprocessor`)."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    text, scrubbed = _pipeline_once(text, normalize_unicode, clean_whitespace, lowercase, scrub_pii)
    if scrubbed and clean_whitespace and not text.isascii():
        # A placeholder can take the place of the letter/emoji that justified keeping
        # a neighbouring joiner ("क\u200d्" -> "[URL]\u200d्"); run the (cheap, rare)
        # pipeline again until the text is a fixed point, so p(p(x)) == p(x).
        for _ in range(4):
            again, _ = _pipeline_once(text, normalize_unicode, clean_whitespace, lowercase, scrub_pii)
            if again == text:
                break
            text = again
    return text


def _pipeline_once(text: str, nfkc: bool, clean: bool, lower: bool, scrub: bool) -> tuple[str, bool]:
    """One pass of the pipeline; also says whether the PII scrub replaced anything."""
    if nfkc:
        text = _normalize_unicode(text)
    if clean:
        text = _clean_whitespace(text)
        if nfkc and not text.isascii():
            # Dropping an invisible character can join a base letter and a combining
            # mark ("e\u200b\u0301" -> "e\u0301"): renormalise (a quick check when
            # nothing changed).
            text = unicodedata.normalize("NFKC", text)
    if lower:
        text = _lowercase(text)
        if nfkc and not text.isascii():
            # Lower-casing can break normal form too ("İ" -> "i" + U+0307, which must
            # then be reordered with a following combining mark).
            text = unicodedata.normalize("NFKC", text)
    scrubbed = False
    if scrub:
        out = _scrub_pii(text)
        scrubbed = out != text
        text = out
    return text, scrubbed


# Private aliases: normalize()'s keyword arguments shadow the public function names.
_normalize_unicode = normalize_unicode
_clean_whitespace = clean_whitespace
_scrub_pii = scrub_pii
_lowercase = lowercase

preprocess = normalize


@dataclass(frozen=True)
class Preprocessor:
    """Configurable text cleaner; the same instance (or its ``to_dict()``) is used at
    training and at inference time so both see identically prepared text.

    Keys match ``emotrain.config.PreprocessConfig``.
    """

    normalize_unicode: bool = True  # NFKC
    clean_whitespace: bool = True
    lowercase: bool = False
    scrub_pii: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool):
                raise TypeError(f"Preprocessor.{f.name} must be a bool, got {type(value).__name__} {value!r}")

    def __call__(self, text: str) -> str:
        return normalize(
            text,
            normalize_unicode=self.normalize_unicode,
            clean_whitespace=self.clean_whitespace,
            lowercase=self.lowercase,
            scrub_pii=self.scrub_pii,
        )

    def map(self, texts: Iterable[str]) -> list[str]:
        return [self(t) for t in texts]

    def to_dict(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Preprocessor:
        """Build from a mapping; missing keys take their defaults, unknown keys raise."""
        if d is None:
            return cls()
        d = dict(d)
        known = cls.keys()
        unknown = [k for k in d if k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), known, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown preprocessing key(s): {', '.join(hints)}; known keys: {', '.join(known)}")
        return cls(**d)

    @classmethod
    def from_config(cls, node: Any) -> Preprocessor:
        """Build from a config node: an OmegaConf DictConfig (``data.preprocess``), a plain
        mapping, a ``PreprocessConfig`` dataclass instance, or None (defaults)."""
        if node is None:
            return cls()
        if isinstance(node, cls):
            return node
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            return cls.from_dict({f.name: getattr(node, f.name) for f in dataclasses.fields(node)})
        try:
            d = {k: node[k] for k in node.keys()}  # DictConfig, Mapping
        except (AttributeError, TypeError):
            d = dict(node)
        return cls.from_dict(d)
