"""Tests for emotrain.preprocessing (standard-library text cleaning + PII scrubbing)."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from emotrain import pii
from emotrain import preprocessing as pp
from emotrain.preprocessing import MASK_TOKENS, Preprocessor, scrub_pii

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).with_name("pii_corpus.jsonl")
PLACEHOLDERS = ("[EMAIL]", "[URL]", "[PHONE]", "[USER]", "[CARD]")

ALL_OFF = dict(normalize_unicode=False, clean_whitespace=False, lowercase=False, scrub_pii=False)


def only(**on) -> Preprocessor:
    """A Preprocessor with every step off except the given ones."""
    return Preprocessor(**{**ALL_OFF, **on})


def load_corpus() -> list[dict]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- defaults / config


def test_defaults_match_spec():
    p = Preprocessor()
    assert p.to_dict() == {
        "normalize_unicode": True,
        "clean_whitespace": True,
        "lowercase": False,
        "scrub_pii": True,
    }


def test_keys_match_preprocess_config():
    config = pytest.importorskip("emotrain.config")
    cfg_fields = {f.name: f.default for f in dataclasses.fields(config.PreprocessConfig)}
    assert cfg_fields == Preprocessor().to_dict()


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=4)))
def test_to_dict_from_dict_round_trip(flags):
    p = Preprocessor(*flags)
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON-able (saved next to the model)
    q = Preprocessor.from_dict(d)
    assert q == p
    assert q.to_dict() == d


def test_from_dict_partial_uses_defaults_and_none():
    assert Preprocessor.from_dict({"lowercase": True}) == Preprocessor(lowercase=True)
    assert Preprocessor.from_dict({}) == Preprocessor()
    assert Preprocessor.from_dict(None) == Preprocessor()


def test_from_dict_rejects_unknown_key_naming_it():
    with pytest.raises(ValueError, match="scrub_pi") as exc:
        Preprocessor.from_dict({"scrub_pi": False})
    assert "scrub_pii" in str(exc.value)  # suggestion
    with pytest.raises(ValueError, match="max_length"):
        Preprocessor.from_dict({"lowercase": True, "max_length": 3})


def test_non_bool_values_rejected():
    # A YAML "false" string would be truthy; refuse instead of silently enabling.
    with pytest.raises(TypeError, match="lowercase"):
        Preprocessor.from_dict({"lowercase": "false"})
    with pytest.raises(TypeError):
        Preprocessor(scrub_pii=1)


def test_from_config_mapping_dataclass_and_dictconfig():
    assert Preprocessor.from_config({"lowercase": True}) == Preprocessor(lowercase=True)
    assert Preprocessor.from_config(None) == Preprocessor()
    config = pytest.importorskip("emotrain.config")
    cfg = config.PreprocessConfig(scrub_pii=False)
    assert Preprocessor.from_config(cfg) == Preprocessor(scrub_pii=False)
    omegaconf = pytest.importorskip("omegaconf")
    node = omegaconf.OmegaConf.structured(config.PreprocessConfig)
    node.lowercase = True
    assert Preprocessor.from_config(node) == Preprocessor(lowercase=True)
    plain = omegaconf.OmegaConf.create({"normalize_unicode": False, "typo_key": True})
    with pytest.raises(ValueError, match="typo_key"):
        Preprocessor.from_config(plain)


def test_frozen_and_hashable():
    p = Preprocessor()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lowercase = True  # type: ignore[misc]
    assert hash(p) == hash(Preprocessor())


def test_map_and_type_check():
    p = Preprocessor(lowercase=True)
    assert p.map(["A  B", "mail jo@example.com"]) == ["a b", "mail [EMAIL]"]
    assert p.map(iter(())) == []
    with pytest.raises(TypeError):
        p(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- each switch


def test_normalize_unicode_switch():
    text = "ｆｕｌｌｗｉｄｔｈ ﬁne ①"
    assert only(normalize_unicode=True)(text) == "fullwidth fine 1"
    assert only()(text) == text


def test_normalize_unicode_lets_pii_scrub_see_fullwidth_forms():
    text = "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"
    assert only(normalize_unicode=True, scrub_pii=True)(text) == "[EMAIL]"
    assert only(scrub_pii=True)(text) == text


def test_clean_whitespace_switch():
    text = "  so\t\ttired\n\nof\u00a0this \u2003 \r\n "
    assert only(clean_whitespace=True)(text) == "so tired of this"
    assert only()(text) == text


def test_clean_whitespace_removes_zero_width_and_control_chars():
    text = "he\u200bllo\x00 wo\ufeffrld\u00ad\x07 \u200e!\u202etxt\u202c \x1b"
    assert only(clean_whitespace=True)(text) == "hello world !txt"
    assert only()(text) == text
    assert only(clean_whitespace=True)("a \u200b b") == "a b"
    assert only(clean_whitespace=True)("lone \ud83d surrogate") == "lone surrogate"


@pytest.mark.parametrize(
    "emoji",
    [
        "\U0001f469\u200d\U0001f4bb",  # woman technologist
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # family
        "\u2764\ufe0f\u200d\U0001f525",  # heart on fire
        "\U0001f469\U0001f3fd\u200d\U0001f680",  # astronaut, skin tone
        "\U0001f3c3\u200d\u2640\ufe0f",  # woman running
        "\U0001f3f4\u200d\u2620\ufe0f",  # pirate flag
        # England flag: black flag + tag sequence
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    ],
)
def test_emoji_sequences_survive_cleaning(emoji):
    p = Preprocessor()
    assert p(f"so proud {emoji}!!") == f"so proud {emoji}!!"
    assert p(f"{emoji}{emoji}") == f"{emoji}{emoji}"


def test_stray_joiners_and_tags_removed():
    clean = only(clean_whitespace=True)
    assert clean("a\u200db") == "ab"
    assert clean("\u200d\U0001f469") == "\U0001f469"
    assert clean("\U0001f469\u200d x") == "\U0001f469 x"
    assert clean("x\u200c y\u200cz") == "x yz"
    assert clean("tag\U000e0067\U000e0062 here") == "tag here"


def test_joiners_kept_inside_scripts_that_need_them():
    clean = only(clean_whitespace=True)
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # mi-khaham with ZWNJ
    assert clean(persian) == persian
    devanagari = "\u0915\u094d\u200d\u0937"  # half-form conjunct with ZWJ
    assert clean(devanagari) == devanagari


def test_lowercase_switch_keeps_masks():
    text = "[NAME] IS SO ANNOYING, Mail ME: JO@EXAMPLE.COM [RELIGION]"
    assert only(lowercase=True)(text) == "[NAME] is so annoying, mail me: jo@example.com [RELIGION]"
    assert only()(text) == text
    assert Preprocessor(lowercase=True)(text) == "[NAME] is so annoying, mail me: [EMAIL] [RELIGION]"
    assert Preprocessor()(text) == "[NAME] IS SO ANNOYING, Mail ME: [EMAIL] [RELIGION]"


def test_scrub_pii_switch():
    text = "so angry, call me at 555-123-4567!!"
    assert only(scrub_pii=True)(text) == "so angry, call me at [PHONE]!!"
    assert only()(text) == text


def test_every_switch_changes_output():
    text = "  ＨＥＹ\u200b  call\n555-123-4567  "
    outs = {
        name: Preprocessor(**{**Preprocessor().to_dict(), name: not default})(text)
        for name, default in Preprocessor().to_dict().items()
    }
    base = Preprocessor()(text)
    assert base == "HEY call [PHONE]"
    for name, out in outs.items():
        assert out != base, f"toggling {name} had no effect"


# --------------------------------------------------------------------------- PII


@pytest.mark.parametrize(
    "text,expected",
    [
        ("mail jane.doe@example.com now", "mail [EMAIL] now"),
        ("JOHN+tag@sub.example.co.uk.", "[EMAIL]."),
        ("see https://example.com/x?y=1.", "see [URL]."),
        ("www.example.com rocks", "[URL] rocks"),
        ("example.com/x is it", "[URL] is it"),
        ("http://localhost:8080/x", "[URL]"),
        ("(555) 123-4567", "[PHONE]"),
        ("555-123-4567", "[PHONE]"),
        ("+1 555 123 4567", "[PHONE]"),
        ("+44 20 7946 0958", "[PHONE]"),
        ("020 7946 0958", "[PHONE]"),
        ("+49 30 12345678", "[PHONE]"),
        ("+33 1 23 45 67 89", "[PHONE]"),
        ("+91 98765 43210", "[PHONE]"),
        ("+31.20.123.4567", "[PHONE]"),
        ("@someone hi", "[USER] hi"),
        ("4111 1111 1111 1111", "[CARD]"),
        ("3782 822463 10005", "[CARD]"),
        ("4111111111111111", "[CARD]"),
    ],
)
def test_scrub_each_kind(text, expected):
    assert scrub_pii(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I waited 45 minutes",
        "on 12/05/2024",
        "at 10:30",
        "in 2019",
        "scored 3-1",
        "my 2 kids",
        "room 404",
        "$1,250",
        "version 2.0",
        "7 out of 10",
        "call me at noon",
        "50% off",
        "1999-2004",
        "on 01-05-2024 10:30",
        "05.12.2024",
        "meet @5pm",
        "@_@",
        "lol @ 5 people",
        "#blessed #2024",
        "[NAME] and [RELIGION]",
        "Node.js and file.txt",
        "4.5/5 stars",
    ],
)
def test_ordinary_text_untouched(text):
    assert scrub_pii(text) == text
    assert Preprocessor()(text) == text


def test_luhn_rejects_card_lookalikes():
    assert scrub_pii("order 4111 1111 1111 1112 lost") == "order 4111 1111 1111 1112 lost"
    assert scrub_pii("ticket 1234 5678 9012 3456") == "ticket 1234 5678 9012 3456"
    assert scrub_pii("isbn 9780306406157") == "isbn 9780306406157"  # Luhn-valid-ish but 978 prefix
    assert pii._luhn_ok("4111111111111111") and not pii._luhn_ok("4111111111111112")


def test_order_url_before_email_and_handle():
    assert scrub_pii("x https://example.net/login?email=jo@example.com y") == "x [URL] y"
    assert scrub_pii("https://medium.com/@someone/post") == "[URL]"
    assert scrub_pii("foo@www.example.com") == "[EMAIL]"  # not foo@[URL]


def test_order_email_before_handle():
    assert scrub_pii("jo@example.com and @jo") == "[EMAIL] and [USER]"


def test_order_card_before_phone():
    assert scrub_pii("4111 1111 1111 1111 / 555-123-4567") == "[CARD] / [PHONE]"
    assert scrub_pii("+49 1512 3456789") == "[PHONE]"  # 13 digits after "+": not a card


def test_rejected_candidate_does_not_hide_later_number():
    assert scrub_pii("On 05.12.2024 0151 23456789") == "On 05.12.2024 [PHONE]"
    assert scrub_pii("card 4111 1111 1111 1111 2 times") == "card [CARD] 2 times"


def test_masks_intact():
    text = "[NAME] told [RELIGION] folks to call 555-123-4567"
    assert Preprocessor(lowercase=True)(text) == "[NAME] told [RELIGION] folks to call [PHONE]"
    for mask in MASK_TOKENS:
        assert scrub_pii(mask) == mask
        assert Preprocessor(lowercase=True)(mask) == mask


# --------------------------------------------------------------------------- idempotence

MESSY = [
    "  ＨＥＬＬＯ\u00a0\u00a0world\t\n[NAME]\u200b!! ",
    "call +44 20 7946 0958 or 555-123-4567 / mail JO@EXAMPLE.COM @Someone",
    "\U0001f469\u200d\U0001f4bb\u200d\u200d x\u200c\U000e0067 \U0001f3f4\U000e0067\U000e007f",
    "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ ０２０ ７９４６ ０９５８",
    "İSTANBUL ẞ straße ǅ ﬀ",
    "4111 1111 1111 1111 2 times www.example.com/x.",
]
_FUZZ_PIECES = [
    "a",
    "Z",
    "İ",
    "ß",
    "ǅ",
    " ",
    "\t",
    "\n",
    "\u00a0",
    "\u200b",
    "\u200c",
    "\u200d",
    "\ufeff",
    "\x00",
    "\x1f",
    "\ufe0f",
    "\U0001f469",
    "\U0001f3fd",
    "\u2764",
    "\U0001f3f4",
    "\U000e0067",
    "\U000e007f",
    "\u0645",
    "\u0915",
    "\u094d",
    "@",
    ".",
    "/",
    "-",
    "+",
    "(",
    ")",
    ":",
    "0",
    "1",
    "4",
    "5",
    "9",
    "555",
    "4111",
    "www",
    "http://",
    "com",
    "[NAME]",
    "[EMAIL]",
    "[",
    "]",
    "ｆ",
    "①",
]


def _fuzz_texts(n: int = 400) -> list[str]:
    rng = random.Random(1234)
    return ["".join(rng.choice(_FUZZ_PIECES) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=4)))
def test_idempotent(flags):
    p = Preprocessor(*flags)
    texts = MESSY + [r["text"] for r in load_corpus()] + _fuzz_texts()
    for text in texts:
        once = p(text)
        assert p(once) == once, (flags, text, once)


# --------------------------------------------------------------------------- corpus


def test_corpus_recall_and_false_alterations():
    rows = load_corpus()
    pii = [r for r in rows if r["text"] != r["expected"]]
    ordinary = [r for r in rows if r["text"] == r["expected"]]
    assert len(rows) >= 240 and len(pii) >= 150 and len(ordinary) >= 100
    for placeholder in PLACEHOLDERS:
        assert sum(placeholder in r["expected"] for r in pii) >= 15, placeholder

    p = Preprocessor()  # the default training configuration
    missed = [(r["text"], p(r["text"]), r["expected"]) for r in pii if p(r["text"]) != r["expected"]]
    altered = [(r["text"], p(r["text"])) for r in ordinary if p(r["text"]) != r["text"]]
    recall = 1 - len(missed) / len(pii)
    false_rate = len(altered) / len(ordinary)
    print(
        f"\nPII corpus: recall {recall:.2%} ({len(pii) - len(missed)}/{len(pii)}), "
        f"false alterations {false_rate:.2%} ({len(altered)}/{len(ordinary)})"
    )
    for text, got, want in missed:
        print(f"  MISSED  {text!r}\n     got  {got!r}\n    want  {want!r}")
    for text, got in altered:
        print(f"  ALTERED {text!r} -> {got!r}")
    assert recall >= 0.99
    assert false_rate <= 0.01


# --------------------------------------------------------------------------- import hygiene


def test_module_imports_only_stdlib():
    """preprocessing and pii (its step 4) import the standard library and each other, nothing else."""
    import emotrain.pii

    for module in (pp, emotrain.pii):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module)
        outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} - {"emotrain.pii"}
        assert not outside, (module.__name__, outside)


def test_import_pulls_in_no_heavy_packages():
    code = (
        "import sys, emotrain.preprocessing as p; "
        "p.Preprocessor()('x'); "
        "print(','.join(m for m in ('numpy', 'torch', 'transformers', 'pandas', 'omegaconf', 'hydra') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"
