"""Tests for app.catalog: the model catalog file and the provider's size rules."""

import json
from pathlib import Path

import pytest

from app.catalog.catalog import DEFAULT_CATALOG_PATH, load_catalog
from app.catalog.sizes import (
    CatalogError,
    ResolvedSize,
    parse_size,
    ratio_label,
    resolve_size,
    size_for,
    tier_of,
)

# The contract's GET /api/v1/models example (section 3), pasted literally.
CONTRACT_MODELS_JSON = """
{"object": "list", "data": [{
  "id": "gpt-image-2", "object": "model", "name": "GPT Image 2",
  "provider": "openai", "provider_model": "gpt-image-2",
  "aspect_ratios": ["auto","1:1","4:3","3:4","3:2","2:3","16:9","9:16","5:4","4:5","21:9","9:21","2:1","1:2","3:1","1:3"],
  "qualities": ["1K","2K","4K"],
  "render_qualities": ["auto","low","medium","high"],
  "default_aspect_ratio": "auto", "default_quality": "1K",
  "reference_image_limit": 16,
  "max_images_per_request": 4,
  "credits_per_image": {"1K": 8, "2K": 10, "4K": 12}
}]}
"""  # noqa: E501

# ratio, tier, size: every ratio x tier of the default catalog (docs/sizes.md has the same table).
SIZE_TABLE = [
    ("1:1", "1K", "1024x1024"),
    ("1:1", "2K", "2048x2048"),
    ("1:1", "4K", "2880x2880"),
    ("4:3", "1K", "1152x864"),
    ("4:3", "2K", "2304x1728"),
    ("4:3", "4K", "3264x2448"),
    ("3:4", "1K", "864x1152"),
    ("3:4", "2K", "1728x2304"),
    ("3:4", "4K", "2448x3264"),
    ("3:2", "1K", "1248x832"),
    ("3:2", "2K", "2496x1664"),
    ("3:2", "4K", "3504x2336"),
    ("2:3", "1K", "832x1248"),
    ("2:3", "2K", "1664x2496"),
    ("2:3", "4K", "2336x3504"),
    ("16:9", "1K", "1280x720"),
    ("16:9", "2K", "2560x1440"),
    ("16:9", "4K", "3840x2160"),
    ("9:16", "1K", "720x1280"),
    ("9:16", "2K", "1440x2560"),
    ("9:16", "4K", "2160x3840"),
    ("5:4", "1K", "1120x896"),
    ("5:4", "2K", "2240x1792"),
    ("5:4", "4K", "3200x2560"),
    ("4:5", "1K", "896x1120"),
    ("4:5", "2K", "1792x2240"),
    ("4:5", "4K", "2560x3200"),
    ("21:9", "1K", "1456x624"),
    ("21:9", "2K", "3024x1296"),
    ("21:9", "4K", "3808x1632"),
    ("9:21", "1K", "624x1456"),
    ("9:21", "2K", "1296x3024"),
    ("9:21", "4K", "1632x3808"),
    ("2:1", "1K", "1440x720"),
    ("2:1", "2K", "2880x1440"),
    ("2:1", "4K", "3840x1920"),
    ("1:2", "1K", "720x1440"),
    ("1:2", "2K", "1440x2880"),
    ("1:2", "4K", "1920x3840"),
    ("3:1", "1K", "1728x576"),
    ("3:1", "2K", "3504x1168"),
    ("3:1", "4K", "3840x1280"),
    ("1:3", "1K", "576x1728"),
    ("1:3", "2K", "1168x3504"),
    ("1:3", "4K", "1280x3840"),
]


def model():
    spec = load_catalog().get("gpt-image-2")
    assert spec is not None
    return spec


