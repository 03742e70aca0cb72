"""Checks of the deploy kit (deploy/): no Docker or Kubernetes runs here, so every file is linted or
validated offline instead — yamllint, hadolint, shellcheck, the compose-spec JSON schema (shipped by
check-jsonschema), the Kubernetes JSON schemas (shipped by kubernetes-validate) — and the files are
checked against each other and against the service: every metric the Grafana dashboard queries must
be exported by a live `neural-router serve`, every NEURAL_ROUTER_* variable must name a setting."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from neural_router.serving.config import ServeSettings, load_settings
from tests.serving.helpers import free_port, stop, wait_ready

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
ROUTERS = ("router-1", "router-2")
# oldest Kubernetes the manifests claim to support, and the newest whose schemas the package ships
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: run `.venv/bin/pip install -e '.[cpu,dev]'`")
        return found
    return str(path)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def k8s_docs() -> dict[str, dict[str, Any]]:
    """The resources of the kustomization plus the Secret example, by kind."""
    kust = load_yaml(K8S / "kustomization.yaml")
    docs = [load_yaml(K8S / name) for name in [*kust["resources"], "secret.example.yaml"]]
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    text = (DEPLOY / "grafana" / "dashboard.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


# ---- linters ---------------------------------------------------------------------------------------

def test_yaml_files_pass_yamllint() -> None:
    result = run_tool(tool("yamllint"), "-s", "-c", DEPLOY / ".yamllint.yaml", DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_dockerfile_passes_hadolint() -> None:
    result = run_tool(tool("hadolint"), DEPLOY / "Dockerfile.cpu")
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_passes_shellcheck() -> None:
    result = run_tool(tool("shellcheck"), DEPLOY / "router-entrypoint.sh")
    assert result.returncode == 0, result.stdout + result.stderr


# ---- compose ---------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any], tmp_path: Path) -> None:
    schema = ("--builtin-schema", "vendor.compose-spec")
    ok = run_tool(tool("check-jsonschema"), *schema, DEPLOY / "compose.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = json.loads(json.dumps(compose))
    broken["services"]["router-1"]["replica_count"] = 2  # not a compose key: the schema must refuse it
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    refused = run_tool(tool("check-jsonschema"), *schema, tmp_path / "compose.yaml")
    assert refused.returncode != 0 and "replica_count" in refused.stdout + refused.stderr


def test_gpu_override_builds_the_gpu_image_for_the_same_routers(compose: dict[str, Any]) -> None:
    path = DEPLOY / "compose.gpu.yaml"
    ok = run_tool(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    services = load_yaml(path)["services"]
    assert set(services) == set(ROUTERS)
    for svc in services.values():
        dockerfile = (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
        assert re.search(rf"^FROM \S+ AS {svc['build']['target']}$", dockerfile.read_text(), re.M)
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_routers_mount_the_router_read_only_and_share_one_store(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {*ROUTERS, "postgres", "prometheus", "grafana"} <= set(services)
    for name in ROUTERS:
        svc = services[name]
        mounts = {m["target"]: m for m in svc["volumes"]}
        assert mounts["/routers"]["read_only"] is True and "${ROUTERS_DIR" in mounts["/routers"]["source"]
        assert svc["read_only"] is True and svc["user"] == "10001" and svc["cap_drop"] == ["ALL"]
        assert svc["entrypoint"][-1] in mounts, "the entrypoint script must be mounted"
        assert svc["command"][svc["command"].index("--router") + 1].startswith("/routers/")
        assert mounts[svc["command"][svc["command"].index("--config") + 1]]["source"] == "./serve.yaml"
        assert svc["environment"]["POSTGRES_HOST"] == "postgres"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert (DEPLOY / ".." / svc["build"]["dockerfile"]).resolve().is_file()
    envs = [dict(services[name]["environment"]) for name in ROUTERS]
    assert [env.pop("NEURAL_ROUTER_REPLICA_ID") for env in envs] == list(ROUTERS)
    assert envs[0] == envs[1]
    pg = services["postgres"]["environment"]
    router_env = services["router-1"]["environment"]
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == (router_env["POSTGRES_USER"], router_env["POSTGRES_DB"])


PER_REPLICA = {"NEURAL_ROUTER_REPLICA_ID"}  # the only settings compose.yaml sets per replica


def test_compose_secrets_come_from_files_never_inline(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file"
        assert (DEPLOY / f"{secret['file']}.example").is_file(), f"no example for secret {name}"
    secret_like = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|FEEDBACK_URL", re.I)
    for name, svc in compose["services"].items():
        for var in svc.get("environment", {}):
            assert not secret_like.search(var) or var.endswith("_FILE"), f"{name}: {var} is set inline"
            assert not var.startswith("NEURAL_ROUTER_") or var in PER_REPLICA, \
                f"{name}: {var} belongs in serve.yaml or a secret"
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], f"{name} uses undeclared secret {secret}"
    ignored = (DEPLOY / ".gitignore").read_text()
    assert "secrets/*" in ignored and "!secrets/*.example" in ignored


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            if isinstance(mount, dict) and mount["type"] == "bind" and not mount["source"].startswith("$"):
                assert (DEPLOY / mount["source"]).exists(), f"{name}: {mount['source']} does not exist"


# ---- the router entrypoint -------------------------------------------------------------------------

@pytest.fixture
def fake_cli(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A `neural-router` on PATH that records its arguments and environment instead of serving."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record.json"
    bin_dir.mkdir()
    fake = bin_dir / "neural-router"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SECRETS_DIR": str(secrets),
           "POSTGRES_HOST": "postgres", "POSTGRES_USER": "router", "POSTGRES_DB": "router"}
    return env, record


def test_entrypoint_turns_secret_files_into_settings(fake_cli: tuple[dict[str, str], Path]) -> None:
    env, record = fake_cli
    secrets = Path(env["SECRETS_DIR"])
    password = "p@ss:w/rd%?#"
    for name, value in {"api_key": "k-api\n", "admin_key": "k-admin", "postgres_password": password + "\n"}.items():
        (secrets / name).write_text(value)
    result = subprocess.run(["sh", str(DEPLOY / "router-entrypoint.sh"), "--router", "/router"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["serve", "--router", "/router"]
    assert seen["env"]["NEURAL_ROUTER_API_KEY"] == "k-api" and seen["env"]["NEURAL_ROUTER_ADMIN_KEY"] == "k-admin"
    url = make_url(seen["env"]["NEURAL_ROUTER_FEEDBACK_URL"])
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == \
        ("postgresql", "router", password, "postgres", 5432, "router")


def test_entrypoint_refuses_a_missing_secret(fake_cli: tuple[dict[str, str], Path]) -> None:
    env, record = fake_cli
    (Path(env["SECRETS_DIR"]) / "api_key").write_text("k-api")
    result = subprocess.run(["sh", str(DEPLOY / "router-entrypoint.sh")], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 64 and "admin_key is missing" in result.stderr
    assert not record.exists(), "the service must not start without its secrets"


def test_every_neural_router_variable_names_a_setting(compose: dict[str, Any]) -> None:
    script = (DEPLOY / "router-entrypoint.sh").read_text()
    exported = re.search(r"^export (.+)$", script, re.M)
    assert exported is not None
    names = exported.group(1).split()
    deployment = k8s_docs()["Deployment"]
    names += [e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]]
    names += [var for name in ROUTERS for var in compose["services"][name]["environment"]]
    routed = [n for n in names if n.startswith("NEURAL_ROUTER_")]
    assert len(routed) >= 8
    for name in routed:
        assert name.removeprefix("NEURAL_ROUTER_").lower() in ServeSettings.model_fields, name


# ---- Prometheus and Grafana ------------------------------------------------------------------------

def test_prometheus_scrapes_every_router_with_the_api_key(compose: dict[str, Any]) -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert set(config) <= {"global", "scrape_configs", "rule_files", "alerting"}
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"] == "/run/secrets/api_key"
    assert "api_key" in compose["services"]["prometheus"]["secrets"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:8000" for name in ROUTERS}
    mounts = {m["target"]: m["source"] for m in compose["services"]["prometheus"]["volumes"] if isinstance(m, dict)}
    command = compose["services"]["prometheus"]["command"]
    config_path = next(c.split("=", 1)[1] for c in command if c.startswith("--config.file="))
    assert mounts[config_path] == "./prometheus/prometheus.yml"
    dashboard_job = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())["templating"]["list"][0]
    assert dashboard_job["name"] == "job" and dashboard_job["query"] == job["job_name"]


def test_grafana_provisions_the_dashboard_and_its_data_source(compose: dict[str, Any],
                                                              dashboard: dict[str, Any]) -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    (source,) = load_yaml(prov / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(prov / "dashboards" / "neural-router.yaml")["providers"]
    mounts = {m["source"]: m["target"] for m in compose["services"]["grafana"]["volumes"] if isinstance(m, dict)}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(mounts["./grafana/dashboard.json"]).parent == Path(provider["options"]["path"])
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers not followed by '(' (functions), once strings,
    label matchers, range/offset brackets, groupings and Grafana variables are removed."""
    if m := re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr):
        return {m.group(1)}
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = _GROUPINGS.sub(" ", _RANGES.sub(" ", text))
    text = _LABEL_MATCHERS.sub("{}", text)
    return {name for name in _IDENT.findall(text) if name not in _KEYWORDS}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs + variables


