#!/usr/bin/env python3
"""Offline consistency checks of deploy/ that no schema can express (run by deploy/check.sh).

    check_deploy.py compose COMPOSE_FILE ENV_FILE     Compose file, interpolated with ENV_FILE
    check_deploy.py k8s K8S_DIR                       Kubernetes manifests and kustomization
    check_deploy.py keda K8S_DIR                      KEDA objects (schema when available)
    check_deploy.py dockerfile DOCKERFILE REPO_ROOT   Dockerfile stages, COPY sources, build line
    check_deploy.py monitoring MON_DIR README K8S_DIR Alert rules, dashboard, ServiceMonitor and
                                                      NetworkPolicies against the README and k8s/

Each prints one line per check and exits 1 if any failed. Needs PyYAML; the KEDA schema check
uses cloudcoil-models-keda when it is importable and says so when it is not.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

# Every variable the binaries read, one per line: written from their clap commands (a test of the
# cio-sync-tests crate fails when it is out of date). deploy/check.sh passes its path.
ENV_VARS_FILE = Path(os.environ.get("CIO_SYNC_ENV_VARS", Path(__file__).with_name("env-vars.txt")))
APP_ENV = {line.strip() for line in ENV_VARS_FILE.read_text().splitlines() if line.strip()}
# Names compose.yaml must let the operator set (the main ones, and three operational ones).
DESIGN_ENV = {
    "DATABASE_URL", "AMQP_URL", "AMQP_NAMESPACE", "ACCESS_KEYS", "INGRESS_ADDR", "INGRESS_ADMIN_ADDR",
    "CIO_REGION",
    "CIO_APP_API_KEY", "CIO_SITE_ID", "CIO_TRACK_API_KEY", "CIO_APP_API_URL", "CIO_TRACK_API_URL",
    "CIO_APP_RATE_LIMIT", "WORKER_CONCURRENCY", "RETURN_PASSWORD_FIELD", "SECRETS_KEY",
    "DEFAULT_ROLE", "SMTP_URL", "MAIL_FROM", "LOGIN_URL", "FIELD_MAP_FILE", "LOG_FORMAT",
}
EXTRA_ENV = {"SHUTDOWN_GRACE_SECS", "WORKER_HTTP_ADDR", "PUBLISH_TIMEOUT_SECS"}
# Names the simulator reads (tests/src/bin/cio-sim.rs).
SIM_ENV = {"SIM_ADDR", "CIO_APP_API_KEY", "CIO_SITE_ID", "CIO_TRACK_API_KEY", "SIM_APP_RATE_LIMIT",
           "SIM_TRACK_RATE_LIMIT", "SIM_EMAIL_ID_TYPE_DISABLED", "SIM_PUBLIC_URL", "SIM_SEED_DEMO"}
SECRET_ENV = {"DATABASE_URL", "AMQP_URL", "ACCESS_KEYS", "CIO_APP_API_KEY", "CIO_SITE_ID",
              "CIO_TRACK_API_KEY", "SECRETS_KEY", "SMTP_URL"}

# Inputs of the KEDA maxReplicaCount arithmetic (k8s/keda-scaledobject.yaml explains them).
APP_CALLS_PER_SYNC = 2        # attributes + segments, one by one
SLOW_SYNC_SECONDS = 6.4       # two ~3 s App API calls + transaction + Argon2
HEADROOM = 2

failed: list[str] = []


def ok(msg: str) -> None:
    print(f"  ok    {msg}")


def bad(msg: str) -> None:
    print(f"  FAIL  {msg}")
    failed.append(msg)


def check(cond: bool, msg: str, detail: str = "") -> bool:
    if cond:
        ok(msg)
    else:
        bad(msg + (f": {detail}" if detail else ""))
    return cond


def load_all(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ------------------------------------------------------------------------------------ compose

VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise SystemExit(f"{path}:{n}: not KEY=VALUE")
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def interpolate(node, env: dict[str, str], used: set[str], errors: list[str]):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $$."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, used, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, used, errors) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match) -> str:
        if m.group(1) == "$":
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        used.add(name)
        val = env.get(name)
        empty = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-"):
            return arg if empty else val
        if op in (":?", "?"):
            if empty:
                errors.append(f"{name} ({arg})")
                return ""
            return val
        return val or ""

    return VAR.sub(sub, node)


def duration_secs(v) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", v):
        if m.start() != pos:
            break
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[m.group(2)]
        pos = m.end()
    if pos != len(v) or not v:
        raise ValueError(f"not a duration: {v!r}")
    return total


def env_map(svc: dict) -> dict[str, str]:
    e = svc.get("environment") or {}
    if isinstance(e, list):
        return dict(x.split("=", 1) if "=" in x else (x, "") for x in e)
    return {k: "" if v is None else str(v) for k, v in e.items()}


def cmd_compose(compose: Path, env_file: Path) -> None:
    print(f"compose semantics: {compose} with {env_file}")
    raw = yaml.safe_load(compose.read_text())
    env = parse_env_file(env_file)
    used: set[str] = set()
    errors: list[str] = []
    doc = interpolate(raw, env, used, errors)
    check(not errors, "every required ${VAR:?} is set by the env file", ", ".join(sorted(set(errors))))
    unused = sorted(set(env) - used - {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"})
    check(not unused, "every variable of the env file is used by compose.yaml", ", ".join(unused))

    svcs = doc.get("services", {})
    want = {"postgres", "rabbitmq", "migrate", "ingress", "worker", "cio-sim"}
    check(want <= set(svcs), "services postgres, rabbitmq, migrate, ingress, worker, cio-sim",
          f"missing {sorted(want - set(svcs))}")
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        deps = deps if isinstance(deps, dict) else {d: {} for d in deps}
        missing = [d for d in deps if d not in svcs]
        check(not missing, f"{name}: depends_on names existing services", str(missing))
        if name in {"postgres", "rabbitmq", "ingress", "worker"}:
            check(bool((svc.get("healthcheck") or {}).get("test")), f"{name}: has a healthcheck")
        for d, spec in deps.items():
            if d in {"postgres", "rabbitmq"}:
                check(spec.get("condition") == "service_healthy",
                      f"{name}: waits for {d} to be healthy")

    pg, rmq = svcs.get("postgres", {}), svcs.get("rabbitmq", {})
    check(str(pg.get("image", "")).startswith("postgres:15"), "postgres: image postgres:15")
    check(any(":/var/lib/postgresql/data" in str(v) for v in pg.get("volumes", [])),
          "postgres: data on a volume")
    check(re.fullmatch(r"rabbitmq:[34][0-9.]*-management(-alpine)?", str(rmq.get("image", ""))) is not None,
          "rabbitmq: a 3.x/4.x management image", str(rmq.get("image")))

    mig = svcs.get("migrate", {})
    check(mig.get("command") == ["migrate"], "migrate: runs `worker migrate`", str(mig.get("command")))
    check((mig.get("depends_on") or {}).get("postgres", {}).get("condition") == "service_healthy",
          "migrate: after postgres is healthy")
    check(str(mig.get("restart", "no")) == "no", "migrate: one-shot (restart: no)")

    wk = svcs.get("worker", {})
    reps = (wk.get("deploy") or {}).get("replicas")
    check(str(reps).isdigit() and int(reps) >= 3, "worker: deploy.replicas >= 3", str(reps))
    check((wk.get("depends_on") or {}).get("migrate", {}).get("condition")
          == "service_completed_successfully", "worker: starts after migrate completed")

    for name in ("ingress", "worker"):
        svc = svcs.get(name, {})
        e = env_map(svc)
        grace = float(e.get("SHUTDOWN_GRACE_SECS", "30" if name == "worker" else "20"))
        try:
            stop = duration_secs(svc.get("stop_grace_period", "10s"))
        except ValueError as err:
            bad(f"{name}: stop_grace_period: {err}")
            continue
        check(stop >= grace, f"{name}: stop_grace_period {stop:g}s >= SHUTDOWN_GRACE_SECS {grace:g}s")

    for name in ("migrate", "ingress", "worker"):
        names = set(env_map(svcs.get(name, {})))
        check(names <= APP_ENV, f"{name}: environment names are variables the binaries read ({ENV_VARS_FILE.name})",
              ", ".join(sorted(names - APP_ENV)))
    all_app = set().union(*(env_map(svcs.get(n, {})) for n in ("migrate", "ingress", "worker")))
    check(DESIGN_ENV | EXTRA_ENV <= APP_ENV, f"the names compose.yaml must set are in {ENV_VARS_FILE.name}",
          ", ".join(sorted((DESIGN_ENV | EXTRA_ENV) - APP_ENV)))
    check(DESIGN_ENV <= all_app, "every main setting is configurable in compose.yaml",
          ", ".join(sorted(DESIGN_ENV - all_app)))
    check(EXTRA_ENV <= all_app, "SHUTDOWN_GRACE_SECS, WORKER_HTTP_ADDR, PUBLISH_TIMEOUT_SECS set",
          ", ".join(sorted(EXTRA_ENV - all_app)))

    sim = svcs.get("cio-sim", {})
    check("demo" in (sim.get("profiles") or []), "cio-sim: only in the `demo` profile")
    cmd = sim.get("command") or []
    check("--seed-demo" in cmd and "--addr" in cmd and cmd[cmd.index("--addr") + 1] == "0.0.0.0:9090",
          "cio-sim: --seed-demo --addr 0.0.0.0:9090", str(cmd))
    sim_names = set(env_map(sim))
    check(sim_names <= SIM_ENV, "cio-sim: environment names are the simulator's",
          ", ".join(sorted(sim_names - SIM_ENV)))
    profiles = [p.strip() for p in env.get("COMPOSE_PROFILES", "").split(",") if p.strip()]
    if "demo" in profiles:
        we = env_map(wk)
        check(we.get("CIO_APP_API_URL") == "http://cio-sim:9090"
              and we.get("CIO_TRACK_API_URL") == "http://cio-sim:9090",
              "demo profile: workers point at http://cio-sim:9090",
              f"{we.get('CIO_APP_API_URL')!r} {we.get('CIO_TRACK_API_URL')!r}")
        check(env_map(sim).get("CIO_APP_API_KEY") == we.get("CIO_APP_API_KEY"),
              "demo profile: simulator and workers share the App API key")

    # The example must not carry anything that looks like a real secret.
    secretish = {k: v for k, v in env.items() if k in SECRET_ENV or "PASSWORD" in k}
    leaks = [k for k, v in secretish.items()
             if v and not re.search(r"change-me|^sim-", v, re.I)]
    check(not leaks, f"{env_file.name}: secrets are placeholders or simulator demo keys",
          ", ".join(leaks))


# ------------------------------------------------------------------------------------ k8s

def k8s_docs(k8s_dir: Path) -> list[tuple[Path, dict]]:
    out = []
    for p in sorted(k8s_dir.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        out.extend((p, d) for d in load_all(p))
    return out


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == kind}


def container_env(c: dict, cms: dict, secrets: dict) -> tuple[dict[str, str], list[str]]:
    """Env names -> literal value ('' when from a ref), plus dangling references."""
    env, dangling = {}, []
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            cm = cms.get(src["configMapRef"]["name"])
            if cm is None:
                dangling.append(f"configMap {src['configMapRef']['name']}")
            else:
                env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
        if "secretRef" in src:
            s = secrets.get(src["secretRef"]["name"])
            if s is None:
                dangling.append(f"secret {src['secretRef']['name']}")
            else:
                env.update({k: "" for k in {**(s.get("data") or {}), **(s.get("stringData") or {})}})
    for e in c.get("env", []):
        env[e["name"]] = str(e.get("value", ""))
        ref = (e.get("valueFrom") or {})
        for kind, pool in (("secretKeyRef", secrets), ("configMapKeyRef", cms)):
            if kind in ref:
                r = ref[kind]
                obj = pool.get(r["name"])
                keys = set((obj or {}).get("data") or {}) | set((obj or {}).get("stringData") or {})
                if not r.get("optional") and (obj is None or r["key"] not in keys):
                    dangling.append(f"{kind} {r['name']}/{r['key']}")
    return env, dangling


def pod_checks(name: str, spec: dict, cms, secrets) -> dict[str, dict[str, str]]:
    psc = spec.get("securityContext") or {}
    check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
    envs = {}
    for c in spec.get("containers", []):
        cn = f"{name}/{c['name']}"
        sc = c.get("securityContext") or {}
        check(psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, f"{cn}: runAsNonRoot")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        check(isinstance(uid, int) and uid > 0, f"{cn}: numeric non-zero runAsUser", str(uid))
        check(sc.get("readOnlyRootFilesystem") is True, f"{cn}: read-only root filesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cn}: allowPrivilegeEscalation false")
        check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cn}: drops ALL capabilities")
        check((psc.get("seccompProfile") or sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
              f"{cn}: seccomp RuntimeDefault")
        res = c.get("resources") or {}
        check(bool(res.get("requests")) and bool((res.get("limits") or {}).get("memory")),
              f"{cn}: resource requests and a memory limit")
        env, dangling = container_env(c, cms, secrets)
        check(not dangling, f"{cn}: every ConfigMap/Secret reference resolves", ", ".join(dangling))
        check(set(env) <= APP_ENV, f"{cn}: env names are variables the binaries read ({ENV_VARS_FILE.name})",
              ", ".join(sorted(set(env) - APP_ENV)))
        envs[c["name"]] = env
    return envs


def probe_port(c: dict, probe: dict):
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == port), None)


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cmd_k8s(k8s_dir: Path) -> None:
    print(f"kubernetes semantics: {k8s_dir}")
    kust = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    listed = kust.get("resources") or []
    files = sorted(p.name for p in k8s_dir.glob("*.yaml") if p.name != "kustomization.yaml")
    check(sorted(listed) == files, "kustomization.yaml lists exactly the manifests in k8s/",
          f"listed {sorted(listed)} vs files {files}")
    docs = k8s_docs(k8s_dir)
    for p, d in docs:
        if not (d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")):
            bad(f"{p.name}: object without apiVersion/kind/metadata.name")
    cms, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    deps = by_kind(docs, "Deployment")
    image_names = {i["name"] for i in kust.get("images") or []}

    for s in secrets.values():
        vals = {**(s.get("data") or {}), **(s.get("stringData") or {})}
        fake = [k for k, v in vals.items() if v and "CHANGE-ME" not in str(v)]
        check(not fake, f"Secret {s['metadata']['name']}: only CHANGE-ME placeholders or empty", str(fake))
        check("example" in json.dumps(s["metadata"].get("annotations", {})).lower(),
              f"Secret {s['metadata']['name']}: marked as an example")

    for fm in cms.get("cio-sync-field-map", {}).get("data", {}).values():
        import tomllib
        try:
            t = tomllib.loads(fm)
            check(set(t) == {"fields"} and all(isinstance(v, str) for v in t["fields"].values()),
                  "field map: one [fields] table of strings (the worker denies unknown keys)")
        except tomllib.TOMLDecodeError as e:
            bad(f"field map TOML: {e}")

    all_envs = {}
    for name, d in deps.items():
        spec = d["spec"]
        tmpl = spec["template"]
        check(matches(spec["selector"]["matchLabels"], tmpl["metadata"].get("labels", {})),
              f"{name}: selector matches the pod labels")
        envs = pod_checks(name, tmpl["spec"], cms, secrets)
        all_envs.update({f"{name}/{k}": v for k, v in envs.items()})
        for c in tmpl["spec"]["containers"]:
            check(c["image"] in image_names, f"{name}: image {c['image']} is set by kustomization images")

    ing = deps.get("cio-sync-ingress")
    if check(ing is not None, "ingress Deployment present"):
        ps = ing["spec"]["template"]["spec"]
        c = ps["containers"][0]
        env = all_envs[f"cio-sync-ingress/{c['name']}"]
        admin_port = int(env.get("INGRESS_ADMIN_ADDR", "127.0.0.1:9090").rsplit(":", 1)[1])
        check(env.get("INGRESS_ADMIN_ADDR", "").startswith("0.0.0.0:") and admin_port == 9090,
              "ingress: INGRESS_ADMIN_ADDR 0.0.0.0:9090 (probes and Prometheus reach it in the pod)")
        check(c["readinessProbe"]["httpGet"]["path"] == "/readyz"
              and probe_port(c, c["readinessProbe"]) == admin_port,
              "ingress: readiness /readyz on the admin port")
        check(c["livenessProbe"]["httpGet"]["path"] == "/healthz" and probe_port(c, c["livenessProbe"]) == 8080,
              "ingress: liveness /healthz on 8080")
        ann = ing["spec"]["template"]["metadata"].get("annotations") or {}
        check(ann.get("prometheus.io/port") == str(admin_port)
              and ann.get("prometheus.io/path", "/metrics") == "/metrics",
              "ingress: prometheus.io scrape annotations on the admin port")
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        grace = float(env.get("SHUTDOWN_GRACE_SECS", "20"))
        check(ps.get("terminationGracePeriodSeconds", 30) > pre + grace,
              f"ingress: terminationGracePeriodSeconds > preStop {pre}s + SHUTDOWN_GRACE_SECS {grace:g}s")
        check(env.get("INGRESS_ADDR", "0.0.0.0:8080").endswith(":8080"), "ingress: INGRESS_ADDR port 8080")
        svcs = [s for s in by_kind(docs, "Service").values()
                if matches(s["spec"].get("selector"), ing["spec"]["template"]["metadata"]["labels"])]
        if check(bool(svcs), "ingress: a Service selects its pods"):
            tp = svcs[0]["spec"]["ports"][0]["targetPort"]
            check(tp == 8080 or any(p.get("name") == tp for p in c.get("ports", [])),
                  "ingress Service: targetPort names the container port")
            exposed = {p.get("targetPort") for p in svcs[0]["spec"]["ports"]}
            admin_names = {p.get("name") for p in c.get("ports", []) if p.get("containerPort") == admin_port}
            check(not (exposed & ({admin_port} | admin_names)),
                  "ingress Service: the admin port is not exposed")
        pdbs = [p for p in by_kind(docs, "PodDisruptionBudget").values()
                if matches(p["spec"]["selector"]["matchLabels"], ing["spec"]["template"]["metadata"]["labels"])]
        check(bool(pdbs), "ingress: a PodDisruptionBudget covers its pods")
        if pdbs and "minAvailable" in pdbs[0]["spec"]:
            check(pdbs[0]["spec"]["minAvailable"] < ing["spec"].get("replicas", 1),
                  "ingress: PDB minAvailable below replicas (drains can proceed)")

    wk = deps.get("cio-sync-worker")
    if check(wk is not None, "worker Deployment present"):
        ps = wk["spec"]["template"]["spec"]
        c = ps["containers"][0]
        env = all_envs[f"cio-sync-worker/{c['name']}"]
        grace = float(env.get("SHUTDOWN_GRACE_SECS", "30"))
        tgp = ps.get("terminationGracePeriodSeconds", 30)
        check(tgp > grace, f"worker: terminationGracePeriodSeconds {tgp} > SHUTDOWN_GRACE_SECS {grace:g}")
        port = int(env.get("WORKER_HTTP_ADDR", "0.0.0.0:9091").rsplit(":", 1)[1])
        check(port == 9091, "worker: WORKER_HTTP_ADDR on 9091")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            pr = c.get(probe) or {}
            check((pr.get("httpGet") or {}).get("path") == path and probe_port(c, pr) == port,
                  f"worker: {probe} {path} on {port}")
        ann = wk["spec"]["template"]["metadata"].get("annotations") or {}
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port)
              and ann.get("prometheus.io/path", "/metrics") == "/metrics",
              "worker: prometheus.io scrape annotations on 9091 /metrics")
        check("replicas" not in wk["spec"], "worker: no spec.replicas (KEDA owns the count)")
        check(c.get("args", ["run"]) == ["run"], "worker: runs `worker run`")
        fmf = env.get("FIELD_MAP_FILE")
        if fmf:
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            check(any(fmf.startswith(m.rstrip("/") + "/") for m in mounts), "worker: FIELD_MAP_FILE is mounted")

    jobs = by_kind(docs, "Job")
    job = jobs.get("cio-sync-migrate")
    if check(job is not None, "migrate Job present"):
        ps = job["spec"]["template"]["spec"]
        pod_checks("cio-sync-migrate", ps, cms, secrets)
        c = ps["containers"][0]
        check(c.get("args") == ["migrate"] and c["image"] == "cio-sync-worker",
              "migrate Job: `worker migrate` in the worker image")
        check(ps.get("restartPolicy") in ("Never", "OnFailure"), "migrate Job: restartPolicy Never/OnFailure")


# ------------------------------------------------------------------------------------ keda

def cmd_keda(k8s_dir: Path) -> None:
    print(f"KEDA objects: {k8s_dir}")
    docs = k8s_docs(k8s_dir)
    keda = [(p, d) for p, d in docs if str(d.get("apiVersion", "")).startswith("keda.sh/")]
    sos = by_kind(keda, "ScaledObject")
    tas = by_kind(keda, "TriggerAuthentication")
    check(len(sos) == 1 and len(tas) == 1, "one ScaledObject and one TriggerAuthentication")

    try:
        from cloudcoil.models.keda import v1alpha1 as kv  # type: ignore
    except Exception as e:  # noqa: BLE001
        print(f"  skip  KEDA CRD schema (cloudcoil-models-keda not importable: {e}); "
              "required fields are still checked below")
        kv = None
    if kv is not None:
        for _, d in keda:
            model = getattr(kv, d["kind"], None)
            if model is None:
                bad(f"{d['kind']}: no KEDA schema")
                continue
            try:
                m = model.model_validate(d)
            except Exception as e:  # noqa: BLE001
                bad(f"{d['kind']} {d['metadata']['name']}: KEDA schema: {e}")
                continue
            # Unknown fields are dropped by the model: a round trip that changes the object
            # means a misspelt or unsupported field.
            back = m.model_dump(by_alias=True, exclude_unset=True, mode="json")
            check(back == d, f"{d['kind']} {d['metadata']['name']}: valid against the KEDA "
                  f"v1alpha1 schema (cloudcoil-models-keda), no unknown fields",
                  json.dumps(diff(d, back))[:400])

    cms, secrets, deps = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret"), by_kind(docs, "Deployment")
    cfg = (cms.get("cio-sync-config") or {}).get("data") or {}
    for name, so in sos.items():
        spec = so.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        target = deps.get(ref.get("name"))
        check(target is not None and ref.get("kind", "Deployment") == "Deployment",
              f"ScaledObject {name}: scaleTargetRef names the worker Deployment", str(ref))
        mn, mx = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        check(isinstance(mn, int) and mn >= 1, f"ScaledObject {name}: minReplicaCount >= 1 (outbox keeps running)")
        trig = spec.get("triggers") or []
        check(len(trig) >= 1, f"ScaledObject {name}: has triggers")
        for t in trig:
            md = t.get("metadata") or {}
            check(t.get("type") == "rabbitmq", "trigger: type rabbitmq")
            check(all(isinstance(v, str) for v in md.values()), "trigger: metadata values are strings")
            check(md.get("protocol") == "amqp" and md.get("mode") == "QueueLength",
                  "trigger: protocol amqp, mode QueueLength")
            ns = cfg.get("AMQP_NAMESPACE", "cio_sync")
            check(md.get("queueName") == f"{ns}.commands", f"trigger: queueName is {ns}.commands",
                  str(md.get("queueName")))
            try:
                check(float(md.get("value", "")) > 0, "trigger: value is a positive number")
            except ValueError:
                bad(f"trigger: value {md.get('value')!r} is not a number")
            check("host" not in md and "hostFromEnv" not in md, "trigger: no credentials inline")
            auth = (t.get("authenticationRef") or {}).get("name")
            ta = tas.get(auth)
            if check(ta is not None, f"trigger: authenticationRef {auth} exists"):
                refs = {r.get("parameter"): r for r in (ta["spec"].get("secretTargetRef") or [])}
                h = refs.get("host")
                sec = secrets.get((h or {}).get("name"))
                keys = set((sec or {}).get("data") or {}) | set((sec or {}).get("stringData") or {})
                check(h is not None and sec is not None and h.get("key") in keys,
                      "TriggerAuthentication: `host` from an existing Secret key")
        rate = float(cfg.get("CIO_APP_RATE_LIMIT", "10"))
        conc = int(cfg.get("WORKER_CONCURRENCY", "16"))
        budget = rate / APP_CALLS_PER_SYNC
        expect = HEADROOM * math.ceil(budget * SLOW_SYNC_SECONDS / conc)
        check(mx == expect,
              f"ScaledObject {name}: maxReplicaCount {mx} = {HEADROOM} x ceil(({rate:g} req/s / "
              f"{APP_CALLS_PER_SYNC} calls) x {SLOW_SYNC_SECONDS} s / {conc}) = {expect}")


def diff(a, b, path="$"):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            if k not in b:
                out.append(f"{path}.{k} dropped (unknown field?)")
            elif k not in a:
                out.append(f"{path}.{k} added")
            else:
                out.extend(diff(a[k], b[k], f"{path}.{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [x for i, (p, q) in enumerate(zip(a, b)) for x in diff(p, q, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


# ------------------------------------------------------------------------------------ Dockerfile

def cmd_dockerfile(dockerfile: Path, root: Path) -> None:
    print(f"Dockerfile semantics: {dockerfile}")
    text = dockerfile.read_text()
    # Join continuation lines.
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
             for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    stages: dict[str, list[tuple[str, str]]] = {}
    order: list[str] = []
    parent: dict[str, str] = {}
    cur = None
    for op, arg in instr:
        if op == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            cur = (m.group(2) or f"stage{len(order)}").lower()
            order.append(cur)
            stages[cur] = []
            parent[cur] = m.group(1).lower()
        elif cur:
            stages[cur].append((op, arg))
    for t in ("builder", "runtime", "ingress", "worker", "cio-sim"):
        check(t in stages, f"stage/target `{t}` exists")

    def effective(stage: str, op: str):
        while stage in stages:
            vals = [a for o, a in stages[stage] if o == op]
            if vals:
                return vals[-1]
            stage = parent[stage]
        return None

    for t in ("ingress", "worker", "cio-sim", order[-1]):
        user = effective(t, "USER") or "root"
        check(user.split(":")[0] not in ("root", "0"), f"target `{t}`: runs as a non-root USER ({user})")
    for t in ("ingress", "worker", "cio-sim"):
        ep = effective(t, "ENTRYPOINT") or ""
        check(f"/usr/local/bin/{t}" in ep, f"target `{t}`: ENTRYPOINT is its binary", ep)
    runtime_base = parent.get("runtime", "")
    check(runtime_base.startswith(("debian:", "gcr.io/distroless/cc")), "runtime image is Debian slim or distroless cc",
          runtime_base)

    build = " ".join(a for o, a in stages.get("builder", []) if o == "RUN")
    want = "cargo build --release --locked -p ingress -p worker -p cio-sync-tests --bin ingress --bin worker --bin cio-sim"
    check(re.sub(r"\s+", " ", want) in re.sub(r"\s+", " ", build), "builder runs " + want)
    cooks = [part for o, a in stages.get("builder", []) if o == "RUN"
             for part in a.split("&&") if "cargo chef cook" in part]
    if check(len(cooks) == 1, "builder caches dependencies with one `cargo chef cook`"):
        def sel(cmd: str) -> list[str]:
            return sorted(re.findall(r"(?:-p|--bin)\s+\S+", cmd))
        check(sel(cooks[0]) == sel(want), "cargo chef cook selects the same packages and binaries",
              str(sel(cooks[0])))

    # COPY sources must exist in the repository and pass the build-context filter.
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    allowed = [ln.strip()[1:].rstrip("/") for ln in (ignore.read_text().splitlines() if ignore.exists() else [])
               if ln.strip().startswith("!")]
    sources = sorted({s for stage in stages.values() for op, arg in stage
                      if op in ("COPY", "ADD") and "--from=" not in arg
                      for s in arg.split()[:-1] if not s.startswith("--")})
    missing = [s for s in sources if not (root / s).exists()]
    check(not missing, f"COPY sources exist in the repository ({' '.join(sources)})", str(missing))
    if ignore.exists():
        blocked = [s for s in sources if s.rstrip("/") not in allowed]
        check(not blocked, f"COPY sources pass {ignore.name}", str(blocked))
    else:
        bad(f"{ignore.name} missing: the whole repository (target/, .env) would be sent")

    cargo = shutil.which("cargo")
    if not cargo:
        print("  skip  package/binary names against `cargo metadata` (no cargo on PATH)")
        return
    r = subprocess.run([cargo, "metadata", "--no-deps", "--format-version", "1", "--offline"],
                       cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        bad(f"cargo metadata failed: {r.stderr.strip()[:300]}")
        return
    meta = json.loads(r.stdout)
    bins = {(p["name"], t["name"]) for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
    for pkg, b in (("ingress", "ingress"), ("worker", "worker"), ("cio-sync-tests", "cio-sim")):
        check((pkg, b) in bins, f"cargo metadata: package {pkg} has binary {b}")
    mig = root / "migrations"
    check(mig.is_dir() and any(mig.glob("*.sql")), "migrations/ holds the SQL embedded at compile time")


# ------------------------------------------------------------------------------ monitoring

def readme_metrics(readme: Path) -> tuple[set[str], set[str]]:
    """The series of the README's Metrics table, and the metrics its "Alert on" sentence names."""
    text = readme.read_text()
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    table = set()
    for line in section.splitlines():
        if line.startswith("| `cio_"):
            table.update(re.findall(r"`(cio_[a-z_]+)", line.split("|")[1]))
    alert_text = section.split("Alert on", 1)[1] if "Alert on" in section else ""
    alerts = set(re.findall(r"cio_[a-z_]+", alert_text.split("\n\n", 1)[0]))
    if "503" in alert_text:
        alerts.add("cio_ingress_requests_total")
    return table, alerts


