#!/usr/bin/env python3
"""Offline checks of maitred's deployment files (run by tests/deploy.rs).

    target/tools/venv/bin/python deploy/check.py overlay standalone|sidecar|monitoring
    target/tools/venv/bin/python deploy/check.py dockerfiles
    target/tools/venv/bin/python deploy/check.py systemd

Needs the tools ./scripts/tools.sh installs: kustomize in target/tools/bin
(or kubectl on PATH) and PyYAML, jsonschema and kubernetes-validate in
target/tools/venv. No cluster, no image build, no network.

`overlay` renders deploy/kubernetes/<overlay> with kustomize, validates
every document (Kubernetes kinds with kubernetes-validate in strict mode
for each version in K8S_VERSIONS; prometheus-operator kinds against the
JSON schemas in deploy/kubernetes/schemas/) and checks the invariants the
deployment relies on (security context, probes on the admin port, drain
budget, proxy trust, monitoring copies in step with their sources). For
the app overlays it prints a JSON summary on stdout (the maitred.toml in
the ConfigMap, the container's MAITRED_* environment, the grace period)
which the Rust test feeds to the real binary's `maitred config check` and
`config show`.

Exit status 0 when everything holds; 1 with one line per problem on
stderr otherwise.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(f"{e}: run ./scripts/tools.sh and use target/tools/venv/bin/python")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
TOOLS_BIN = ROOT / "target" / "tools" / "bin"

# The oldest Kubernetes the manifests support (native sidecars are on by
# default from 1.29) and a current one.
K8S_VERSIONS = ["1.29.0", "1.33.0"]
# Time for the process to exit after the drain, on top of the drain itself.
DRAIN_MARGIN_S = 5
ADMIN_PORT = 9180
# Documented hop count behind the sidecar: cloud LB -> Envoy -> maitred.
SIDECAR_PROXY_COUNT = 2
# Client-side `kubectl apply` keeps the whole object in an annotation
# limited to 256 KiB.
LAST_APPLIED_LIMIT = 262144

CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): KUBE / "schemas" / "podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): KUBE / "schemas" / "prometheusrule_v1.json",
}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.items.append(message)
        return ok

    def exit_if_any(self) -> None:
        if self.items:
            for p in self.items:
                print(f"deploy/check.py: {p}", file=sys.stderr)
            sys.exit(1)


# --- rendering and schema validation ---------------------------------------


def kustomize_command() -> list[str]:
    own = TOOLS_BIN / "kustomize"
    if own.is_file() and os.access(own, os.X_OK):
        return [str(own), "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    sys.exit("no kustomize renderer: run ./scripts/tools.sh (installs target/tools/bin/kustomize)")


def render(overlay: str) -> list[dict]:
    path = KUBE / overlay
    out = subprocess.run(kustomize_command() + [str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"kustomize build {path.relative_to(ROOT)} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate_documents(docs: list[dict], problems: Problems) -> None:
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_SCHEMAS:
            schema = json.loads(CRD_SCHEMAS[key].read_text())
            validator = jsonschema.Draft202012Validator(schema)
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in err.path)
                problems.check(False, f"{what}: {path}: {err.message} "
                                      f"(schema {CRD_SCHEMAS[key].relative_to(ROOT)})")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                problems.check(False, f"{what}: Kubernetes {version} (strict): {path}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.check(False, f"{what}: no schema for {key[0]} {key[1]} in Kubernetes "
                                      f"{version} nor in deploy/kubernetes/schemas/")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, problems: Problems) -> dict:
    found = by_kind(docs, kind)
    problems.check(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0] if found else {}


# --- maitred's settings -----------------------------------------------------


def reference_keys() -> set[str]:
    """Every setting in config/maitred.toml, the complete reference,
    including those shown commented out because they are unset by default."""
    keys: set[str] = set()
    section = ""
    for line in (ROOT / "config" / "maitred.toml").read_text().splitlines():
        if m := re.match(r"^\[([a-z_]+)\]\s*$", line):
            section = m.group(1) + "."
        elif m := re.match(r"^(?:# )?([a-z_]+) = ", line):
            keys.add(section + m.group(1))
    return keys


def flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in table.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def env_key(name: str) -> str | None:
    """MAITRED_LIMITS__MAX_QUEUE -> limits.max_queue; None for MAITRED_CONFIG."""
    rest = name[len("MAITRED_"):]
    if rest == "CONFIG":
        return None
    return rest.lower().replace("__", ".")


def seconds(value) -> float:
    """maitred's durations: 30s, 2m, 1500ms, 1h or a bare number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def as_list(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in re.split(r"[,\s]+", str(value)) if v]


