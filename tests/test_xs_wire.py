"""Tests for trio_vchan._xs_wire: XenStore packets without I/O."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sans_io import assert_imports_without_trio

from trio_vchan._errors import ProtocolError
from trio_vchan._xs_wire import (
    ABS_PATH_MAX,
    ERROR_NAMES,
    HEADER_SIZE,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    Access,
    Header,
    Message,
    MessageDecoder,
    MessageType,
    Permission,
    count_strings,
    decode_error,
    domain_path,
    encode_error,
    errno_from_name,
    is_relative,
    join_strings,
    name_from_errno,
    one_arg,
    resolve_path,
    split_strings,
    validate_path,
)

uint32s = st.integers(0, 2**32 - 1)
messages = st.builds(
    Message, type=uint32s, req_id=uint32s, tx_id=uint32s, payload=st.binary(max_size=200)
)
path_chars = st.sampled_from("abcXYZ019_-@")
components = st.text(path_chars, min_size=1, max_size=8)


def test_message_type_codes_match_xs_wire_h() -> None:
    codes = {t.name: t.value for t in MessageType}
    assert [codes[name] for name in ("CONTROL", "SET_PERMS", "WATCH_EVENT", "ERROR")] == [
        0,
        14,
        15,
        16,
    ]
    assert list(codes.values()) == [*range(20), *range(21, 27), 0xFFFF]  # 20 was RESTRICT


def test_header_layout_is_four_little_endian_uint32s() -> None:
    header = Header(MessageType.READ, 0x01020304, 5, 6)
    assert header.pack() == bytes.fromhex("02000000 04030201 05000000 06000000")
    assert HEADER_SIZE == 16


@given(uint32s, uint32s, uint32s, uint32s)
def test_header_round_trip(type: int, req_id: int, tx_id: int, length: int) -> None:
    header = Header(type, req_id, tx_id, length)
    assert Header.unpack(header.pack()) == header


def test_header_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="uint32"):
        Header(-1, 0, 0, 0).pack()
    with pytest.raises(ValueError, match="16 bytes"):
        Header.unpack(b"\0" * 15)


@given(st.lists(messages, max_size=8), st.data())
def test_decoder_reassembles_any_chunking(messages: list[Message], data: st.DataObject) -> None:
    wire = b"".join(m.encode() for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = MessageDecoder()
    decoded: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        decoder.feed(wire[start:end])
        while (message := decoder.next_message()) is not None:
            decoded.append(message)
    assert decoded == messages
    assert decoder.pending == 0


def test_decoder_refuses_oversized_payloads_for_good() -> None:
    decoder = MessageDecoder()
    decoder.feed(Header(MessageType.WRITE, 1, 0, PAYLOAD_MAX + 1).pack())
    with pytest.raises(ProtocolError, match="4097-byte payload"):
        decoder.next_message()
    decoder.feed(Message(MessageType.READ, 2, 0, b"/\0").encode())
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_decoder_accepts_the_largest_payload() -> None:
    decoder = MessageDecoder()
    decoder.feed(Message(MessageType.WRITE, 1, 0, b"x" * PAYLOAD_MAX).encode())
    message = decoder.next_message()
    assert message is not None
    assert len(message.payload) == PAYLOAD_MAX


def test_encode_refuses_oversized_payloads() -> None:
    with pytest.raises(ValueError, match="at most 4096"):
        Message(MessageType.WRITE, 1, 0, b"x" * (PAYLOAD_MAX + 1)).encode()


@given(st.lists(st.binary().filter(lambda b: b"\0" not in b), max_size=6))
def test_strings_round_trip(parts: list[bytes]) -> None:
    payload = join_strings(parts)
    assert split_strings(payload) == parts
    assert count_strings(payload) == len(parts)


def test_split_strings_ignores_bytes_after_the_last_nul() -> None:
    assert split_strings(b"a\0b\0junk") == [b"a", b"b"]
    assert split_strings(b"no nul") == []


def test_one_arg() -> None:
    assert one_arg(b"/a\0") == b"/a"
    for bad in (b"", b"/a", b"/a\0b\0", b"/a\0b"):
        with pytest.raises(ValueError, match="one NUL-terminated"):
            one_arg(bad)


def test_error_names_map_to_errno_values() -> None:
    assert len(ERROR_NAMES) == 16
    for name in ERROR_NAMES:
        value = errno_from_name(name)
        assert value == getattr(errno, name)
        assert name_from_errno(value) == name
        assert decode_error(encode_error(value)) == value
    assert encode_error(errno.EAGAIN) == b"EAGAIN\0"
    assert errno_from_name("EWHATEVER") == errno.EINVAL
    assert name_from_errno(errno.ETIMEDOUT) == "EINVAL"


@given(st.sampled_from(Access), st.integers(0, 0xFFFF))
def test_permission_round_trip(access: Access, domid: int) -> None:
    perm = Permission(access, domid)
    assert Permission.parse(perm.format()) == perm
    assert Permission.parse(perm.format().encode()) == perm


def test_permission_letters() -> None:
    assert Permission.parse("b0") == Permission(Access.BOTH, 0)
    assert Permission(Access.READ, 5).format() == "r5"
    assert [a.can_read for a in Access] == [False, True, False, True]
    assert [a.can_write for a in Access] == [False, False, True, True]


@pytest.mark.parametrize("text", ["", "r", "x1", "r-1", "r 1", "R1", "r1a", "r65536", "r\u0661"])
def test_permission_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"permission|domid"):
        Permission.parse(text)


def test_permission_validates_domid() -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        Permission(Access.READ, 65536)
    with pytest.raises(TypeError, match="int"):
        Permission(Access.READ, True)


@given(st.lists(components, min_size=1, max_size=5))
def test_valid_paths(parts: list[str]) -> None:
    relative = "/".join(p.replace("@", "a") for p in parts)
    validate_path(relative)
    validate_path("/" + relative)
    assert resolve_path(relative, "/local/domain/3") == "/local/domain/3/" + relative
    assert resolve_path("/" + relative, "/local/domain/3") == "/" + relative


@pytest.mark.parametrize(
    "path",
    ["", "a b", "/a/", "a//b", "/a//b", "//", "/é", "a.b", "/a\0b", "@watch", "a/"],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        validate_path(path)


def test_special_paths_only_when_allowed() -> None:
    validate_path("@introduceDomain", allow_special=True)
    assert not is_relative("@releaseDomain")
    assert not is_relative("/a")
    assert is_relative("a")


def test_path_length_limits() -> None:
    validate_path("/" + "a" * (ABS_PATH_MAX - 1))
    validate_path("a" * REL_PATH_MAX)
    validate_path("/")
    with pytest.raises(ValueError, match="limit is 3072"):
        validate_path("/" + "a" * ABS_PATH_MAX)
    with pytest.raises(ValueError, match="limit is 2048"):
        validate_path("a" * (REL_PATH_MAX + 1))


def test_domain_path() -> None:
    assert domain_path(7) == "/local/domain/7"


def test_never_imports_trio() -> None:
    assert_imports_without_trio("trio_vchan._xs_wire")
