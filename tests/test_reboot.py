import signal

import pytest

from rebootshim.container.reboot import (
    ANNOTATION,
    ExitKind,
    Mode,
    Policy,
    StormWindow,
    classify,
    parse_policy,
)
from rebootshim.errors import InvalidArgument


def killed(sig: int) -> int:
    return int(sig)


def exited(code: int) -> int:
    return code << 8


def test_sighup_death_with_own_pid_ns_is_a_reboot() -> None:
    assert classify(killed(signal.SIGHUP), True, set()) is ExitKind.REBOOT


def test_sigint_death_is_a_poweroff() -> None:
    assert classify(killed(signal.SIGINT), True, set()) is ExitKind.POWEROFF


def test_sighup_death_in_a_shared_pid_ns_is_an_exit() -> None:
    assert classify(killed(signal.SIGHUP), False, set()) is ExitKind.EXIT


def test_sighup_the_shim_sent_is_never_a_reboot() -> None:
    assert classify(killed(signal.SIGHUP), True, {signal.SIGHUP}) is ExitKind.EXIT


@pytest.mark.parametrize("status", [exited(0), exited(129), killed(signal.SIGKILL)])
def test_other_statuses_are_exits(status: int) -> None:
    assert classify(status, True, set()) is ExitKind.EXIT


def test_absent_annotation_gives_the_default_restart_policy() -> None:
    policy = parse_policy({})
    assert policy == Policy(Mode.RESTART, 10, 60.0, explicit=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("exit", Policy(Mode.EXIT, explicit=True)),
        ("restart", Policy(Mode.RESTART, explicit=True)),
        ("restart:3/60s", Policy(Mode.RESTART, 3, 60.0, explicit=True)),
        ("restart:5/2m", Policy(Mode.RESTART, 5, 120.0, explicit=True)),
        (" Restart:1/10 ", Policy(Mode.RESTART, 1, 10.0, explicit=True)),
    ],
)
def test_annotation_values_parse(value: str, expected: Policy) -> None:
    assert parse_policy({ANNOTATION: value}) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "reboot",
        "restart:",
        "restart:0/60s",
        "restart:3",
        "restart:3/0s",
        "restart:x/60s",
        "exit:3/60s",
    ],
)
def test_bad_annotation_is_invalid_argument_naming_it(value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_policy({ANNOTATION: value})
    assert ANNOTATION in str(err.value)
    assert "restart:N/DURATION" in str(err.value)


def test_storm_window_refuses_the_reboot_past_the_bound() -> None:
    storm = StormWindow(3, 10.0)
    assert [storm.allow(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]


def test_storm_window_forgets_reboots_outside_the_window() -> None:
    storm = StormWindow(2, 10.0)
    assert storm.allow(0.0) and storm.allow(5.0)
    assert not storm.allow(9.0)
    assert storm.allow(15.5)