def effective(toml_text: str, env: dict[str, str]) -> dict:
    """The settings from the ConfigMap's file with the environment on top
    (defaults from config/maitred.toml). The Rust test asks the real binary
    the same question; this is for running the checks without cargo."""
    defaults = flatten(tomllib.loads((ROOT / "config" / "maitred.toml").read_text()))
    settings = dict(defaults)
    settings.update(flatten(tomllib.loads(toml_text)))
    for name, raw in env.items():
        key = env_key(name)
        if key:
            settings[key] = raw
    return settings


def host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback_net(entry: str) -> bool:
    if entry == "localhost":
        return True
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    loopback = ipaddress.ip_network("127.0.0.0/8" if net.version == 4 else "::1/128")
    return net.subnet_of(loopback)


def is_loopback_addr(addr: str) -> bool:
    host, _ = host_port(addr)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the app overlays -------------------------------------------------------


def container_ports(container: dict) -> dict:
    return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}


def probe_port(probe: dict, container: dict):
    port = probe.get("httpGet", {}).get("port")
    if isinstance(port, str):
        return container_ports(container).get(port)
    return port


def check_security(pod: dict, container: dict, problems: Problems) -> None:
    name = container.get("name")
    pod_sc = pod.get("securityContext", {})
    sc = container.get("securityContext", {})

    def setting(key):
        return sc.get(key, pod_sc.get(key))

    problems.check(setting("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true")
    uid = setting("runAsUser")
    problems.check(isinstance(uid, int) and uid > 0, f"{name}: runAsUser is not a numeric non-root UID")
    problems.check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
    problems.check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem is not true")
    problems.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities do not drop ALL")
    problems.check(sc.get("capabilities", {}).get("add") in (None, []), f"{name}: capabilities added")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    problems.check(seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile is not RuntimeDefault")


def check_app_overlay(overlay: str, docs: list[dict], problems: Problems) -> dict:
    deployment = one(docs, "Deployment", problems)
    service = one(docs, "Service", problems)
    pdb = one(docs, "PodDisruptionBudget", problems)
    hpa = one(docs, "HorizontalPodAutoscaler", problems)
    problems.exit_if_any()

    template = deployment["spec"]["template"]
    pod = template["spec"]
    pod_labels = template["metadata"].get("labels", {})

    def selects(selector: dict) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    problems.check(selects(deployment["spec"]["selector"]["matchLabels"]),
                   "Deployment selector does not match its pod template")
    problems.check(bool(service["spec"].get("selector")) and selects(service["spec"]["selector"]),
                   "Service selector does not match the pods")
    problems.check(selects(pdb["spec"]["selector"]["matchLabels"]),
                   "PodDisruptionBudget selector does not match the pods")
    target = hpa["spec"]["scaleTargetRef"]
    problems.check(target.get("kind") == "Deployment" and target.get("name") == deployment["metadata"]["name"],
                   "HorizontalPodAutoscaler does not target the Deployment")
    problems.check("replicas" not in deployment["spec"],
                   "Deployment sets replicas: the HorizontalPodAutoscaler owns the count")

    # Pod-level settings.
    problems.check(pod.get("enableServiceLinks") is False, "enableServiceLinks is not false")
    problems.check(pod.get("automountServiceAccountToken") is False,
                   "automountServiceAccountToken is not false (maitred never talks to the API)")
    pod_sc = pod.get("securityContext", {})
    problems.check(pod_sc.get("runAsNonRoot") is True, "pod securityContext: runAsNonRoot is not true")
    problems.check(isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0,
                   "pod securityContext: runAsUser is not a numeric non-root UID")
    problems.check(pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                   "pod securityContext: seccompProfile is not RuntimeDefault")

    containers = pod.get("containers", [])
    init_containers = pod.get("initContainers", [])
    for c in containers + init_containers:
        check_security(pod, c, problems)

    maitred = next((c for c in containers if c["name"] == "maitred"), None)
    if not problems.check(maitred is not None, "no container named maitred"):
        problems.exit_if_any()

    # Configuration: the ConfigMap mounted where MAITRED_CONFIG points.
    env = {e["name"]: e.get("value") for e in maitred.get("env", [])}
    problems.check(all(v is not None for k, v in env.items() if k.startswith("MAITRED_")),
                   "maitred: MAITRED_* variables must have literal values")
    maitred_env = {k: v for k, v in env.items() if k.startswith("MAITRED_")}
    config_path = env.get("MAITRED_CONFIG")
    problems.check(config_path is not None, "maitred: MAITRED_CONFIG is not set")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    configmaps = {c["metadata"]["name"]: c for c in by_kind(docs, "ConfigMap")}
    toml_text = None
    for mount in maitred.get("volumeMounts", []):
        if config_path and config_path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = volumes.get(mount["name"], {})
            cm = configmaps.get(volume.get("configMap", {}).get("name"))
            if problems.check(cm is not None, f"{config_path}: its volume is not a ConfigMap of this overlay"):
                key = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
                toml_text = cm.get("data", {}).get(key)
                problems.check(toml_text is not None, f"ConfigMap {cm['metadata']['name']} has no key {key}")
                problems.check(mount.get("readOnly") is True, f"{mount['mountPath']}: not mounted read-only")
    if not problems.check(toml_text is not None, f"MAITRED_CONFIG={config_path} is not a mounted ConfigMap key"):
        problems.exit_if_any()
    try:
        toml_table = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        problems.check(False, f"maitred.toml in the ConfigMap does not parse: {e}")
        problems.exit_if_any()
    known = reference_keys()
    for key in flatten(toml_table):
        problems.check(key in known, f"maitred.toml: `{key}` is not a setting of config/maitred.toml")
    for name in maitred_env:
        key = env_key(name)
        problems.check(key is None or key in known, f"env {name}: `{key}` is not a setting of config/maitred.toml")
    settings = effective(toml_text, maitred_env)

    # Temporary files: $TMPDIR must be a writable emptyDir.
    tmpdir = env.get("TMPDIR", "/tmp")
    tmp_mount = next((m for m in maitred.get("volumeMounts", []) if m["mountPath"].rstrip("/") == tmpdir), None)
    if problems.check(tmp_mount is not None, f"maitred: TMPDIR {tmpdir} is not a volume (the root filesystem is read-only)"):
        volume = volumes.get(tmp_mount["name"], {})
        problems.check("emptyDir" in volume and not tmp_mount.get("readOnly"),
                       f"maitred: {tmpdir} is not a writable emptyDir")

    # Probes: on the admin listener's port, by path.
    admin = [host_port(a) for a in as_list(settings["admin_listen"])]
    problems.check(any(h in ("0.0.0.0", "::") and p == ADMIN_PORT for h, p in admin),
                   f"admin_listen {settings['admin_listen']} does not listen on every address "
                   f"at {ADMIN_PORT} (the kubelet and Prometheus connect to the pod IP)")
    problems.check(container_ports(maitred).get("admin") == ADMIN_PORT,
                   f"maitred: no containerPort named admin = {ADMIN_PORT}")
    wanted = {"startupProbe": ("/livez", "/healthz", "/readyz"),
              "livenessProbe": ("/livez", "/healthz"),
              "readinessProbe": ("/readyz",)}
    for kind, paths in wanted.items():
        probe = maitred.get(kind)
        if problems.check(probe is not None and "httpGet" in probe, f"maitred: no HTTP {kind}"):
            problems.check(probe["httpGet"].get("path") in paths,
                           f"maitred: {kind} path {probe['httpGet'].get('path')} is not one of {paths}")
            problems.check(probe_port(probe, maitred) == ADMIN_PORT,
                           f"maitred: {kind} is not on the admin port {ADMIN_PORT}")
    problems.check(maitred.get("lifecycle", {}).get("preStop", {}).get("exec") is None,
                   "maitred: an exec preStop hook (the image has no shell tools; use shutdown_delay)")

    # The drain budget.
    pre_stop = maitred.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = seconds(settings["shutdown_delay"]) + seconds(settings["graceful_timeout"]) + pre_stop
    problems.check(grace >= drain + DRAIN_MARGIN_S,
                   f"terminationGracePeriodSeconds {grace} < preStop {pre_stop}s + shutdown_delay "
                   f"{settings['shutdown_delay']} + graceful_timeout {settings['graceful_timeout']} "
                   f"+ {DRAIN_MARGIN_S}s margin")
    if settings.get("limits.request_timeout") is not None:
        problems.check(seconds(settings["limits.request_timeout"]) <= seconds(settings["graceful_timeout"]),
                       "limits.request_timeout exceeds graceful_timeout: a drain would cut requests "
                       "that are still allowed to run")

    # The Service: the app port, never the admin port.
    ports_by_container = {c["name"]: container_ports(c) for c in containers}
    main_named = {n: p for c in containers for n, p in container_ports(c).items()}
    all_numbers = {p for c in containers + init_containers for p in container_ports(c).values()}
    service_targets = []
    for port in service["spec"].get("ports", []):
        tp = port.get("targetPort", port.get("port"))
        if isinstance(tp, str):
            # Named ports of native sidecars resolve only from Kubernetes 1.32.
            number = main_named.get(tp)
            problems.check(number is not None,
                           f"Service port {port.get('name')}: targetPort {tp} is not a named port of a main container")
        else:
            number = tp
            problems.check(number in all_numbers,
                           f"Service port {port.get('name')}: targetPort {tp} is no container's port")
        problems.check(tp != "admin" and number != ADMIN_PORT,
                       f"Service port {port.get('name')} exposes the admin port")
        service_targets.append(number)

    # The HPA: custom pod metrics served by prometheus-adapter, CPU fallback.
    adapter = yaml.safe_load((KUBE / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    kinds = [m["type"] for m in hpa["spec"]["metrics"]]
    problems.check("Pods" in kinds, "HorizontalPodAutoscaler has no custom (Pods) metric")
    problems.check(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]),
                   "HorizontalPodAutoscaler has no CPU fallback")
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Pods":
            name = m["pods"]["metric"]["name"]
            problems.check(name in served, f"HPA metric {name} is not served by "
                                           "monitoring/prometheus-adapter-rules.yaml")
    problems.check(maitred.get("resources", {}).get("requests", {}).get("cpu") is not None,
                   "maitred: no CPU request (the HPA's CPU utilisation needs one)")
    metrics_source = (ROOT / "src" / "metrics.rs").read_text()
    for rule in adapter["rules"]["custom"]:
        for series in re.findall(r"\b(maitred_[a-z_]+)\{", rule["metricsQuery"] + rule["seriesQuery"]):
            base = re.sub(r"_(sum|count|bucket)$", "", series)
            problems.check(f'"{base}"' in metrics_source,
                           f"prometheus-adapter rule uses {series}, which src/metrics.rs does not define")

    summary = {
        "overlay": overlay,
        "toml": toml_text,
        "env": maitred_env,
        "termination_grace_period_seconds": grace,
        "pre_stop_sleep_seconds": pre_stop,
        "drain_margin_seconds": DRAIN_MARGIN_S,
        "admin_port": ADMIN_PORT,
        "service_target_ports": service_targets,
        "listen_loopback_only": overlay == "sidecar",
        "proxy_count": SIDECAR_PROXY_COUNT if overlay == "sidecar" else None,
    }

    if overlay == "standalone":
        listen = [host_port(a) for a in as_list(settings["listen"])]
        app_port = container_ports(maitred).get("http")
        problems.check(any(h in ("0.0.0.0", "::", "*") and p == app_port for h, p in listen),
                       f"listen {settings['listen']} does not serve the containerPort http ({app_port})")
        problems.check(service_targets == [app_port], f"Service targets {service_targets}, not maitred's http port")
    elif overlay == "sidecar":
        check_sidecar(pod, maitred, settings, service_targets, configmaps, volumes, problems)
    return summary


def check_sidecar(pod, maitred, settings, service_targets, configmaps, volumes, problems: Problems) -> None:
    listen = as_list(settings["listen"])
    problems.check(bool(listen) and all(is_loopback_addr(a) for a in listen),
                   f"listen {listen}: maitred behind the sidecar must listen on loopback only")
    problems.check(not settings.get("unix_socket"), "unix_socket is set behind the sidecar")
    problems.check(as_list(settings["proxy_protocol.listen"]) == [], "proxy_protocol.listen is set behind the sidecar")
    trusted = as_list(settings["proxy.trusted"])
    problems.check(bool(trusted) and all(is_loopback_net(t) for t in trusted),
                   f"proxy.trusted {trusted}: behind the sidecar, trust loopback only")
    count = settings.get("proxy.count")
    problems.check(count is not None and int(count) == SIDECAR_PROXY_COUNT,
                   f"proxy.count {count}: the documented chain cloud LB -> sidecar -> maitred "
                   f"is {SIDECAR_PROXY_COUNT} hops")
    problems.check("x-forwarded-for" in as_list(settings["proxy.headers"]),
                   "proxy.headers does not believe x-forwarded-for")
    problems.check(maitred.get("ports") and all(p["containerPort"] == ADMIN_PORT for p in maitred["ports"]),
                   "maitred: only the admin port may be a pod port behind the sidecar")

    envoy = next((c for c in pod.get("initContainers", []) if c["name"] == "envoy"), None)
    if not problems.check(envoy is not None, "no envoy init container"):
        return
    problems.check(envoy.get("restartPolicy") == "Always",
                   "envoy: not a native sidecar (restartPolicy: Always), so it would not outlive maitred's drain")
    mount = next((m for m in envoy.get("volumeMounts", []) if m["mountPath"] == "/etc/envoy"), None)
    cm = configmaps.get(volumes.get(mount["name"], {}).get("configMap", {}).get("name")) if mount else None
    if not problems.check(cm is not None and "envoy.yaml" in cm.get("data", {}),
                          "envoy: /etc/envoy/envoy.yaml is not from a ConfigMap of this overlay"):
        return
    cfg = yaml.safe_load(cm["data"]["envoy.yaml"])
    (listener,) = cfg["static_resources"]["listeners"]
    envoy_port = listener["address"]["socket_address"]["port_value"]
    problems.check(service_targets == [envoy_port], f"Service targets {service_targets}, not Envoy's port {envoy_port}")
    problems.check(envoy_port in container_ports(envoy).values(), f"envoy: {envoy_port} is not a containerPort")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    problems.check(hcm.get("use_remote_address") is True,
                   "envoy: use_remote_address is not true (Envoy would not append the LB's address)")
    problems.check(hcm.get("xff_num_trusted_hops", 0) + 1 == SIDECAR_PROXY_COUNT,
                   f"envoy: xff_num_trusted_hops {hcm.get('xff_num_trusted_hops', 0)} + Envoy's own hop "
                   f"!= maitred's proxy.count {SIDECAR_PROXY_COUNT}")
    (cluster,) = cfg["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    upstream = f"{endpoint['address']}:{endpoint['port_value']}"
    problems.check(upstream in listen, f"envoy forwards to {upstream}, maitred listens on {listen}")
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    idle = seconds(options["common_http_protocol_options"]["idle_timeout"])
    problems.check(idle < seconds(settings["limits.channel_timeout"]),
                   f"envoy upstream idle_timeout {idle}s is not below maitred's channel_timeout "
                   f"{settings['limits.channel_timeout']}: maitred could close a connection Envoy reuses")
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    for route in routes:
        timeout = route["route"].get("timeout", "15s")
        if settings.get("limits.request_timeout") is not None:
            problems.check(seconds(settings["limits.request_timeout"]) < seconds(timeout),
                           f"envoy route timeout {timeout} is not above maitred's request_timeout "
                           f"{settings['limits.request_timeout']}")


# --- monitoring ---------------------------------------------------------------


def check_monitoring(docs: list[dict], problems: Problems) -> None:
    podmonitor = one(docs, "PodMonitor", problems)
    rule = one(docs, "PrometheusRule", problems)
    problems.exit_if_any()

    # The PodMonitor finds the app overlays' pods and their admin port.
    for overlay in ("standalone", "sidecar"):
        app = render(overlay)
        deployment = next(d for d in app if d["kind"] == "Deployment")
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        selector = podmonitor["spec"]["selector"].get("matchLabels", {})
        problems.check(bool(selector) and all(labels.get(k) == v for k, v in selector.items()),
                       f"PodMonitor selector {selector} does not select the {overlay} pods")
        maitred = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "maitred")
        for ep in podmonitor["spec"]["podMetricsEndpoints"]:
            problems.check(container_ports(maitred).get(ep.get("port")) == ADMIN_PORT,
                           f"PodMonitor port {ep.get('port')} is not maitred's admin port in {overlay}")
            problems.check(ep.get("path", "/metrics") == "/metrics", "PodMonitor path is not /metrics")

    # The rule is deploy/prometheus/rules.yaml, group for group.
    source = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    problems.check(rule["spec"].get("groups") == source["groups"],
                   "PrometheusRule spec.groups differ from deploy/prometheus/rules.yaml's groups: "
                   "run python3 deploy/kubernetes/monitoring/sync.py")
    names = [g["name"] for g in rule["spec"].get("groups", [])]
    problems.check(len(names) == len(set(names)), f"PrometheusRule group names repeat: {names}")
    for group in rule["spec"].get("groups", []):
        for r in group.get("rules", []):
            problems.check(("record" in r) != ("alert" in r),
                           f"group {group['name']}: a rule must have exactly one of record/alert: {r}")
            if "record" in r:
                problems.check("for" not in r and "annotations" not in r,
                               f"recording rule {r['record']} has for/annotations")

    # The dashboard ConfigMap is dashboards/maitred.json.
    dashboards = [c for c in by_kind(docs, "ConfigMap")
                  if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if problems.check(len(dashboards) == 1, "expected one ConfigMap labelled grafana_dashboard: \"1\""):
        data = dashboards[0].get("data", {})
        expected = (ROOT / "dashboards" / "maitred.json").read_text()
        problems.check(list(data) == ["maitred.json"], f"dashboard ConfigMap keys {list(data)}, want maitred.json")
        problems.check(data.get("maitred.json") == expected,
                       "dashboard ConfigMap differs from dashboards/maitred.json: "
                       "run python3 deploy/kubernetes/monitoring/sync.py")
        try:
            json.loads(data.get("maitred.json", ""))
        except json.JSONDecodeError as e:
            problems.check(False, f"dashboard ConfigMap is not JSON: {e}")
        problems.check(len(expected.encode()) < LAST_APPLIED_LIMIT - 4096,
                       "dashboards/maitred.json is too large for client-side kubectl apply")

    sync = subprocess.run([sys.executable, str(KUBE / "monitoring" / "sync.py"), "--check"],
                          capture_output=True, text=True)
    problems.check(sync.returncode == 0, sync.stderr.strip() or "sync.py --check failed")


# --- Dockerfiles ----------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(instructions):
    result, stage = [], None
    for ins, args in instructions:
        if ins == "FROM":
            stage = {"from": args, "instructions": []}
            result.append(stage)
        elif stage is not None:
            stage["instructions"].append((ins, args))
    return result


def check_dockerfiles(problems: Problems) -> None:
    main = dockerfile_instructions(DEPLOY / "Dockerfile")
    st = stages(main)
    images = {s["from"].split(" AS ")[0].split(" as ")[0] for s in st if "python:" in s["from"]}
    problems.check(len(images) == 1, f"deploy/Dockerfile: build and runtime stages differ in their python image: {images}")
    runtime = st[-1]
    problems.check(runtime["from"].endswith("AS runtime"), "deploy/Dockerfile: the last stage is not `runtime`")
    rt = runtime["instructions"]
    users = [a for i, a in rt if i == "USER"]
    problems.check(bool(users) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]) is not None,
                   f"deploy/Dockerfile: the runtime USER is not a numeric non-root UID ({users})")
    problems.check(("STOPSIGNAL", "SIGTERM") in rt, "deploy/Dockerfile: STOPSIGNAL SIGTERM missing")
    problems.check(not any(i == "HEALTHCHECK" for i, _ in main), "deploy/Dockerfile: has a HEALTHCHECK")
    env = " ".join(a for i, a in rt if i == "ENV")
    problems.check("VIRTUAL_ENV=/opt/venv" in env, "deploy/Dockerfile: VIRTUAL_ENV is not /opt/venv")
    problems.check("TMPDIR=/tmp" in env, "deploy/Dockerfile: TMPDIR is not set")
    problems.check(any(i == "RUN" and "python -m venv /opt/venv" in a for i, a in rt),
                   "deploy/Dockerfile: the runtime stage does not create /opt/venv")
    entry = [a for i, a in rt if i == "ENTRYPOINT"]
    problems.check(bool(entry) and entry[-1].startswith("[") and "maitred" in entry[-1],
                   "deploy/Dockerfile: ENTRYPOINT is not the exec form running maitred")
    problems.check(any(i == "COPY" and "deploy/container.toml /etc/maitred/maitred.toml" in a for i, a in rt),
                   "deploy/Dockerfile: the container settings are not installed")
    exposed = " ".join(a for i, a in rt if i == "EXPOSE").split()
    problems.check(str(ADMIN_PORT) in exposed, f"deploy/Dockerfile: does not EXPOSE the admin port {ADMIN_PORT}")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for ins, args in main:
        if ins == "COPY" and "--from=" not in args:
            for src in args.split()[:-1]:
                problems.check(f"!{src.rstrip('/')}" in [l.rstrip("/") for l in ignore],
                               f"deploy/Dockerfile: COPY {src} is excluded by Dockerfile.dockerignore")

    example = dockerfile_instructions(DEPLOY / "example-app" / "Dockerfile")
    problems.check(example and example[-1][0] == "CMD" and example[-1][1].startswith("["),
                   "example-app/Dockerfile: does not end with an exec-form CMD naming the app")
    ex_users = [a for i, a in example if i == "USER"]
    problems.check(bool(ex_users) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", ex_users[-1]) is not None,
                   f"example-app/Dockerfile: the final USER is not a numeric non-root UID ({ex_users})")
    problems.check(not any(i == "ENV" and "MAITRED_" in a for i, a in example),
                   "example-app/Dockerfile: bakes in MAITRED_* settings (they would beat the mounted maitred.toml)")
    problems.check(not any(i == "HEALTHCHECK" for i, _ in example), "example-app/Dockerfile: has a HEALTHCHECK")


# --- systemd ----------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def check_systemd(problems: Problems) -> dict:
    service = unit(DEPLOY / "systemd" / "maitred.service")
    socket = unit(DEPLOY / "systemd" / "maitred.socket")
    s = service.get("Service", {})

    def last(key, default=None):
        return s.get(key, [default])[-1]

    exec_start = last("ExecStart", "")
    flags = dict(re.findall(r"--(shutdown-delay|graceful-timeout)=(\S+)", exec_start))
    problems.check(set(flags) == {"shutdown-delay", "graceful-timeout"},
                   "maitred.service: ExecStart does not pin --shutdown-delay and --graceful-timeout "
                   "next to TimeoutStopSec")
    delay = seconds(flags.get("shutdown-delay", "5s"))
    graceful = seconds(flags.get("graceful-timeout", "30s"))
    stop = seconds(last("TimeoutStopSec", "90s"))
    problems.check(stop >= delay + graceful + DRAIN_MARGIN_S,
                   f"maitred.service: TimeoutStopSec {stop}s < shutdown_delay {delay}s + graceful_timeout "
                   f"{graceful}s + {DRAIN_MARGIN_S}s")
    problems.check(last("KillSignal", "SIGTERM") == "SIGTERM", "maitred.service: KillSignal is not SIGTERM")
    problems.check(last("KillMode") == "mixed", "maitred.service: KillMode is not mixed")
    problems.check(last("Type") in ("exec", "simple"), "maitred.service: Type must be exec (maitred does not sd_notify)")
    problems.check(last("DynamicUser") == "yes" or last("User") not in (None, "root", "0"),
                   "maitred.service: runs as root")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "PrivateDevices": "yes"}.items():
        problems.check(last(key) == value, f"maitred.service: {key} is not {value}")
    problems.check(last("CapabilityBoundingSet") == "", "maitred.service: CapabilityBoundingSet is not empty")
    unit_section = service.get("Unit", {})
    problems.check("maitred.socket" in " ".join(unit_section.get("Requires", [])),
                   "maitred.service: does not Require maitred.socket")
    problems.check("maitred.socket" in " ".join(unit_section.get("After", [])),
                   "maitred.service: is not ordered After maitred.socket")
    listen = socket.get("Socket", {}).get("ListenStream", [])
    problems.check(len(listen) >= 1, "maitred.socket: no ListenStream")
    problems.check("maitred.service" not in " ".join(socket.get("Unit", {}).get("PartOf", [])),
                   "maitred.socket: PartOf=maitred.service would close the socket on every service restart")
    problems.check(socket.get("Socket", {}).get("Accept", ["no"])[-1] == "no",
                   "maitred.socket: Accept=yes would start one maitred per connection")
    problems.check("sockets.target" in " ".join(socket.get("Install", {}).get("WantedBy", [])),
                   "maitred.socket: not WantedBy sockets.target")
    return {"exec_start": exec_start, "shutdown_delay_seconds": delay, "graceful_timeout_seconds": graceful,
            "timeout_stop_seconds": stop}


def main(argv: list[str]) -> int:
    problems = Problems()
    if len(argv) == 2 and argv[0] == "overlay" and argv[1] in ("standalone", "sidecar", "monitoring"):
        docs = render(argv[1])
        validate_documents(docs, problems)
        problems.exit_if_any()
        if argv[1] == "monitoring":
            check_monitoring(docs, problems)
            summary = {"overlay": "monitoring", "documents": len(docs)}
        else:
            summary = check_app_overlay(argv[1], docs, problems)
        summary["kinds"] = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        summary["kubernetes_versions"] = K8S_VERSIONS
    elif argv == ["dockerfiles"]:
        check_dockerfiles(problems)
        summary = {"dockerfiles": ["deploy/Dockerfile", "deploy/example-app/Dockerfile"]}
    elif argv == ["systemd"]:
        summary = check_systemd(problems)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    problems.exit_if_any()
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
