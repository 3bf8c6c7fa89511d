"""Output filenames: the seed's naming, the real output's extension, and hostile names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import BadRequest
from service.filenames import (
    MAX_OUTPUT_FILENAME_CHARS,
    MAX_STEM_CHARS,
    build_filenames,
    validate_output_filename,
)

WEBP = "https://replicate.delivery/xezq/abc/out-0.webp"
WEBP_2 = "https://replicate.delivery/xezq/def/out-1.webp"
PNG = "https://replicate.delivery/xezq/ghi/output.png"


def one(name: str | None, url: str = WEBP, default_stem: str = "flux-dev_pred123") -> str:
    [filename] = build_filenames(name, [url], default_stem=default_stem)
    return filename


# --- the seed's examples --------------------------------------------------------------------


def test_given_extension_is_kept_even_if_the_output_differs() -> None:
    assert one("red_car.jpg") == "red_car.jpg"
    assert one("forest_path.png") == "forest_path.png"


def test_no_extension_takes_the_output_url_extension() -> None:
    assert one("blue_wave") == "blue_wave.webp"
    assert one("mountain_sunset", PNG) == "mountain_sunset.png"


def test_several_outputs_are_numbered_from_one() -> None:
    assert build_filenames("blue_wave.jpg", [WEBP, WEBP_2], default_stem="d") == [
        "blue_wave_1.jpg",
        "blue_wave_2.jpg",
    ]
    assert build_filenames("variations", [WEBP, WEBP_2, PNG, WEBP], default_stem="d") == [
        "variations_1.webp",
        "variations_2.webp",
        "variations_3.png",
        "variations_4.webp",
    ]


def test_extension_case_is_kept() -> None:
    assert one("Photo.JPG") == "Photo.JPG"


def test_only_image_extensions_count_as_extensions() -> None:
    assert one("version1.5") == "version1.5.webp"
    assert one("notes.txt") == "notes.txt.webp"
    assert one("archive.tar.jpeg") == "archive.tar.jpeg"


# --- defaults -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "   ", "///", "..", "../..", "\\", ".", "\x00\x01"])
def test_default_stem_when_absent_or_empty(name: str | None) -> None:
    assert one(name, default_stem="flux-dev_pred123") == "flux-dev_pred123.webp"


def test_default_stem_is_numbered_too() -> None:
    assert build_filenames(None, [WEBP, WEBP_2], default_stem="qwen-image_p1") == [
        "qwen-image_p1_1.webp",
        "qwen-image_p1_2.webp",
    ]


def test_default_stem_is_sanitized_too() -> None:
    assert one(None, default_stem="../a b") == "a_b.webp"
    assert one(None, default_stem="") == "image.webp"


def test_url_without_extension_uses_the_default_extension() -> None:
    url = "https://replicate.delivery/xezq/abc/output"
    assert build_filenames("x", [url], default_stem="d", default_extension="png") == ["x.png"]
    assert build_filenames("x", [url], default_stem="d") == ["x.webp"]


def test_url_query_and_fragment_are_ignored() -> None:
    assert one("x", "https://host/out-0.png?sig=a.b#frag.c") == "x.png"


def test_strange_url_extensions_are_not_used() -> None:
    assert one("x", "https://host/out-0.we/bp") == "x.webp"
    assert one("x", "https://host/out-0.w_ebp") == "x.webp"
    assert one("x", "https://host/out.ABCDEFGHIJ") == "x.webp"
    assert one("x", "https://host/out-0.PNG") == "x.png"


def test_empty_url_list() -> None:
    assert build_filenames("x", [], default_stem="d") == []


# --- hostile names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd.webp"),
        ("/etc/passwd", "passwd.webp"),
        ("..\\..\\windows\\system32\\cmd.png", "cmd.png"),
        ("C:\\Users\\me\\my photo.PNG", "my_photo.PNG"),
        ("..x.png", "x.png"),
        (".bashrc", "bashrc.webp"),
        ("-rf.png", "rf.png"),
        ("a..b.png", "a.b.png"),
        ("name...jpg", "name.jpg"),
        ("trailing.", "trailing.webp"),
        ("my photo (1).png", "my_photo__1_.png"),
        ("a\x00b\nc\td.png", "abcd.png"),
        ("\u202egnp.exe", "gnp.exe.webp"),
        ("<script>alert(1)</script>", "script_.webp"),
        ("CON", "_CON.webp"),
        ("nul.png", "_nul.png"),
        ("com1.tar", "_com1.tar.webp"),
        ("山水画", "山水画.webp"),
        ("café.jpg", "café.jpg"),
        ("a\uff0fb.png", "a_b.png"),
    ],
)
def test_hostile_names_are_sanitized(name: str, expected: str) -> None:
    assert one(name) == expected


def test_long_stems_are_cut() -> None:
    name = one("a" * 250 + ".jpg")
    assert name == "a" * MAX_STEM_CHARS + ".jpg"
    numbered = build_filenames("b" * 250, [WEBP, WEBP_2], default_stem="d")
    assert numbered == ["b" * MAX_STEM_CHARS + "_1.webp", "b" * MAX_STEM_CHARS + "_2.webp"]


def test_cut_never_leaves_a_trailing_dot() -> None:
    name = one("a" * (MAX_STEM_CHARS - 1) + ".b.png")
    assert ".." not in name
    assert name == "a" * (MAX_STEM_CHARS - 1) + ".png"


# --- validate_output_filename -----------------------------------------------------------------


def test_validate_output_filename_keeps_the_value() -> None:
    assert validate_output_filename("my image.jpg") == "my image.jpg"
    assert validate_output_filename("a" * MAX_OUTPUT_FILENAME_CHARS) == "a" * 255


@pytest.mark.parametrize("value", [5, None, ["a"], {"a": 1}, True, 1.5])
def test_validate_output_filename_refuses_non_strings(value: object) -> None:
    with pytest.raises(BadRequest) as info:
        validate_output_filename(value)
    assert info.value.message == "Invalid field 'output_filename': must be a string"


def test_validate_output_filename_refuses_long_values_and_names_the_field() -> None:
    with pytest.raises(BadRequest) as info:
        validate_output_filename("a" * 256, field="tasks[3].output_filename")
    assert info.value.message == (
        "Invalid field 'tasks[3].output_filename': must be at most 255 characters (got 256)"
    )


# --- properties -----------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[\w.-]+")

hostile_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('./\\-_ :*?"<>|\x00\n\t\u202e\u200b\uff5e\uff0e\uff0f')),
        st.characters(),
    ),
    max_size=300,
)
urls = st.lists(
    st.builds(
        lambda stem, ext: f"https://replicate.delivery/x/{stem}{ext}",
        st.text(alphabet="abc-_/.", max_size=10),
        st.sampled_from(["", ".webp", ".png", ".jpg", ".", "..", ".x/y", ".JPEG", "?q=.png"]),
    ),
    max_size=6,
)


@given(name=st.one_of(st.none(), hostile_text), url_list=urls, default_stem=hostile_text)
def test_names_are_always_safe_and_unique(
    name: str | None, url_list: list[str], default_stem: str
) -> None:
    names = build_filenames(name, url_list, default_stem=default_stem)
    assert len(names) == len(url_list)
    assert len(set(names)) == len(names)
    for filename in names:
        assert filename
        assert "/" not in filename
        assert "\\" not in filename
        assert ".." not in filename
        assert not filename.startswith((".", "-"))
        assert _SAFE_NAME.fullmatch(filename), filename
        assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in filename)
        stem, _, ext = filename.rpartition(".")
        assert stem and ext
        assert len(filename) <= MAX_STEM_CHARS + 20


@given(name=hostile_text)
def test_validate_then_build_never_fails(name: str) -> None:
    if len(name) <= MAX_OUTPUT_FILENAME_CHARS:
        kept = validate_output_filename(name)
        assert kept == name
        assert build_filenames(kept, [WEBP], default_stem="d")