def test_promql_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, endpoint) (rate(router_x_bucket{instance=~"$instance",'
            'status=~"5.."}[$__rate_interval]))) / scalar(sum(up{job="$job"})) + on (instance) router_q offset 5m')
    assert promql_metric_names(expr) == {"router_x_bucket", "up", "router_q"}
    assert promql_metric_names("label_values(router_http_requests_total, instance)") == {"router_http_requests_total"}


# Series that Prometheus itself adds to every scrape target (not exported by the service).
SCRAPE_SERIES = {"up"}
_SERIES_OF = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
              "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


@pytest.fixture(scope="module")
def exported(tiny_router_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Series names the live service can export (each family's series by its type) -> family type:
    `neural-router serve` with deploy/serve.yaml on a loopback port, as deployed: behind an API key,
    with a feedback store (SQLite here, PostgreSQL in deploy/) and a replica id."""
    port, key = free_port(), "deploy-test-key"
    tmp = tmp_path_factory.mktemp("deploy")
    log = tmp / "service.log"
    env = {**os.environ, "NEURAL_ROUTER_API_KEY": key, "NEURAL_ROUTER_INFERENCE_THREADS": "1",
           "NEURAL_ROUTER_FEEDBACK_URL": f"sqlite:///{tmp / 'feedback.db'}", "NEURAL_ROUTER_REPLICA_ID": "r-1"}
    with log.open("w") as out:
        proc = subprocess.Popen([tool("neural-router"), "serve", "--router", str(tiny_router_dir),
                                 "--config", str(DEPLOY / "serve.yaml"), "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 200
        yield {family.name + suffix: family.type
               for family in text_string_to_metric_families(response.text)
               for suffix in _SERIES_OF.get(family.type, ("",))}
    finally:
        stop(proc)


def test_dashboard_queries_only_metrics_the_service_exports(exported: dict[str, str],
                                                           dashboard: dict[str, Any]) -> None:
    queries = dashboard_queries(dashboard)
    used = set().union(*(promql_metric_names(q) for q in queries))
    missing = used - set(exported) - SCRAPE_SERIES
    assert not missing, f"the dashboard queries metrics the service does not export: {sorted(missing)}"
    for query in queries:
        for name in re.findall(r"histogram_quantile\([^,]+,[^\[]*?\b([a-zA-Z_:][\w:]*)\{", query):
            assert name.endswith("_bucket") and exported[name] == "histogram", query
        for name in re.findall(r"\b(?:rate|increase)\(\s*([a-zA-Z_:][\w:]*)", query):
            assert exported[name] in ("counter", "histogram"), f"rate() of a gauge: {query}"


def test_dashboard_shows_every_metric_family_the_service_exports(exported: dict[str, str],
                                                                 dashboard: dict[str, Any]) -> None:
    used = " ".join(dashboard_queries(dashboard))
    families = {name for name in exported if not name.endswith("_created")}
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in families}
    unshown = {base for base in bases if base not in used}
    assert not unshown, f"metrics on no dashboard panel: {sorted(unshown)}"


# ---- Kubernetes ------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kust = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kust["resources"]) == manifests
    (image,) = kust["images"]
    assert k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == image["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    docs = k8s_docs()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "ConfigMap",
            "PersistentVolumeClaim"} <= set(docs)
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)
    broken = json.loads(json.dumps(docs["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_deployment_runs_as_the_image_user_without_privileges() -> None:
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for dockerfile in (REPO / "Dockerfile.gpu", DEPLOY / "Dockerfile.cpu"):
        assert re.search(rf"^USER {pod['securityContext']['runAsUser']}$", dockerfile.read_text(), re.M)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    threads = next(e["value"] for e in container["env"] if e["name"] == "NEURAL_ROUTER_INFERENCE_THREADS")
    assert int(threads) == int(container["resources"]["limits"]["cpu"])


def test_deployment_probes_volumes_and_secrets_fit_together() -> None:
    docs = k8s_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port and container["ports"][0]["name"] == "http"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    router_mount = next(m for path, m in mounts.items() if args[args.index("--router") + 1].startswith(path + "/"))
    assert router_mount["readOnly"] is True
    claim = volumes[router_mount["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True and claim["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    config = Path(args[args.index("--config") + 1])
    config_volume = volumes[mounts[str(config.parent)]["name"]]["configMap"]
    assert config_volume["name"] == docs["ConfigMap"]["metadata"]["name"] and config.name in docs["ConfigMap"]["data"]
    secret = docs["Secret"]
    from_secret = [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    refs = [e["valueFrom"]["secretKeyRef"] for e in from_secret]
    assert {e["name"] for e in from_secret} == {
        "NEURAL_ROUTER_API_KEY", "NEURAL_ROUTER_ADMIN_KEY", "NEURAL_ROUTER_FEEDBACK_URL"}
    assert all(r["name"] == secret["metadata"]["name"] and r["key"] in secret["stringData"] for r in refs)
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    docs = k8s_docs()
    deployment = docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_configmap_holds_deploy_serve_yaml_and_it_is_valid() -> None:
    configmap = k8s_docs()["ConfigMap"]
    assert configmap["data"]["serve.yaml"] == (DEPLOY / "serve.yaml").read_text(encoding="utf-8")
    settings = load_settings(DEPLOY / "serve.yaml")
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert settings.api_key is None and settings.feedback_url is None, "secrets belong in the environment"