def edges(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


# --- size_for -------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "tier", "expected"), SIZE_TABLE)
def test_size_table(ratio, tier, expected):
    assert size_for(ratio, tier) == expected


@pytest.mark.parametrize(("ratio", "tier", "expected"), SIZE_TABLE)
def test_size_table_rows_are_valid(ratio, tier, expected):
    assert parse_size(expected) == edges(expected)
    width, height = edges(expected)
    assert tier_of(width, height) == tier
    a, b = (int(part) for part in ratio.split(":"))
    assert abs((width / height) / (a / b) - 1) <= 0.02


def test_size_table_covers_the_default_catalog():
    ratios = [r for r in model().aspect_ratios if r != "auto"]
    assert sorted((r, t) for r, t, _ in SIZE_TABLE) == sorted(
        (r, t) for r in ratios for t in model().qualities
    )
    assert len(SIZE_TABLE) == 45


@pytest.mark.parametrize(
    ("ratio", "tier", "expected"),
    [
        ("1:1", "1K", "1024x1024"),
        ("1:1", "2K", "2048x2048"),
        ("1:1", "4K", "2880x2880"),
        ("16:9", "4K", "3840x2160"),
        ("auto", "1K", "auto"),
        ("auto", "2K", "2048x2048"),
        ("auto", "4K", "2880x2880"),
    ],
)
def test_size_anchors(ratio, tier, expected):
    assert size_for(ratio, tier) == expected


@pytest.mark.parametrize(
    ("ratio", "tier"), [("1:1", "8K"), ("1:1", "1k"), ("5:1", "1K"), ("x", "1K")]
)
def test_size_for_rejects(ratio, tier):
    with pytest.raises(CatalogError):
        size_for(ratio, tier)


# --- parse_size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", None),
        ("1024x1024", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("1024x1536", (1024, 1536)),
        ("3840x2160", (3840, 2160)),
        ("2880x2880", (2880, 2880)),
        ("3840x1280", (3840, 1280)),
        ("1280x720", (1280, 720)),
        ("1024x640", (1024, 640)),  # exactly 655,360 pixels
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1000x1000", "both edges must be multiples of 16"),
        ("4000x1000", "long edge must be at most 3840"),
        ("3072x1008", "at most 3 times the short edge"),
        ("1008x3072", "at most 3 times the short edge"),
        ("512x512", "pixels must be 655,360 to 8,294,400"),
        ("1024x624", "pixels must be"),
        ("3840x2176", "pixels must be"),
        ("3584x3584", "pixels must be"),
        ("0x1024", "positive"),
        ("99999999999999999999x16", "long edge must be at most 3840"),
        ("9" * 5000 + "x16", "long edge must be at most 3840"),
        ("1024X1024", "must be 'auto' or WxH"),
        ("abc", "must be 'auto' or WxH"),
        ("", "must be 'auto' or WxH"),
        ("-1024x1024", "must be 'auto' or WxH"),
        ("+1024x1024", "must be 'auto' or WxH"),
        (" 1024x1024", "must be 'auto' or WxH"),
        ("1024x1024 ", "must be 'auto' or WxH"),
        ("1024x1024\n", "must be 'auto' or WxH"),
        ("1024 x 1024", "must be 'auto' or WxH"),
        ("01024x1024", "must be 'auto' or WxH"),
        ("1024.0x1024", "must be 'auto' or WxH"),
        ("1024x", "must be 'auto' or WxH"),
        ("x1024", "must be 'auto' or WxH"),
        ("1024x1024x1024", "must be 'auto' or WxH"),
        ("\uff11\uff10\uff12\uff14x1024", "must be 'auto' or WxH"),  # full-width digits
        ("AUTO", "must be 'auto' or WxH"),
    ],
)
def test_parse_size_rejects(text, fragment):
    with pytest.raises(CatalogError) as caught:
        parse_size(text)
    assert caught.value.param == "size"
    assert fragment in caught.value.message
    assert caught.value.message == str(caught.value)


def test_parse_size_message_names_the_size():
    with pytest.raises(CatalogError, match=r"^size 1000x1000: both edges must be multiples of 16$"):
        parse_size("1000x1000")


