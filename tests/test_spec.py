from typing import Any

import pytest

from rebootshim.container import spec as specs
from rebootshim.container.reboot import Mode, Policy
from rebootshim.errors import InvalidArgument


def base(pid_path: str | None = None) -> dict[str, Any]:
    pid: dict[str, str] = {"type": "pid"}
    if pid_path:
        pid["path"] = pid_path
    return {
        "process": {
            "capabilities": {
                "bounding": ["CAP_KILL"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"],
            }
        },
        "linux": {"namespaces": [pid, {"type": "network"}, {"type": "mount"}]},
    }


RESTART = Policy(Mode.RESTART)


def test_restart_adds_sys_boot_to_bounding_effective_permitted() -> None:
    caps = specs.prepare(base(), RESTART)["process"]["capabilities"]
    for name in ("bounding", "effective", "permitted"):
        assert caps[name] == ["CAP_KILL", "CAP_SYS_BOOT"]


def test_restart_denies_kexec_with_eperm_when_there_is_no_profile() -> None:
    seccomp = specs.prepare(base(), RESTART)["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ALLOW"
    assert seccomp["syscalls"] == [
        {
            "names": ["kexec_load", "kexec_file_load"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
        }
    ]


def test_a_denying_profile_allows_reboot_and_no_longer_kexec() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read", "kexec_load"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["reboot"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    out = specs.reboot_seccomp(profile)
    assert out["syscalls"] == [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["reboot"], "action": "SCMP_ACT_ALLOW"},
    ]


def test_prepare_does_not_mutate_its_input() -> None:
    spec = base()
    specs.prepare(spec, RESTART)
    assert spec == base()


def test_explicit_restart_with_host_pid_namespace_is_refused() -> None:
    spec = base(pid_path="/proc/1/ns/pid")
    with pytest.raises(InvalidArgument, match="own PID namespace"):
        specs.effective_policy(spec, Policy(Mode.RESTART, explicit=True))


def test_default_policy_with_shared_pid_namespace_turns_reboot_off() -> None:
    spec = base(pid_path="/proc/1/ns/pid")
    assert specs.effective_policy(spec, Policy()).mode is Mode.EXIT


def test_shared_pid_namespace_never_keeps_sys_boot() -> None:
    spec = base(pid_path="/proc/1/ns/pid")
    spec["process"]["capabilities"]["bounding"].append("CAP_SYS_BOOT")
    out = specs.prepare(spec, Policy(Mode.EXIT))
    assert "CAP_SYS_BOOT" not in out["process"]["capabilities"]["bounding"]


def test_exec_gets_sys_boot_under_restart() -> None:
    process = specs.prepare_exec({"args": ["sh"]}, RESTART, base())
    assert "CAP_SYS_BOOT" in process["capabilities"]["effective"]


def test_join_network_sets_the_pinned_path() -> None:
    out = specs.join_network(base(), "/b/netns")
    assert specs.namespace(out, "network") == {"type": "network", "path": "/b/netns"}
    assert specs.owns_namespace(base(), "network")
    assert not specs.owns_namespace(out, "network")


def test_with_resources_sets_linux_resources() -> None:
    out = specs.with_resources(base(), {"memory": {"limit": 1 << 20}})
    assert out["linux"]["resources"] == {"memory": {"limit": 1 << 20}}


def test_an_update_keeps_the_limits_it_does_not_name() -> None:
    spec = specs.with_resources(base(), {"memory": {"limit": 100, "swap": 200}})
    out = specs.with_resources(spec, {"cpu": {"shares": 512}, "memory": {"limit": 50}})
    assert out["linux"]["resources"] == {
        "memory": {"limit": 50, "swap": 200},
        "cpu": {"shares": 512},
    }


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"process": 5}, "process must be a JSON object"),
        ({"annotations": 7}, "annotations must be a JSON object"),
        ({"annotations": {"a": 1}}, "annotations['a'] must be a string"),
        ({"process": {"capabilities": {"bounding": "CAP_KILL"}}}, "bounding must"),
        ({"linux": {"seccomp": {"syscalls": [5]}}}, "syscalls[] must be"),
        ({"linux": {"namespaces": {}}}, "namespaces must be a JSON array"),
    ],
)
def test_a_malformed_spec_is_invalid_argument_naming_the_field(
    patch: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument, match="malformed OCI spec") as err:
        specs.validate({**base(), **patch})
    assert field in str(err.value)


def test_a_well_formed_spec_validates() -> None:
    specs.validate(specs.prepare(base(), RESTART))
