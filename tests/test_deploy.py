"""deploy/k8s: every kustomization renders (kubectl kustomize), validates strictly against the
Kubernetes schemas offline (kubernetes-validate), and keeps the invariants the service needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from splade_triton.launcher.tritonserver import Installation, ServerOptions, command
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "monitoring", "kserve")
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")  # the oldest still served upstream at writing, and the newest schemas
CRD_GROUPS = {"monitoring.coreos.com", "serving.kserve.io"}  # no schema in kubernetes-validate: checked below
LAUNCHER_KILL_MARGIN_S = 10  # serve.py waits exit_timeout + 10 s for tritonserver before SIGKILL
MIN_GRACE_S = 10  # endpoints, kube-proxy and DNS drop a terminating pod within seconds
MIB = 2**20


def render(directory: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: it renders the kustomizations (kubectl kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(K8S / directory)], capture_output=True, text=True)
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr.strip()}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {d: render(d) for d in KUSTOMIZATIONS}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


CONNECTION_AGE = {"--grpc-max-connection-age": "60000", "--grpc-max-connection-age-grace": "60000"}


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments by name (the launcher's and, after ``--``, tritonserver's)."""
    out = {}
    for arg in args:
        if arg == "--":
            continue
        name, sep, value = arg.partition("=")
        assert sep and name.startswith("--"), f"arguments are written --name=value here, got {arg!r}"
        out[name] = value
    return out


def check_argument_owners(args: list[str]) -> None:
    """Before ``--`` only the launcher's options; after it only flags this tritonserver knows."""
    launcher_part, _, server_part = (args[:args.index("--")], None, args[args.index("--") + 1:]) \
        if "--" in args else (args, None, [])
    launcher = set(re.findall(r'add_argument\("(--[a-z-]+)"', (ROOT / "splade_triton" / "launcher" / "serve.py").read_text()))
    unknown = set(flags(launcher_part)) - launcher
    assert not unknown, f"not options of the launcher: {unknown}"
    if server_part:
        binary = command(ServerOptions("r"))[0]  # this environment's tritonserver (2.51; the image's is newer)
        done = subprocess.run([binary, "--help"], capture_output=True, text=True)
        usage = done.stdout + done.stderr
        unknown = {name for name in flags(server_part) if f"{name} " not in usage}
        assert not unknown, f"not flags of tritonserver: {unknown}"


