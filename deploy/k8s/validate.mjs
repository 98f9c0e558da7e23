// Offline check of the Kubernetes manifests (run by scripts/test):
//   node deploy/k8s/validate.mjs [RENDERED.yaml ...]
// With files (the output of `kubectl kustomize`), those are checked; without, every manifest under deploy/k8s
// (base and monitoring).
// Each object is validated against the Kubernetes API schema of its kind (npm kubernetes-models, and
// @kubernetes-models/prometheus-operator for ServiceMonitors), then the references between objects and to the node
// are checked: selectors match pod labels, named ports exist, the HPA targets the node StatefulSet (3-50 pods, CPU
// 70%), probes use the node's health endpoints, mounted ConfigMaps and Secrets are known, ports match the configs.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const errors = [];
const fail = (where, msg) => errors.push(`${where}: ${msg}`);

function manifests(dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return manifests(p);
    return f.endsWith(".yaml") && f !== "kustomization.yaml" ? [p] : [];
  });
}

const files = process.argv.length > 2 ? process.argv.slice(2) : manifests(here);
const objects = [];
for (const file of files) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) fail(file, doc.errors.map((e) => e.message).join("; "));
    const obj = doc.toJS();
    if (obj) objects.push({ file, obj });
  }
}

async function modelClass(apiVersion, kind) {
  const base = apiVersion.endsWith("monitoring.coreos.com/v1")
    ? "@kubernetes-models/prometheus-operator"
    : "kubernetes-models";
  const mod = await import(`${base}/${apiVersion}/${kind}`);
  return mod[kind];
}

for (const { file, obj } of objects) {
  const where = `${file} ${obj.kind}/${obj.metadata?.name}`;
  let Model;
  try {
    Model = await modelClass(obj.apiVersion, obj.kind);
  } catch {
    fail(where, `no schema for ${obj.apiVersion} ${obj.kind}`);
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    fail(where, e.message);
  }
}

const byKind = (kind) => objects.map((o) => o.obj).filter((o) => o.kind === kind);
const workloads = [...byKind("StatefulSet"), ...byKind("Deployment")];
const labelsMatch = (selector, labels) => Object.entries(selector || {}).every(([k, v]) => labels?.[k] === v);

// Names the manifests may mount without defining them: the Secrets the operator creates (README).
const base = join(here, "base");
const kustomization = readFileSync(join(base, "kustomization.yaml"), "utf8");
const generated = [...kustomization.matchAll(/- name: (mlbridge-[a-z-]+)\n\s+files:/g)].map((m) => m[1]);
const configMaps = new Set([...byKind("ConfigMap").map((c) => c.metadata.name), ...generated]);
// kustomize names generated ConfigMaps with a hash suffix.
const knownConfigMap = (name) => configMaps.has(name) || configMaps.has(name.replace(/-[a-z0-9]{10}$/, ""));
const secrets = new Set(["mlbridge-node-keys", "mlbridge-validator-key", "mlbridge-redis"]);
const routes = readFileSync(join(root, "node/src/api/mod.rs"), "utf8");

for (const w of workloads) {
  const where = `${w.kind}/${w.metadata.name}`;
  const pod = w.spec.template;
  if (!labelsMatch(w.spec.selector.matchLabels, pod.metadata.labels)) fail(where, "selector does not match its pods");
  const volumes = new Map((pod.spec.volumes || []).map((v) => [v.name, v]));
  const claims = new Set((w.spec.volumeClaimTemplates || []).map((c) => c.metadata.name));
  for (const v of volumes.values()) {
    if (v.configMap && !knownConfigMap(v.configMap.name)) fail(where, `unknown ConfigMap ${v.configMap.name}`);
    if (v.secret && !secrets.has(v.secret.secretName)) fail(where, `unknown Secret ${v.secret.secretName}`);
  }
  for (const c of [...(pod.spec.initContainers || []), ...pod.spec.containers]) {
    for (const e of c.env || []) {
      const ref = e.valueFrom?.secretKeyRef?.name;
      if (ref && !secrets.has(ref)) fail(where, `env ${e.name} from unknown Secret ${ref}`);
    }
    const ports = new Set((c.ports || []).map((p) => p.name));
    for (const m of c.volumeMounts || []) {
      if (!volumes.has(m.name) && !claims.has(m.name)) fail(where, `mount of unknown volume ${m.name}`);
    }
    for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const probe = c[kind]?.httpGet;
      if (!probe) continue;
      const numbered = (c.ports || []).some((p) => p.containerPort === probe.port);
      if (!ports.has(probe.port) && !numbered) fail(where, `${kind} on unknown port ${probe.port}`);
      if (w.metadata.name === "mlbridge-node" && !routes.includes(`.route("${probe.path}"`)) {
        fail(where, `${kind} path ${probe.path} is not a route of the node's API`);
      }
    }
  }
}

for (const s of byKind("Service")) {
  const where = `Service/${s.metadata.name}`;
  const targets = workloads.filter((w) => labelsMatch(s.spec.selector, w.spec.template.metadata.labels));
  if (!targets.length) fail(where, "selects no pods");
  for (const p of s.spec.ports) {
    const named = targets.every((w) => w.spec.template.spec.containers.some((c) => (c.ports || []).some((q) => q.name === p.targetPort)));
    if (typeof p.targetPort === "string" && !named) fail(where, `targetPort ${p.targetPort} is not a container port`);
  }
}