# --- tier_of / ratio_label ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "tier"),
    [
        (1024, 1024, "1K"),
        (1024, 640, "1K"),
        (1536, 1024, "1K"),  # 1,572,864: the 1K limit
        (1552, 1024, "2K"),
        (1024, 1552, "2K"),
        (2048, 2048, "2K"),  # 4,194,304: the 2K limit
        (2064, 2048, "4K"),
        (2880, 2880, "4K"),
        (3840, 2160, "4K"),
    ],
)
def test_tier_of(width, height, tier):
    assert tier_of(width, height) == tier


@pytest.mark.parametrize(
    ("width", "height", "label"),
    [
        (1024, 1024, "1:1"),
        (1536, 1024, "3:2"),
        (1024, 1536, "2:3"),
        (1920, 1088, "16:9"),  # 0.7% off
        (1360, 768, "16:9"),
        (3840, 1648, "21:9"),
        (1000, 700, "10:7"),  # nothing within 3%
        (1088, 1024, "17:16"),
    ],
)
def test_ratio_label(width, height, label):
    assert ratio_label(width, height, model().aspect_ratios) == label


# --- resolve_size ---------------------------------------------------------------------------


def resolve(size=None, aspect_ratio=None, quality=None):
    return resolve_size(model(), size=size, aspect_ratio=aspect_ratio, quality=quality)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ResolvedSize("auto", None, None, "auto", "1K", "auto")),
        ({"size": "auto"}, ResolvedSize("auto", None, None, "auto", "1K", "auto")),
        ({"quality": "auto"}, ResolvedSize("auto", None, None, "auto", "1K", "auto")),
        ({"quality": "high"}, ResolvedSize("auto", None, None, "auto", "1K", "high")),
        ({"quality": "2K"}, ResolvedSize("2048x2048", 2048, 2048, "auto", "2K", "auto")),
        (
            {"aspect_ratio": "auto", "quality": "4K"},
            ResolvedSize("2880x2880", 2880, 2880, "auto", "4K", "auto"),
        ),
        (
            {"aspect_ratio": "16:9", "quality": "4K"},
            ResolvedSize("3840x2160", 3840, 2160, "16:9", "4K", "auto"),
        ),
        ({"aspect_ratio": "1:1"}, ResolvedSize("1024x1024", 1024, 1024, "1:1", "1K", "auto")),
        (
            {"size": "auto", "aspect_ratio": "9:16", "quality": "low"},
            ResolvedSize("720x1280", 720, 1280, "9:16", "1K", "low"),
        ),
        ({"size": "1024x1024"}, ResolvedSize("1024x1024", 1024, 1024, "1:1", "1K", "auto")),
        (
            {"size": "1536x1024", "aspect_ratio": "3:2", "quality": "medium"},
            ResolvedSize("1536x1024", 1536, 1024, "3:2", "1K", "medium"),
        ),
        (
            {"size": "1360x768", "aspect_ratio": "16:9"},
            ResolvedSize("1360x768", 1360, 768, "16:9", "1K", "auto"),
        ),
        (
            {"size": "2048x2048", "quality": "2K"},
            ResolvedSize("2048x2048", 2048, 2048, "1:1", "2K", "auto"),
        ),
        (
            {"size": "1536x1024", "aspect_ratio": "auto"},
            ResolvedSize("1536x1024", 1536, 1024, "3:2", "1K", "auto"),
        ),
        (
            {"size": "1008x1008"},
            ResolvedSize("1008x1008", 1008, 1008, "1:1", "1K", "auto"),
        ),
        (
            {"size": "1200x640"},  # 15:8, no catalog ratio within 3%
            ResolvedSize("1200x640", 1200, 640, "15:8", "1K", "auto"),
        ),
    ],
)
def test_resolve_size(kwargs, expected):
    assert resolve(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "param", "fragment"),
    [
        ({"size": "1024x1024", "aspect_ratio": "16:9"}, "aspect_ratio", "inconsistent"),
        ({"size": "1536x1024", "aspect_ratio": "4:3"}, "aspect_ratio", "inconsistent"),
        (
            {"size": "1024x1024", "quality": "2K"},
            "quality",
            "quality 2K does not match size 1024x1024 (1K)",
        ),
        ({"size": "3840x2160", "quality": "1K"}, "quality", "does not match"),
        ({"quality": "ultra"}, "quality", "'ultra'"),
        ({"quality": "1k"}, "quality", "must be one of"),
        ({"quality": ""}, "quality", "must be one of"),
        ({"aspect_ratio": "7:5"}, "aspect_ratio", "'7:5'"),
        ({"aspect_ratio": "16/9"}, "aspect_ratio", "must be one of"),
        ({"size": "1000x1000"}, "size", "multiples of 16"),
        ({"size": "big"}, "size", "must be 'auto' or WxH"),
    ],
)
def test_resolve_size_rejects(kwargs, param, fragment):
    with pytest.raises(CatalogError) as caught:
        resolve(**kwargs)
    assert caught.value.param == param
    assert fragment in caught.value.message


