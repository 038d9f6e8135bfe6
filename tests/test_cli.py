import pytest

from rebootshim.cli import UsageError, parse_args, runc_root, socket_path


def test_containerd_start_argv_parses() -> None:
    flags = parse_args(
        [
            "-namespace",
            "ns",
            "-address",
            "/r/c.sock",
            "-publish-binary",
            "/bin/ctrd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]
    )
    assert (flags.namespace, flags.address, flags.id) == ("ns", "/r/c.sock", "c1")
    assert flags.debug and flags.action == "start"


def test_go_flag_forms_with_equals_and_double_dash_parse() -> None:
    flags = parse_args(["--namespace=ns", "-id=c1", "-bundle", "/b", "delete"])
    assert (flags.namespace, flags.id, flags.bundle, flags.action) == (
        "ns",
        "c1",
        "/b",
        "delete",
    )


@pytest.mark.parametrize(
    "argv", [["-nope", "x"], ["-id"], ["-debug=maybe"], ["start", "stop"], ["run"]]
)
def test_bad_arguments_raise_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_socket_path_matches_the_runc_shim_naming() -> None:
    flags = parse_args(["-namespace", "protons", "-address", "/s/c.sock", "-id", "pc1"])
    # sha256("/s/c.sock/protons/pc1"), as containerd's runc shim computes it
    import hashlib

    digest = hashlib.sha256(b"/s/c.sock/protons/pc1").hexdigest()
    assert socket_path(flags) == f"/run/containerd/s/{digest}"


def test_runc_root_lives_under_the_containerd_state_dir() -> None:
    bundle = "/st/io.containerd.runtime.v2.task/ns/c1"
    assert runc_root(bundle, "ns") == "/st/io.containerd.reboot.v2/runc/ns"
