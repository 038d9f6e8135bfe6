from rebootshim.runtime.mount import (
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    parse_options,
)


def test_flags_and_data_are_split() -> None:
    flags, propagation, data = parse_options(
        ["ro", "nosuid", "nodev", "index=off", "lowerdir=/a:/b", "rprivate"]
    )
    assert flags == MS_RDONLY | MS_NOSUID | MS_NODEV
    assert propagation == MS_PRIVATE | MS_REC
    assert data == "index=off,lowerdir=/a:/b"


def test_rw_clears_an_earlier_ro() -> None:
    flags, _, _ = parse_options(["ro", "rw"])
    assert flags & MS_RDONLY == 0


def test_rbind_is_a_recursive_bind() -> None:
    flags, _, _ = parse_options(["rbind"])
    assert flags == MS_BIND | MS_REC