def test_resolve_size_rejects_a_tier_the_model_does_not_offer():
    small = model().model_copy(update={"qualities": ["1K", "2K"],
                                       "credits_per_image": {"1K": 8, "2K": 10}})
    with pytest.raises(CatalogError) as caught:
        resolve_size(small, size="3840x2160", aspect_ratio=None, quality=None)
    assert caught.value.param == "size"


# --- load_catalog ---------------------------------------------------------------------------


def test_shipped_catalog_matches_the_contract():
    expected = json.loads(CONTRACT_MODELS_JSON)
    assert load_catalog().listing().model_dump(mode="json") == expected
    assert load_catalog(DEFAULT_CATALOG_PATH).listing().model_dump(mode="json") == expected


def test_shipped_catalog_key_order_matches_the_contract():
    api = load_catalog().listing().model_dump(mode="json")
    expected = json.loads(CONTRACT_MODELS_JSON)
    assert list(api) == list(expected)
    assert list(api["data"][0]) == list(expected["data"][0])
    assert json.dumps(api) == json.dumps(expected)


def test_catalog_lookup():
    catalog = load_catalog()
    assert catalog.get("gpt-image-2") == model()
    assert catalog.get("gpt-image-1") is None
    assert [m.id for m in catalog.models()] == ["gpt-image-2"]
    spec = model()
    assert spec.aspect_ratios[0] == "auto"
    assert spec.credits_per_image == {"1K": 8, "2K": 10, "4K": 12}


def shipped_raw() -> dict:
    return json.loads(DEFAULT_CATALOG_PATH.read_text())