def quantity(text) -> float:
    """A Kubernetes quantity in base units (bytes, cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1)


# --- schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(rendered, directory):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    docs = rendered[directory]
    assert docs
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                # Only custom resources may lack a schema (autoscaling/v2beta2 would land here too).
                assert group in CRD_GROUPS, f"{doc['kind']} {doc['apiVersion']}: no Kubernetes {version} schema"
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{directory}: {doc['kind']} {doc['metadata']['name']} invalid for {version}: {e.message}")


def test_strict_validation_refuses_a_misspelt_field(rendered):
    import kubernetes_validate

    deployment = one(rendered["overlays/cpu"], "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_every_image_is_the_pinned_project_image(rendered):
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    triton_tag = re.search(r"^ARG TRITON_TAG=(\S+)", dockerfile, re.M).group(1)  # e.g. 25.01-py3
    images = {c["image"] for docs in rendered.values() for d in docs
              for c in (d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                        + d.get("spec", {}).get("containers", []))}
    assert images, "no container found"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"unpinned image {image}"
        assert triton_tag.startswith(tag), f"{image}: the image is built on tritonserver {triton_tag}"


# --- the Deployment ----------------------------------------------------------------------------


def assert_stops_within(settings: dict[str, str], termination_grace_s: int) -> None:
    """SIGTERM: the launcher's grace period (readiness 503, everything served while the
    endpoints drop the pod), its drain, then at worst Triton's exit timeout and the launcher's
    margin, all within the pod's termination grace (or the kubelet's SIGKILL cuts them short)."""
    grace = float(settings["--grace-period"])
    assert grace >= MIN_GRACE_S, f"--grace-period={grace}: endpoints may still send requests after it"
    needed_s = grace + float(settings["--drain-timeout"]) + int(settings["--exit-timeout"]) + LAUNCHER_KILL_MARGIN_S
    assert termination_grace_s >= needed_s, (termination_grace_s, needed_s)


def shm_needed(repository: Path) -> int:
    """Bytes of /dev/shm the repository's Python-backend stubs need: each starts with the launcher's
    shm-default-byte-size and grows in steps; 3 stubs went from 48 to 112 MiB under overload
    (docs/reliability.md), so four times the start size per stub."""
    cmd = command(ServerOptions(str(repository)), Installation(Path("tritonserver"), Path("backends"), "ngc"))
    default = int(next(a for a in cmd if "shm-default-byte-size=" in a).rpartition("=")[2])
    stubs = 0
    for config in repository.glob("*/config.pbtxt"):
        text = config.read_text()
        if re.search(r'backend:\s*"python"', text):
            counts = re.findall(r"count:\s*(\d+)", text)
            stubs += sum(int(c) for c in counts) or 1
    assert stubs, f"no Python-backend model in {repository}"
    return 4 * stubs * default


def container_spec(docs: list[dict]) -> tuple[dict, dict, dict]:
    deployment = one(docs, "Deployment", "splade")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def launcher_settings(overlay: str, container: dict) -> dict[str, str]:
    """The launcher's effective arguments: the container's, or for the GPU image its entrypoint's."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if overlay == "overlays/gpu":
        assert container["command"] == ["/opt/splade/docker/entrypoint.sh"]
        entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
        launch = entrypoint[entrypoint.index("exec python3 -m splade_triton.launcher"):]
        assert launch.rstrip().endswith('-- "$@"')  # the container's arguments go to tritonserver
        # `--flag value` and `--flag "${VARIABLE:-default}"` (the container's env, else the default).
        settings = dict(re.findall(r'(--[a-z-]+) ([^\s"$\\]+)', launch))
        settings.update({flag: env.get(variable, default) for flag, variable, default
                         in re.findall(r'(--[a-z-]+) "\$\{(\w+):-([^}]*)\}"', launch)})
        check_argument_owners([f"{k}={v}" for k, v in settings.items()] + ["--", *container["args"]])
        return {"--http-port": "8000", "--grpc-port": "8001", "--metrics-port": "8002",  # the launcher's defaults
                **settings, **flags(container["args"])}
    assert container["command"] == ["python3", "-m", "splade_triton.launcher"]
    check_argument_owners(container["args"])
    return flags(container["args"])


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_the_deployment(rendered, overlay, repository, bge_m3_repository):
    docs = rendered[overlay]
    deployment, pod, container = container_spec(docs)
    settings = launcher_settings(overlay, container)
    assert settings["--model-control-mode"] == "none"
    assert settings["--host"] == "0.0.0.0"
    # gRPC connections aged out, so that clients of the headless Service resolve it again.
    assert settings.items() >= CONNECTION_AGE.items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(settings["--http-port"]), "grpc": int(settings["--grpc-port"]),
                     "metrics": int(settings["--metrics-port"]), "health": int(settings["--health-port"])}

    # Probes: ready means every model loaded (the launcher's --strict-readiness=true) and no
    # SIGTERM yet: the launcher's readiness, not tritonserver's (which reads 200 until it
    # unloads); the start-up window fits the loading (the GPU image builds its TensorRT plan first).
    assert "--strict-readiness=true" in command(ServerOptions("r"), Installation(Path("t"), Path("b"), "ngc"))
    for probe, path, port in (("startupProbe", "/v2/health/ready", "health"),
                              ("readinessProbe", "/v2/health/ready", "health"),
                              ("livenessProbe", "/v2/health/live", "http")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, port), f"{probe}: {get}"
    startup = container["startupProbe"]
    window = startup["periodSeconds"] * startup["failureThreshold"]
    if overlay == "overlays/gpu":
        compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
        start_period = compose["services"]["splade"]["healthcheck"]["start_period"]
        assert window >= int(start_period.rstrip("m")) * 60, f"start-up window {window} s < compose's {start_period}"
    else:
        assert window >= 300, f"start-up window {window} s"

    # Volumes: a memory-backed /dev/shm big enough for the Python backend, a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    needed = shm_needed(repository) + shm_needed(bge_m3_repository)
    assert quantity(shm["sizeLimit"]) >= needed, f"/dev/shm {shm['sizeLimit']} < {needed / MIB:.0f} MiB"
    assert "emptyDir" in volumes[mounts["/tmp"]]

    # Least privilege.
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False

    # Resources; the memory-backed /dev/shm counts against the memory limit.
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"], f"no {kind} request"
    assert quantity(resources["limits"]["memory"]) > quantity(shm["sizeLimit"]) + quantity(resources["requests"]["memory"]) / 2
    if overlay == "overlays/gpu":
        assert resources["limits"]["nvidia.com/gpu"] == 1

    assert_stops_within(settings, pod["terminationGracePeriodSeconds"])
    assert "lifecycle" not in container  # no preStop: the launcher's grace period is the delay

    # Rolling updates never go below the replicas asked for; the PDB keeps one during drains.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] >= 1

    # What the pod reads exists in the same render.
    sources = container["envFrom"]
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for source in sources:
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] in config_maps
        else:
            assert set(secrets[source["secretRef"]["name"]]["stringData"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["data"]["MODEL_REPOSITORY"].startswith("s3://")
    assert pod["serviceAccountName"] in {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_services_reach_named_container_ports(rendered, overlay):
    docs = rendered[overlay]
    _, pod, container = container_spec(docs)
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"
    http = services["splade"]["spec"]
    assert http.get("type", "ClusterIP") == "ClusterIP" and {p["name"] for p in http["ports"]} == {"http", "metrics"}
    grpc = services["splade-grpc"]["spec"]
    assert grpc["clusterIP"] == "None"  # headless: the name resolves to every ready pod
    # Clients reach the pods' own port: the Service port must be the container's.
    assert [(p["port"], ports[p["targetPort"]]) for p in grpc["ports"]] == [(ports["grpc"], ports["grpc"])]


# --- autoscaling ---------------------------------------------------------------------------------


def recording_rule() -> dict:
    rule = yaml.safe_load((K8S / "monitoring" / "prometheus-rule.yaml").read_text())
    (group,) = rule["spec"]["groups"]
    (recorded,) = group["rules"]
    return recorded


def adapter_metric() -> tuple[str, str]:
    """(the series prometheus-adapter reads, the metric name it serves), by the adapter's own rule."""
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", rule["seriesQuery"]).group(0)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # The adapter's name.as uses ${1}; Python's re uses \1.
    served = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series)
    return series, served


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_the_hpa_asks_for_the_metric_the_adapter_serves(rendered, overlay):
    docs = rendered[overlay]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", one(docs, "Deployment")["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    series, served = adapter_metric()
    assert series == recording_rule()["record"], "the adapter reads another series than the rule records"
    assert metric["pods"]["metric"]["name"] == served


def test_the_rule_selects_every_pipelines_encoder_per_pod_and_model(repository, bge_m3_repository):
    expr = recording_rule()["expr"]
    selectors = set(re.findall(r'model=~"([^"]+)"', expr))
    assert len(selectors) == 1 and 'model="' not in expr, f"one model regex for every counter: {expr}"
    (selector,) = selectors
    # Every model the assembled repositories serve; the encoders are `<pipeline>_encoder`.
    models = {c.parent.name for r in (repository, bge_m3_repository) for c in r.glob("*/config.pbtxt")}
    encoders = {f"{name}_encoder" for name in ("splade", "bge_m3")}
    assert encoders <= models, f"no {encoders - models} in the assembled repositories"
    # Prometheus anchors its regexes at both ends: fullmatch.
    assert {m for m in models if re.fullmatch(selector, m)} == encoders
    # Per model, then per pod: each encoder's queue per request, the pod's largest. An average
    # over models (a pod with several pipelines, one idle) would dilute the busy one.
    assert expr.count("sum by (namespace, pod, model)") == 2
    assert expr.lstrip().startswith("max by (namespace, pod) (")
    assert "nv_inference_queue_duration_us" in expr and "nv_inference_request_success" in expr


def test_the_target_is_a_queue_time_budget_in_seconds(rendered):
    hpa = one(rendered["overlays/cpu"], "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    # 50-100 ms of queueing at the encoder (docs/deploy.md): not a ratio, not microseconds.
    assert 0.05 <= quantity(target["averageValue"]) <= 0.1, target
    assert "/ 1e6" in recording_rule()["expr"]  # Triton counts microseconds


def test_monitoring_selects_the_pods_metrics_port(rendered):
    podmonitor = one(rendered["monitoring"], "PodMonitor")
    labels = one(rendered["overlays/cpu"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in podmonitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


# --- KServe --------------------------------------------------------------------------------------


def test_kserve_runtime_and_inference_service(rendered):
    docs = rendered["kserve"]
    runtime = one(docs, "ServingRuntime")
    service = one(docs, "InferenceService")
    (container,) = runtime["spec"]["containers"]
    # The /dev/shm KServe's own Triton runtime lacks.
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    check_argument_owners(container["args"])
    settings = flags(container["args"])
    assert settings["--model-repository"] == "/mnt/models"  # where the storage initializer puts storageUri
    assert settings["--model-control-mode"] == "none"
    assert settings.items() >= CONNECTION_AGE.items()
    assert [p["containerPort"] for p in container["ports"]] == [int(settings["--http-port"])] == [8080]
    # Readiness: the launcher's (503 from SIGTERM on); the predictor's pod waits for its stop.
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": int(settings["--health-port"])}
    assert_stops_within(settings, service["spec"]["predictor"]["terminationGracePeriodSeconds"])
    assert "triton" in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert "v2" in runtime["spec"]["protocolVersions"]

    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["storageUri"].startswith("s3://")
    account = one(docs, "ServiceAccount", predictor["serviceAccountName"])
    (secret_ref,) = account["secrets"]
    secret = one(docs, "Secret", secret_ref["name"])
    assert "serving.kserve.io/s3-endpoint" in secret["metadata"]["annotations"]
    assert set(secret["stringData"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
