"""Pure rewriting of the OCI runtime spec (config.json) for reboots.

Done once per container at Create (and when an Update changes the
resources), never per reboot: the rewritten spec is kept and written
back to the bundle only when it changes.
"""

from __future__ import annotations

import copy
from typing import Any

from rebootshim.container.reboot import Mode, Policy
from rebootshim.errors import InvalidArgument

Spec = dict[str, Any]
CAP_SYS_BOOT = "CAP_SYS_BOOT"
_CAP_SETS = ("bounding", "effective", "permitted")
# Loading a kernel is a host-wide effect of CAP_SYS_BOOT; deny it always.
KEXEC_SYSCALLS = ("kexec_load", "kexec_file_load")
_EPERM = 1
_DENYING = (
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
)


def validate(spec: Spec) -> None:
    """The fields this module reads must have their OCI types, so that a
    malformed spec fails Create as InvalidArgument, not as a crash."""
    _expect(spec.get("annotations", {}), dict, "annotations")
    for key, value in (spec.get("annotations") or {}).items():
        _expect(value, str, f"annotations[{key!r}]")
    process = _expect(spec.get("process", {}), dict, "process")
    caps = _expect(process.get("capabilities", {}), dict, "process.capabilities")
    for name, values in caps.items():
        _expect_strings(values, f"process.capabilities.{name}")
    linux = _expect(spec.get("linux", {}), dict, "linux")
    for ns in _expect(linux.get("namespaces", []), list, "linux.namespaces"):
        _expect(ns, dict, "linux.namespaces[]")
    _expect(linux.get("resources", {}), dict, "linux.resources")
    seccomp = _expect(linux.get("seccomp", {}), dict, "linux.seccomp")
    for rule in _expect(seccomp.get("syscalls", []), list, "linux.seccomp.syscalls"):
        _expect(rule, dict, "linux.seccomp.syscalls[]")
        _expect_strings(rule.get("names", []), "linux.seccomp.syscalls[].names")


def _expect(value: Any, kind: type, field: str) -> Any:
    if value is not None and not isinstance(value, kind):
        raise InvalidArgument(
            f"malformed OCI spec: {field} must be a {_JSON_NAMES[kind]}"
        )
    return value if value is not None else kind()


def _expect_strings(values: Any, field: str) -> None:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"malformed OCI spec: {field} must be a list of strings")


_JSON_NAMES: dict[type, str] = {dict: "JSON object", list: "JSON array", str: "string"}


def namespace(spec: Spec, kind: str) -> dict[str, Any] | None:
    """The spec's linux.namespaces entry of ``kind``, or None."""
    for ns in spec.get("linux", {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == kind:
            return ns
    return None


def owns_namespace(spec: Spec, kind: str) -> bool:
    """True if runc makes a new ``kind`` namespace (no path to join)."""
    ns = namespace(spec, kind)
    return ns is not None and not ns.get("path")


def effective_policy(spec: Spec, policy: Policy) -> Policy:
    """Reboot handling only where the container owns its PID namespace.

    Asking for ``restart`` explicitly with a host or shared PID namespace
    is refused: there reboot(2) would reboot the host or kill the
    namespace's real init (reboot-prior-art.md section 1).
    """
    if policy.mode is Mode.EXIT or owns_namespace(spec, "pid"):
        return policy
    if policy.explicit:
        raise InvalidArgument(
            "reboot policy restart needs a container with its own PID namespace;"
            " this one uses the host's or another container's"
        )
    return Policy(Mode.EXIT, policy.max_reboots, policy.window)


def prepare(spec: Spec, policy: Policy) -> Spec:
    """The spec the container runs with, for every boot.

    With reboot handling on: CAP_SYS_BOOT (so ``reboot`` works without
    --privileged), reboot(2) allowed and kexec denied by seccomp.
    Without its own PID namespace a container never keeps CAP_SYS_BOOT:
    reboot(2) there reaches the host or the namespace's real init.
    """
    out = copy.deepcopy(spec)
    process = out.setdefault("process", {})
    if policy.mode is Mode.RESTART:
        process["capabilities"] = add_sys_boot(process.get("capabilities"))
        linux = out.setdefault("linux", {})
        linux["seccomp"] = reboot_seccomp(linux.get("seccomp"))
    elif not owns_namespace(spec, "pid") and process.get("capabilities"):
        process["capabilities"] = drop_sys_boot(process["capabilities"])
    return out


def prepare_exec(process: dict[str, Any], policy: Policy, spec: Spec) -> dict[str, Any]:
    """An exec's process spec, with the same CAP_SYS_BOOT rule as the init."""
    out = dict(process)
    if policy.mode is Mode.RESTART:
        out["capabilities"] = add_sys_boot(out.get("capabilities"))
    elif not owns_namespace(spec, "pid") and out.get("capabilities"):
        out["capabilities"] = drop_sys_boot(out["capabilities"])
    return out


def drop_sys_boot(caps: dict[str, Any]) -> dict[str, Any]:
    return {
        name: [c for c in values if c != CAP_SYS_BOOT]
        if isinstance(values, list)
        else values
        for name, values in caps.items()
    }


def add_sys_boot(caps: dict[str, Any] | None) -> dict[str, Any]:
    """Capabilities with CAP_SYS_BOOT in the bounding/effective/permitted sets."""
    out = dict(caps or {})
    for name in _CAP_SETS:
        current = list(out.get(name) or [])
        if CAP_SYS_BOOT not in current:
            current.append(CAP_SYS_BOOT)
        out[name] = current
    return out


def reboot_seccomp(seccomp: dict[str, Any] | None) -> dict[str, Any]:
    """A seccomp profile in which reboot(2) is allowed and kexec_load and
    kexec_file_load fail EPERM.

    A client-made default profile (``ctr run --seccomp``, CRI's
    RuntimeDefault) allows reboot only with CAP_SYS_BOOT, judged from the
    spec before the shim granted it; the restart policy grants it, so
    reboot is allowed with it, as those profiles would have.
    """
    out: dict[str, Any] = (
        copy.deepcopy(seccomp) if seccomp else {"defaultAction": "SCMP_ACT_ALLOW"}
    )
    ours = (*KEXEC_SYSCALLS, "reboot")
    rules = []
    for rule in out.get("syscalls") or []:
        names = [n for n in rule.get("names") or [] if n not in ours]
        if names:
            rules.append({**rule, "names": names})
    # runc refuses a rule whose action equals the default action.
    if out.get("defaultAction") in _DENYING:
        rules.append({"names": ["reboot"], "action": "SCMP_ACT_ALLOW"})
    else:
        rules.append(
            {
                "names": list(KEXEC_SYSCALLS),
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": _EPERM,
            }
        )
    out["syscalls"] = rules
    return out


def join_network(spec: Spec, path: str) -> Spec:
    """The spec with its network namespace replaced by the pinned ``path``."""
    out = copy.deepcopy(spec)
    ns = namespace(out, "network")
    if ns is not None:
        ns["path"] = path
    return out


def with_resources(spec: Spec, resources: dict[str, Any]) -> Spec:
    """The spec with ``resources`` merged into linux.resources: what an
    Update names replaces, what it does not name stays (as runc update)."""
    out = copy.deepcopy(spec)
    linux = out.setdefault("linux", {})
    linux["resources"] = merge(linux.get("resources") or {}, resources)
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merge key by key; any other value replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