def write(tmp_path: Path, data: object, name: str = "my-catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_custom_catalog_with_new_model_and_price(tmp_path):
    raw = shipped_raw()
    raw["models"][0]["credits_per_image"]["1K"] = 9
    raw["models"].append(
        {
            "id": "gpt-image-1-mini",
            "object": "model",
            "name": "GPT Image 1 Mini",
            "provider": "openai",
            "provider_model": "gpt-image-1-mini",
            "aspect_ratios": ["1:1", "3:2", "2:3"],
            "qualities": ["1K"],
            "render_qualities": ["auto", "low", "medium", "high"],
            "default_aspect_ratio": "1:1",
            "default_quality": "1K",
            "reference_image_limit": 0,
            "max_images_per_request": 10,
            "credits_per_image": {"1K": 2},
        }
    )
    catalog = load_catalog(str(write(tmp_path, raw)))
    assert catalog.get("gpt-image-2").credits_per_image["1K"] == 9
    mini = catalog.get("gpt-image-1-mini")
    assert mini is not None and mini.credits_per_image == {"1K": 2}
    assert [m.id for m in catalog.listing().data] == ["gpt-image-2", "gpt-image-1-mini"]
    assert resolve_size(mini, size=None, aspect_ratio=None, quality=None).size == "1024x1024"
    with pytest.raises(CatalogError) as caught:
        resolve_size(mini, size=None, aspect_ratio=None, quality="2K")
    assert caught.value.param == "quality"


def mutate(path: str, value):
    """A change to the shipped catalog: set the dotted path to value (a missing value deletes)."""

    def apply(raw: dict) -> dict:
        *parents, last = path.split(".")
        node = raw["models"][0]
        for part in parents:
            node = node[part]
        if value is MISSING:
            del node[last]
        else:
            node[last] = value
        return raw

    return apply


MISSING = object()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (mutate("credits_per_image", MISSING), "'credits_per_image': missing field"),
        (mutate("id", MISSING), "'id': missing field"),
        (mutate("credits_per_image.8K", 20),
         "'credits_per_image.8K.[key]': Input should be '1K', '2K' or '4K'"),
        (mutate("credits_per_image.2K", MISSING), "'credits_per_image' has no price for tier '2K'"),
        (mutate("credits_per_image.1K", 0),
         "'credits_per_image.1K': Input should be greater than 0"),
        (mutate("credits_per_image.1K", -3),
         "'credits_per_image.1K': Input should be greater than 0"),
        (mutate("credits_per_image.1K", 1.5),
         "'credits_per_image.1K': Input should be a valid integer"),
        (mutate("credits_per_image.1K", True),
         "'credits_per_image.1K': Input should be a valid integer"),
        (mutate("credits_per_image", [8, 10, 12]),
         "'credits_per_image': Input should be a valid dictionary"),
        (mutate("max_images_per_request", 0),
         "'max_images_per_request': Input should be greater than or equal to 1"),
        (mutate("max_images_per_request", "4"),
         "'max_images_per_request': Input should be a valid integer"),
        (mutate("reference_image_limit", -1),
         "'reference_image_limit': Input should be greater than or equal to 0"),
        (mutate("default_quality", "8K"), "'default_quality': Input should be '1K', '2K' or '4K'"),
        (mutate("default_aspect_ratio", "7:5"), "'default_aspect_ratio' must be one of"),
        (mutate("qualities", ["1K", "8K"]), "'qualities.1': Input should be '1K', '2K' or '4K'"),
        (mutate("qualities", []), "'qualities': List should have at least 1 item"),
        (mutate("aspect_ratios", ["1:1", "1:1"]), "'aspect_ratios': must list distinct strings"),
        (mutate("aspect_ratios", ["auto", "5:1"]), "aspect ratio '5:1'"),
        (mutate("aspect_ratios", ["auto", "wide"]), "aspect ratio 'wide'"),
        (mutate("name", ""), "'name': String should have at least 1 character"),
        (mutate("object", "engine"), "'object': Input should be 'model'"),
        (mutate("price", 3), "'price': unknown field"),
    ],
)
def test_broken_catalog_entries(tmp_path, change, fragment):
    path = write(tmp_path, change(shipped_raw()))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(path) in caught.value.message
    assert "gpt-image-2" in caught.value.message or "'id'" in caught.value.message
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON at line 1"),
        ("", "invalid JSON"),
        ("[]", '{"models": [...]}'),
        ('{"models": []}', "at least one model"),
        ('{"models": {}}', "at least one model"),
        ('{"models": [42]}', "model #1: must be a JSON object"),
    ],
)
def test_broken_catalog_files(tmp_path, content, fragment):
    path = write(tmp_path, content)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(path) in caught.value.message
    assert fragment in caught.value.message


def test_duplicate_model_id(tmp_path):
    raw = shipped_raw()
    raw["models"].append(raw["models"][0])
    path = write(tmp_path, raw)
    with pytest.raises(CatalogError, match="duplicate model id 'gpt-image-2'") as caught:
        load_catalog(path)
    assert str(path) in caught.value.message


def test_unreadable_catalog(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(CatalogError, match="cannot read") as caught:
        load_catalog(missing)
    assert str(missing) in caught.value.message
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path)  # a directory
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CatalogError, match="binary.json"):
        load_catalog(binary)