def series_in(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"cio_[a-z_]+", expr)}


def cmd_monitoring(mon: Path, readme: Path, k8s_dir: Path) -> None:
    print(f"monitoring assets: {mon}")
    table, alert_metrics = readme_metrics(readme)
    check(len(table) >= 10, f"README metrics table read ({len(table)} series)")

    rules = yaml.safe_load((mon / "alerts.rules.yaml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for r in alerts:
        check(bool(r.get("expr")) and r.get("labels", {}).get("severity") in ("warning", "critical")
              and r.get("annotations", {}).get("summary"),
              f"alert {r.get('alert')}: expr, severity and summary")
        check(series_in(r["expr"]) <= table, f"alert {r['alert']}: uses only series of the README table",
              str(series_in(r["expr"]) - table))
    used = set().union(*(series_in(r["expr"]) for r in alerts)) if alerts else set()
    check(alert_metrics <= used, "every metric of the README's alert list has an alert", str(alert_metrics - used))

    dash = json.loads((mon / "grafana-dashboard.json").read_text())
    for key in ("title", "uid", "panels", "schemaVersion"):
        check(key in dash, f"dashboard: has {key}")
    ids = [p.get("id") for p in dash["panels"]]
    check(len(ids) == len(set(ids)) and None not in ids, "dashboard: unique panel ids")
    exprs = []
    for p in dash["panels"]:
        g = p.get("gridPos") or {}
        check(p.get("type") in ("timeseries", "stat") and p.get("title"), f"panel {p.get('id')}: type and title")
        check(all(k in g for k in "xywh") and g["x"] + g["w"] <= 24, f"panel {p.get('title')}: gridPos within 24 columns")
        targets = p.get("targets") or []
        check(bool(targets) and all(t.get("expr") and t.get("refId") for t in targets),
              f"panel {p.get('title')}: every target has expr and refId")
        check(all((t.get("datasource") or {}).get("uid") == "${datasource}" for t in targets),
              f"panel {p.get('title')}: uses the datasource variable")
        exprs += [t["expr"] for t in targets]
        for e in (t["expr"] for t in targets):
            check(e.count("(") == e.count(")"), f"panel {p.get('title')}: balanced parentheses in {e}")
    shown = set().union(*(series_in(e) for e in exprs))
    check(table <= shown, "dashboard: every series of the README's metrics table has a panel", str(table - shown))
    check(shown <= table, "dashboard: only series the README documents", str(shown - table))

    deps = {n: d for n, d in by_kind(k8s_docs(k8s_dir), "Deployment").items()}
    pod = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in deps.values()}
    mon_docs = [d for d in load_all(mon / "servicemonitor.yaml") if d]
    services = [d for d in by_kind(k8s_docs(k8s_dir), "Service").values()] + \
        [d for d in mon_docs if d["kind"] == "Service"]
    sms = [d for d in mon_docs if d["kind"] == "ServiceMonitor"]
    check(len(sms) == 1, "one ServiceMonitor")
    for sm in sms:
        sel = sm["spec"]["selector"]
        def selected(labels):
            if not matches(sel.get("matchLabels"), labels):
                return False
            return all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []) if e["operator"] == "In")
        for comp in ("ingress", "worker"):
            svc = [s for s in services if selected(s["metadata"].get("labels", {}))
                   and matches(s["spec"]["selector"], pod[comp]["spec"]["template"]["metadata"]["labels"])]
            if check(bool(svc), f"ServiceMonitor: selects a Service of the {comp} pods"):
                ports = {pt["name"]: pt for pt in svc[0]["spec"]["ports"]}
                for ep in sm["spec"]["endpoints"]:
                    check(ep["port"] in ports, f"ServiceMonitor: {comp} Service has port {ep['port']}")
                    c = pod[comp]["spec"]["template"]["spec"]["containers"][0]
                    tp = ports.get(ep["port"], {}).get("targetPort")
                    check(any(cp.get("name") == tp for cp in c.get("ports", [])),
                          f"ServiceMonitor: {comp} targetPort {tp} is a container port")

    for np in by_kind(k8s_docs(k8s_dir), "NetworkPolicy").values():
        name = np["metadata"]["name"]
        sel = np["spec"]["podSelector"]["matchLabels"]
        target = [d for d in deps.values() if matches(sel, d["spec"]["template"]["metadata"]["labels"])]
        if check(len(target) == 1, f"NetworkPolicy {name}: selects one Deployment's pods"):
            c = target[0]["spec"]["template"]["spec"]["containers"][0]
            names = {cp.get("name") for cp in c.get("ports", [])}
            for rule in np["spec"].get("ingress", []):
                for pt in rule.get("ports", []):
                    check(isinstance(pt["port"], int) or pt["port"] in names,
                          f"NetworkPolicy {name}: ingress port {pt['port']} is a container port")
            check(any(pt.get("port") == 53 for r in np["spec"].get("egress", []) for pt in r.get("ports", [])),
                  f"NetworkPolicy {name}: allows DNS")
    check(len(by_kind(k8s_docs(k8s_dir), "NetworkPolicy")) == 2, "NetworkPolicy for the ingress and the worker")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    cmd, args = argv[1], [Path(a) for a in argv[2:]]
    {"compose": cmd_compose, "k8s": cmd_k8s, "keda": cmd_keda, "dockerfile": cmd_dockerfile,
     "monitoring": cmd_monitoring}[cmd](*args)
    if failed:
        print(f"  {len(failed)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
