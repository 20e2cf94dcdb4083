"""PII scrubbing: URLs, e-mail addresses, card numbers, phone numbers and @handles become placeholders.

Step 4 of the text preprocessing (emotrain.preprocessing), also used on every cell quoted in an
error message. Standard library only (the inference package imports it). The scrub is idempotent:
``scrub_pii(scrub_pii(x)) == scrub_pii(x)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["CARD", "EMAIL", "MASK_TOKENS", "PHONE", "URL", "USER", "scrub_pii"]

# Placeholders written by scrub_pii, plus the masks GoEmotions already contains.
EMAIL, URL, PHONE, USER, CARD = "[EMAIL]", "[URL]", "[PHONE]", "[USER]", "[CARD]"
MASK_TOKENS: frozenset[str] = frozenset({EMAIL, URL, PHONE, USER, CARD, "[NAME]", "[RELIGION]"})

#
# Order of the passes, and why:
#   1. URLs first: a URL may contain an e-mail (?contact=jo@example.com), a handle
#      (medium.com/@someone) or long digit runs (/order/4111111111111111, ?tel=555...).
#      Scrubbing it whole gives one [URL] instead of "https://...[EMAIL]" fragments.
#      The www./bare-domain forms refuse to start right after "@" or ".", so the
#      domain of an e-mail is never eaten as a URL.
#   2. E-mails before handles: "jo@example.com" must become [EMAIL], not "jo[USER].com".
#      (The handle pattern also refuses an "@" preceded by a word character.)
#   3. Cards before phones: a card number written in groups ("4111 1111 1111 1111")
#      contains phone-shaped pieces; scrubbing the (Luhn-validated) card first keeps
#      a phone pattern from claiming part of it.
#   4. Phones, then the context-gated 7-digit local form ("call me at 555-0199").
#   5. Handles last: nothing left in the text can be mistaken for one any more.
# All placeholders are "[WORD]": no later pattern matches inside them ("[" and "]"
# are in no pattern's character set), which keeps the scrub idempotent and leaves
# GoEmotions' [NAME] / [RELIGION] masks alone.

_I = re.IGNORECASE

# Generic TLDs that are common in the wild; any two-letter label also counts as a
# country-code TLD. A whitelist keeps "St.Louis/KC", "file.txt/…" from being URLs.
_GTLDS = (
    "com|net|org|edu|gov|mil|int|info|biz|name|pro|mobi|app|dev|page|xyz|site|online|"
    "store|shop|blog|tech|news|live|link|club|cloud|email|social|media|art|design|"
    "world|today|life|space|website|wiki|agency|digital|network|studio|games|museum|"
    "travel|jobs|aero|coop|asia|tel|onion"
)
_LABEL = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?"
_HOST = rf"(?:{_LABEL}\.)+(?:{_GTLDS}|[a-z]{{2}})(?![a-z0-9\-])"
# Characters allowed inside a URL, and those it may end with (so trailing sentence
# punctuation - "see https://example.com/x." - stays outside). Parentheses are
# allowed when balanced, as in wiki links: https://en.wikipedia.org/wiki/Joy_(band)
_UC = r"[\w\-.~:/?#@!$&*+,;=%]"
_UE = r"[\w/#=&%+~\-]"
_URL_TAIL = rf"(?:{_UC}|\({_UC}*\))*(?:{_UE}|\({_UC}*\))"
_URL_RE = re.compile(
    # scheme://anything
    rf"(?<![\w@])(?:https?|ftp)://{_URL_TAIL}"
    # www.host[:port][/path]
    rf"|(?<![\w@.\-/])www\d{{0,3}}\.{_HOST}(?::\d{{1,5}})?(?:[/?#](?:{_URL_TAIL})?)?"
    # bare host with a path: example.com/x, bit.ly/abc, example.co.uk:8080/x
    rf"|(?<![\w@.\-/:])(?:{_HOST})(?::\d{{1,5}})?/(?:{_URL_TAIL})?",
    _I,
)

# E-mail: local@host.tld, optionally with "mailto:". The lookbehind refuses a local
# part glued to "@" (a Mastodon handle "@jo@example.social" is left to the handle pass).
_EMAIL_RE = re.compile(
    rf"(?<![\w.%+\-@])(?:mailto:)?[\w.%+\-]+@(?:{_LABEL}\.)+[a-z]{{2,24}}(?![\w\-]|\.[a-z0-9])",
    _I,
)

# @handle (Twitter/Instagram/Reddit/Mastodon): must contain a letter, so "@_@" and
# "@ 5" stay, and must not be a number with a short suffix ("@5pm", "@2nd", "@10k");
# dots only inside (Instagram), so a sentence-final "." stays out; not after a word
# character (e-mails) or "@"; up to 30 characters; an optional "@instance.host".
_HANDLE_RE = re.compile(
    r"(?<![\w@./\-])@(?=[\w.]*[a-z])(?![0-9]+[a-z]{0,3}\b)"
    r"(?:[a-z0-9_](?:[a-z0-9_.]{0,28}[a-z0-9_])?)"
    rf"(?:@(?:{_LABEL}\.)+[a-z]{{2,24}})?(?![\w@])",
    _I,
)

# Payment cards: 13-19 digits, contiguous or in the usual groups with one consistent
# separator (4-4-4-4[-1..3], 4-4-4-1..4, Amex 4-6-5, Diners 4-6-4). Validated below.
_CARD_RE = re.compile(
    r"(?<![\w+.,/\-])"
    r"(?:[0-9]{13,19}"
    r"|[0-9]{4}(?P<s1>[ \-])[0-9]{4}(?P=s1)[0-9]{4}(?P=s1)[0-9]{1,4}(?:(?P=s1)[0-9]{1,3})?"
    r"|[0-9]{4}(?P<s2>[ \-])[0-9]{6}(?P=s2)[0-9]{4,5})"
    r"(?![0-9]|[.,\-/][0-9])"
)

# Separators inside a number: space, dot, ASCII hyphen and the Unicode hyphens /
# en dash (U+2010..U+2013, which NFKC keeps) that word processors substitute.
_DASH = "\\-\u2010-\u2013"
_SEP = f"[ .{_DASH}]"
# Not glued to a word, "+", or a preceding number ("1.555", "v2-555"...).
_PRE = rf"(?<![\w+/.{_DASH}])"
# Not followed by more digits of the same number, a time ("10:30") or a fraction.
_POST = rf"(?![0-9]|[.{_DASH}:/,][0-9])"
_PHONE_RE = re.compile(
    # International: +CC or 00CC, an optional "(0)" trunk, then 2-6 digit groups
    # (first 1-5 digits, optionally in parens; the rest 2-5). Validated: 8-15 digits
    # after "+", 11-17 with the "00" prefix.
    #   +1 555 123 4567, +44 20 7946 0958, +44 (0)20 7946 0958, +49 30 12345678,
    #   +33 1 23 45 67 89, +91 98765 43210, +31.20.123.4567, +7 (495) 123-45-67
    rf"(?P<intl>(?<![\w+])(?:\+|(?<![0-9])00)[1-9][0-9]{{0,2}}(?:{_SEP}?\(0\))?"
    rf"{_SEP}?\(?[0-9]{{1,5}}\)?(?:{_SEP}?[0-9]{{2,5}}){{1,5}}{_POST})"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567,
    # 5551234567, with an optional leading 1. The area code starts with 2-9 (the
    # exchange may not: fictional 555-123-4567 numbers are common in text).
    rf"|(?P<nanp>{_PRE}(?:1{_SEP}?)?"
    rf"(?:\([2-9][0-9]{{2}}\)[ {_DASH}]?[0-9]{{3}}{_SEP}[0-9]{{4}}"
    rf"|[2-9][0-9]{{2}}(?P<ns>{_SEP})[0-9]{{3}}(?P=ns)[0-9]{{4}}"
    rf"|[2-9][0-9]{{9}}){_POST})"
    # Indian mobile without prefix: 98765 43210 / 98765-43210.
    rf"|(?P<in>{_PRE}[6-9][0-9]{{4}}[ {_DASH}][0-9]{{5}}{_POST})"
    # National numbers with a trunk 0: 020 7946 0958, (020) 7946 0958, 07700 900123,
    # 030 12345678, 0151 23456789, 01 23 45 67 89, 01.23.45.67.89, 098765 43210.
    # Validated: 10-12 digits (so dates like 05.12.2024 are not phones).
    # One separator throughout (or none), so "05.12.2024 0151..." is not one number;
    # "/" is allowed too (German 030/12345678).
    rf"|(?P<nat>{_PRE}(?:\(0[1-9][0-9]{{0,4}}\)|0[1-9][0-9]{{0,4}})"
    rf"(?P<ts>[ ./{_DASH}]?)[0-9]{{2,8}}(?:(?P=ts)[0-9]{{2,8}}){{0,3}}{_POST})"
)
# A bare 7-digit local number only right after a phone word: "call me at 555-0199".
_LOCAL_PHONE_RE = re.compile(
    r"(?P<ctx>\b(?:call|text|phone|tel|dial|ring|reach|fax|cell|mobile|whatsapp)(?:ed|ing|s)?\b"
    r"[ :]*(?:(?:me|us|him|her|them)\s+)?(?:(?:at|on)\s+)?)"
    rf"[2-9][0-9]{{2}}[.{_DASH}][0-9]{{4}}{_POST}",
    _I,
)

_DIGITS = "0123456789"


def _count_digits(s: str) -> int:
    return sum(map(s.count, _DIGITS))


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_length(s: str) -> int:
    """Length of the longest prefix of ``s`` (cut at a group boundary) that is a card, or 0.

    Issuer prefixes start with 2-6 (Mastercard 2/5, Visa 4, Amex/Diners/JCB 3,
    Discover/UnionPay/Maestro 6); requiring that, on top of Luhn, keeps 13-digit
    timestamps (1...), ISBN-13s (978...) and the like out.
    """
    ends = [len(s)]
    if not s.isdigit():  # grouped: also try without the trailing groups
        ends += [i for i in range(len(s) - 1, 0, -1) if not s[i].isdigit()]
    for end in ends:
        digits = "".join(ch for ch in s[:end] if ch.isdigit())
        if (
            13 <= len(digits) <= 19
            and digits[0] in "23456"
            and digits.count(digits[0]) != len(digits)
            and _luhn_ok(digits)
        ):
            return end
    return 0


def _phone_length(m: re.Match) -> int:
    s = m.group()
    n = _count_digits(s)
    if m.group("intl") is not None:
        # E.164: at most 15 digits after "+". With the "00" prefix (two more digits)
        # ask for a full number, so "ticket 0012 3456" is not a phone.
        lo, hi = (11, 17) if s.startswith("00") else (8, 15)
        return len(s) if lo <= n <= hi else 0
    if m.group("nat") is not None:
        return len(s) if 10 <= n <= 12 else 0
    return len(s)  # nanp / in: the pattern fixes the digit count


def _sub_validated(rx: re.Pattern, text: str, accept: Callable[[re.Match], int], token: str) -> str:
    """Like ``rx.sub(token, text)``, but each match must pass ``accept`` (which returns
    the accepted length, possibly shorter than the match, or 0). A rejected match is
    left as is and the search resumes one character later, so a real number just after
    (or inside) a rejected candidate is still found."""
    m = rx.search(text)
    if m is None:
        return text
    out = []
    pos = 0
    while m is not None:
        n = accept(m)
        if n:
            out.append(text[pos : m.start()])
            out.append(token)
            pos = m.start() + n
            m = rx.search(text, pos)
        else:
            m = rx.search(text, m.start() + 1)
    out.append(text[pos:])
    return "".join(out)


def _card_accept(m: re.Match) -> int:
    return _card_length(m.group())


def scrub_pii(text: str) -> str:
    """Replace URLs, e-mails, card numbers, phone numbers and @handles by placeholders.

    Ordinary numbers (times, dates, prices, scores, years, versions, percentages) are
    left alone. Expects ASCII digits; run :func:`normalize_unicode` first to fold
    full-width forms.

    The passes are repeated until nothing changes (in practice: once more when the
    first pass replaced something, never on clean text), because a placeholder can
    unblock an earlier pass: in "555-123-4567http://x.co/y" the URL is glued to a
    digit and only becomes a URL of its own once the phone is "[PHONE]". Each pass
    only turns text into placeholders, so this terminates.
    """
    for _ in range(8):
        scrubbed = _scrub_once(text)
        if scrubbed == text:
            break
        text = scrubbed
    return text


def _scrub_once(text: str) -> str:
    # Cheap gates: every pattern needs one of these characters, most texts have none.
    # (scheme and bare-domain URLs contain "/", www. ones "ww"/"WW").
    has_at = "@" in text
    if "/" in text or "ww" in text or "WW" in text:
        text = _URL_RE.sub(URL, text)
    if has_at:
        text = _EMAIL_RE.sub(EMAIL, text)
    if _count_digits(text) >= 7:
        text = _sub_validated(_CARD_RE, text, _card_accept, CARD)
        text = _sub_validated(_PHONE_RE, text, _phone_length, PHONE)
        text = _LOCAL_PHONE_RE.sub(r"\g<ctx>" + PHONE, text)
    if has_at:
        text = _HANDLE_RE.sub(USER, text)
    return text
