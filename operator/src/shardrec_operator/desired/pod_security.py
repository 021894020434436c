"""The `restricted` Pod Security Standard, checked on a pod template before it is applied (pure).

The operator's own pods pass it by construction (`pods.pod_security_context`), but a pod template
override can add volumes and annotations, and a namespace that enforces `restricted` would reject
the pods only when a controller creates them: a StatefulSet with no pods and an event on it that
nobody reads. Checking the merged template first turns that into a clear InvalidSpec condition.

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the
baseline controls plus the restricted ones, latest version), for the pod and every container,
init container and ephemeral container. Each violation names the field.
"""

from __future__ import annotations

from typing import Any, Final

from shardrec.api.v1alpha1 import APPARMOR_ANNOTATION_PREFIX, RESTRICTED_VOLUME_SOURCES

CONTAINER_KINDS: Final = ("containers", "initContainers", "ephemeralContainers")
SAFE_SYSCTLS: Final = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES: Final = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SECCOMP_TYPES: Final = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES: Final = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_ADDED_CAPABILITIES: Final = frozenset({"NET_BIND_SERVICE"})


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"spec.{kind}[{container.get('name', index)}]", container)
        for kind in CONTAINER_KINDS
        for index, container in enumerate(spec.get(kind) or [])
    ]


def _host_namespaces(spec: dict[str, Any]) -> list[str]:
    return [f"spec.{key} must not be true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]


def _volumes(spec: dict[str, Any]) -> list[str]:
    errors = []
    for volume in spec.get("volumes") or []:
        kinds = [key for key in volume if key != "name"]
        bad = [kind for kind in kinds if kind not in RESTRICTED_VOLUME_SOURCES]
        if bad:
            errors.append(
                f"spec.volumes[{volume.get('name')}]: {', '.join(bad)} volumes are not allowed "
                f"(allowed: {', '.join(RESTRICTED_VOLUME_SOURCES)})"
            )
    return errors


def _apparmor_annotations(annotations: dict[str, str]) -> list[str]:
    return [
        f"metadata.annotations[{key}]: AppArmor profile {value!r} (only runtime/default or localhost/*)"
        for key, value in sorted(annotations.items())
        if key.startswith(APPARMOR_ANNOTATION_PREFIX)
        and value != "runtime/default"
        and not value.startswith("localhost/")
    ]


def _context_checks(where: str, context: dict[str, Any]) -> list[str]:
    """Controls that apply alike to the pod's and to a container's securityContext."""
    errors = []
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        errors.append(f"{where}.seLinuxOptions.type {selinux['type']!r} is not allowed")
    for key in ("user", "role"):
        if selinux.get(key):
            errors.append(f"{where}.seLinuxOptions.{key} must not be set")
    if context.get("runAsUser") == 0:
        errors.append(f"{where}.runAsUser must not be 0 (root)")
    if context.get("runAsNonRoot") is False:
        errors.append(f"{where}.runAsNonRoot must not be false")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        errors.append(f"{where}.seccompProfile.type {seccomp!r} (only RuntimeDefault or Localhost)")
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        errors.append(f"{where}.appArmorProfile.type {apparmor!r} (only RuntimeDefault or Localhost)")
    return errors


def _container_checks(where: str, container: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    context = container.get("securityContext") or {}
    at = f"{where}.securityContext"
    errors = _context_checks(at, context)
    if context.get("privileged"):
        errors.append(f"{at}.privileged must not be true")
    if context.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{at}.allowPrivilegeEscalation must be false")
    if context.get("procMount", "Default") != "Default":
        errors.append(f"{at}.procMount must be Default")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        errors.append(f"{at}.capabilities.drop must include ALL")
    added = sorted(set(capabilities.get("add") or []) - ALLOWED_ADDED_CAPABILITIES)
    if added:
        errors.append(f"{at}.capabilities.add {added} (only NET_BIND_SERVICE)")
    if context.get("runAsNonRoot") is not True and pod.get("runAsNonRoot") is not True:
        errors.append(f"{at}.runAsNonRoot must be true (here or in spec.securityContext)")
    if (context.get("seccompProfile") or {}).get("type") is None and not (
        pod.get("seccompProfile") or {}
    ).get("type"):
        errors.append(f"{at}.seccompProfile.type must be RuntimeDefault or Localhost (here or on the pod)")
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            errors.append(f"{where}.ports[{port.get('name', port.get('containerPort'))}]: hostPort must be 0")
    return errors


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """Every way the PodTemplateSpec `template` (metadata + spec) breaks the restricted Pod
    Security Standard; empty when it complies."""
    spec = template.get("spec") or {}
    pod = spec.get("securityContext") or {}
    errors = _host_namespaces(spec) + _volumes(spec)
    errors += _apparmor_annotations((template.get("metadata") or {}).get("annotations") or {})
    errors += _context_checks("spec.securityContext", pod)
    for sysctl in pod.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            errors.append(f"spec.securityContext.sysctls[{sysctl.get('name')}] is not a safe sysctl")
    for where, container in _containers(spec):
        errors += _container_checks(where, container, pod)
    return errors