const selectsPods = (sel) => workloads.some((w) => labelsMatch(sel?.matchLabels, w.spec.template.metadata.labels));
for (const p of [...byKind("PodDisruptionBudget"), ...byKind("NetworkPolicy")]) {
  const where = `${p.kind}/${p.metadata.name}`;
  if (!selectsPods(p.kind === "NetworkPolicy" ? p.spec.podSelector : p.spec.selector)) fail(where, "selects no pods");
  for (const rule of p.spec.ingress || []) {
    for (const from of rule.from || []) {
      if (from.podSelector && !selectsPods(from.podSelector)) fail(where, "an ingress rule admits no pods of ours");
    }
  }
}

// Every absolute path a config names lies on a volume of its container (or in the image's model repository), the
// config is mounted where the container reads it, and the Redis URL names the Redis Service.
const services = byKind("Service");
for (const [name, toml] of [["mlbridge-node", "node.toml"], ["mlbridge-validator", "validator.toml"]]) {
  const w = workloads.find((x) => x.metadata.name === name);
  if (!w) continue;
  const c = w.spec.template.spec.containers[0];
  const mounts = (c.volumeMounts || []).map((m) => m.mountPath);
  const text = readFileSync(join(base, toml), "utf8");
  for (const [, key, path] of text.matchAll(/^(\w+) = "(\/[^"]*)"/gm)) {
    const onVolume = mounts.some((m) => path === m || path.startsWith(m.endsWith("/") ? m : m + "/"));
    if (!onVolume && !path.startsWith("/opt/mlbridge/models")) fail(name, `${toml}: ${key} = ${path} is on no volume`);
  }
  if (!mounts.includes(`/etc/mlbridge/${toml}`) || !(c.args || []).includes(`/etc/mlbridge/${toml}`)) {
    fail(name, `${toml} is not mounted where the container reads it`);
  }
  const redis = (c.env || []).find((e) => e.name === "MLBRIDGE_REDIS_URL")?.value;
  if (redis) {
    const [, host, port] = redis.match(/@([\w-]+):(\d+)$/) || [];
    if (!services.some((x) => x.metadata.name === host && x.spec.ports.some((p) => p.port === Number(port)))) {
      fail(name, `MLBRIDGE_REDIS_URL names no Service: ${redis}`);
    }
  }
  if (name === "mlbridge-node") {
    const init = (w.spec.template.spec.initContainers || []).map((i) => (i.args || []).join(" ")).join(" ");
    const keystore = text.match(/^operator_keystore = "([^"]*)"/m)?.[1] || "";
    if (!keystore || !init.includes(`/keys/${keystore.split("/").pop()}`)) fail(name, "the init container does not write the keystore node.toml reads");
  }
}

const node = workloads.find((w) => w.metadata.name === "mlbridge-node");
if (!node || node.kind !== "StatefulSet") fail("node", "mlbridge-node must be a StatefulSet (a ledger and a key per pod)");
const hpas = byKind("HorizontalPodAutoscaler");
if (hpas.length !== 1) fail("HorizontalPodAutoscaler", `expected one, found ${hpas.length}`);
for (const h of hpas) {
  const t = h.spec.scaleTargetRef;
  if (!workloads.some((w) => w.kind === t.kind && w.metadata.name === t.name)) fail("HPA", `targets missing ${t.kind}/${t.name}`);
  const cpu = h.spec.metrics?.find((m) => m.resource?.name === "cpu")?.resource.target.averageUtilization;
  if (h.spec.minReplicas !== 3 || h.spec.maxReplicas !== 50 || cpu !== 70) fail("HPA", "must scale 3-50 pods at 70% CPU");
}

// The container ports are the ones the configs listen on.
const listens = (toml) =>
  [...readFileSync(join(base, toml), "utf8").matchAll(/^listen = (.*)$/gm)].flatMap((m) => [...m[1].matchAll(/(?::|tcp\/)(\d+)/g)]).map((m) => Number(m[1]));
for (const [name, toml] of [["mlbridge-node", "node.toml"], ["mlbridge-validator", "validator.toml"]]) {
  const w = workloads.find((x) => x.metadata.name === name);
  const ports = new Set((w?.spec.template.spec.containers[0].ports || []).map((p) => p.containerPort));
  for (const port of listens(toml)) if (!ports.has(port)) fail(name, `${toml} listens on ${port}, which the pod does not expose`);
}
for (const s of byKind("ServiceMonitor")) {
  const services = byKind("Service").filter((x) => labelsMatch(s.spec.selector.matchLabels, x.metadata.labels));
  for (const e of s.spec.endpoints) {
    if (!services.some((x) => x.spec.ports.some((p) => p.name === e.port))) fail(`ServiceMonitor/${s.metadata.name}`, `no Service port ${e.port}`);
  }
}

if (errors.length) {
  for (const e of errors) console.error(`error: ${e}`);
  process.exit(1);
}
console.log(`${objects.length} Kubernetes objects valid (${files.length} files; schemas from kubernetes-models)`);
