#!/usr/bin/env bash
# Validates the mesh's Kubernetes manifests offline, with no cluster:
#
#   deploy/kubernetes/validate.sh [PATH...]
#
# Always checks deploy/kubernetes/*.yaml and
# examples/wordpress-canary/kubernetes/*.yaml, then every PATH given (a file,
# a folder read recursively for *.yaml, *.yml and *.json, or - for standard
# input), e.g. what `mesh-proxy inject` prints.
#
# - Kubernetes kinds: against the API's own schemas as kubernetes-validate
#   (PyPI) ships them, for Kubernetes $KUBERNETES_VERSION (1.33 unless set;
#   if the installed kubernetes-validate lacks it, the newest version it ships
#   between 1.29 and that one), strict: a field the API does not define is an
#   error, as `kubectl apply --validate=strict` makes it. A kind or apiVersion
#   it has no schema for is an error too (a typo must not pass as "unknown").
# - Istio kinds (custom resources, which kubernetes-validate cannot know):
#   against the CRDs found among the files checked (10-crds.yaml): the
#   apiVersion must be one the CRD serves, the object must match that
#   version's openAPIV3Schema with the API server's pruning made an error
#   (only spec and status beside apiVersion, kind and metadata), its metadata
#   must be valid ObjectMeta, and an *.istio.io kind no CRD defines (MeshPolicy,
#   EnvoyFilter...) is an error. These schemas leave spec and status open, as
#   the control plane is what validates them: `mesh-proxy check` is the
#   check of their contents.
# - What the schemas do not check: base64 fields (a webhook's caBundle, a
#   Secret's data, a ConfigMap's binaryData) must decode; a ConfigMap value
#   under a *.yaml or *.yml key must parse as YAML, and mesh-config's
#   mesh.yaml must be a MeshConfig (apiVersion mesh.config/v1alpha1).
#
# Prints one line per document and exits 1 if any document is invalid or any
# file unreadable, naming the file and the document (1-based, as the mesh's
# own errors count them). Needs python3; installs kubernetes-validate with
# pip when it is missing (CI installs it beforehand). PYTHON chooses the
# interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

if ! "$python" -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "validate.sh: installing kubernetes-validate (pip)" >&2
  "$python" -m pip install --quiet kubernetes-validate
fi

shopt -s nullglob
paths=("$here"/*.yaml "$repo"/examples/wordpress-canary/kubernetes/*.yaml "$@")

read -r -d '' program <<'PY' || true
import base64
import binascii
import importlib.resources
import os
import sys

import jsonschema
import yaml

import kubernetes_validate
import kubernetes_validate.utils as kv

FLOOR = (1, 29)


def vtuple(v):
    return tuple(int(x) for x in v.lstrip("v").split(".")[:2])


def vstr(t):
    return "%d.%d" % t


# ---------------------------------------------------------------- version
wanted = vtuple(os.environ.get("KUBERNETES_VERSION") or "1.33")
shipped = sorted({vtuple(v) for v in kv.all_versions()})
candidates = [v for v in shipped if FLOOR <= v <= wanted]
if not candidates:
    sys.exit("validate.sh: kubernetes-validate %s ships Kubernetes %s, none from %s up to %s"
             % (kubernetes_validate.__version__, ", ".join(map(vstr, shipped)),
                vstr(FLOOR), vstr(wanted)))
k8s = candidates[-1]
notes = []
if k8s != wanted:
    notes.append("Kubernetes %s is not in kubernetes-validate %s: validating for %s"
                 % (vstr(wanted), kubernetes_validate.__version__, vstr(k8s)))
schemas = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
strict = any(p.name.startswith("v%s." % vstr(k8s)) and p.name.endswith("-strict")
             for p in schemas.iterdir())
if not strict:
    notes.append("no strict schemas for %s: unknown fields are not caught" % vstr(k8s))
K8S = vstr(k8s) + ".0"


# ---------------------------------------------------------------- reading
class Loader(yaml.SafeLoader):
    """YAML 1.1 as kubectl reads it, but a key given twice is an error
    (PyYAML would keep the last one silently)."""


def construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found duplicate key %r (first at line %d)" % (key, seen[key] + 1),
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
# `=` as a plain scalar (kubernetes-validate does the same; PyYAML issue 89).
Loader.add_constructor("tag:yaml.org,2002:value", lambda l, n: l.construct_scalar(n))


def display(path):
    if path == "-":
        return "<stdin>"
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def expand(args):
    for arg in args:
        if arg != "-" and os.path.isdir(arg):
            found = []
            for root, dirs, files in os.walk(arg):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)
                          if f.endswith((".yaml", ".yml", ".json"))]
            if not found:
                yield arg, None, "no *.yaml, *.yml or *.json file in this folder"
            for f in found:
                yield from read(f)
        else:
            yield from read(arg)


def read(path):
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        yield path, None, "cannot read: %s" % e
        return
    try:
        nodes = list(yaml.compose_all(text, Loader=Loader))
    except yaml.YAMLError as e:
        yield path, None, "not YAML: %s" % yaml_error(e)
        return
    docs = []
    for node in nodes:
        # One document at a time: a key given twice spoils its document only.
        loader = Loader("")
        try:
            docs.append(loader.construct_document(node))
        except yaml.YAMLError as e:
            docs.append(Unreadable(yaml_error(e)))
        finally:
            loader.dispose()
    if not any(d is not None for d in docs):
        yield path, None, "no document"
        return
    yield path, docs, None


class Unreadable(str):
    """A document that parsed but could not be constructed."""


def yaml_error(e):
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = "line %d, column %d: " % (mark.line + 1, mark.column + 1) if mark else ""
    return where + problem


# ---------------------------------------------------------------- CRDs
def group_version(api_version):
    if "/" in api_version:
        return tuple(api_version.split("/", 1))
    return "", api_version


def structural(schema, root=False):
    """The CRD schema with pruning as an error: an object whose properties
    are listed takes no others unless x-kubernetes-preserve-unknown-fields."""
    s = dict(schema)
    props = dict(s.get("properties") or {})
    if root:
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if props:
        s["properties"] = {k: structural(v) for k, v in props.items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("items"), dict):
        s["items"] = structural(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = structural(s["additionalProperties"])
    return s


crds = {}  # (group, kind) -> {"name", "scope", "versions": {version: validator}}
crd_groups = set()


def learn_crd(doc):
    spec = doc.get("spec") or {}
    names = spec.get("names") or {}
    group, kind = spec.get("group"), names.get("kind")
    if not group or not kind:
        return
    versions = {}
    for v in spec.get("versions") or []:
        if not isinstance(v, dict) or not v.get("served"):
            continue
        schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object"}
        versions[v.get("name")] = jsonschema.Draft4Validator(structural(schema, root=True))
    crds[(group, kind)] = {"name": (doc.get("metadata") or {}).get("name"),
                           "scope": spec.get("scope", "Namespaced"), "versions": versions,
                           "list": names.get("listKind") or kind + "List"}
    crd_groups.add(group)


# ---------------------------------------------------------------- checks
def field_path(path):
    out = ""
    for p in path:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "(document)"


def k8s_schema(doc):
    """Errors from kubernetes-validate, and what it validated against."""
    try:
        kv.validate(doc, K8S, strict)
    except kv.ValidationError as e:
        return ["%s: %s" % (field_path(e.path), e.message)], None
    except kv.SchemaNotFoundError:
        return ["no schema for kind %s, apiVersion %s in Kubernetes %s"
                % (doc["kind"], doc["apiVersion"], vstr(k8s))], None
    return [], "Kubernetes %s schema%s" % (vstr(k8s), " (strict)" if strict else "")


def custom_resource(doc, crd):
    group, version = group_version(doc["apiVersion"])
    validator = crd["versions"].get(version)
    if validator is None:
        return ["apiVersion %s: CRD %s serves %s" % (
            doc["apiVersion"], crd["name"],
            ", ".join("%s/%s" % (group, v) for v in crd["versions"]) or "no version")], None
    errors = ["%s: %s" % (field_path(e.absolute_path), e.message)
              for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    meta = doc.get("metadata")
    if isinstance(meta, dict):
        # ObjectMeta through the API's own schema: a ConfigMap carrying it.
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
        errors += k8s_schema(probe)[0]
        if crd["scope"] == "Cluster" and meta.get("namespace"):
            errors.append("metadata.namespace: %s is cluster-scoped" % doc["kind"])
    return errors, "CRD %s %s schema" % (crd["name"], version)


def extra_checks(doc):
    errors = []
    kind = doc.get("kind")

    def b64(value, where):
        if value is None:
            return
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError) as e:
            errors.append("%s: not base64 (%s)" % (where, e))

    if kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for i, hook in enumerate(doc.get("webhooks") or []):
            b64(((hook or {}).get("clientConfig") or {}).get("caBundle"),
                "webhooks[%d].clientConfig.caBundle" % i)
    if kind == "Secret":
        for k, v in (doc.get("data") or {}).items():
            b64(v, "data.%s" % k)
    if kind == "ConfigMap":
        for k, v in (doc.get("binaryData") or {}).items():
            b64(v, "binaryData.%s" % k)
        for k, v in (doc.get("data") or {}).items():
            if not (isinstance(v, str) and k.endswith((".yaml", ".yml"))):
                continue
            try:
                inner = list(yaml.load_all(v, Loader=Loader))
            except yaml.YAMLError as e:
                errors.append("data.%s: not YAML: %s" % (k, str(e).replace("\n", " ")))
                continue
            if (doc.get("metadata") or {}).get("name") == "mesh-config" and k == "mesh.yaml":
                docs = [d for d in inner if d is not None]
                if (len(docs) != 1 or not isinstance(docs[0], dict)
                        or docs[0].get("apiVersion") != "mesh.config/v1alpha1"
                        or docs[0].get("kind") != "MeshConfig"
                        or not isinstance(docs[0].get("spec", {}), dict)):
                    errors.append("data.mesh.yaml: not one MeshConfig document "
                                  "(apiVersion mesh.config/v1alpha1, kind MeshConfig, spec a mapping)")
    return errors


def name_of(doc):
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") or (meta.get("generateName", "") + "*") if meta else "?"
    ns = meta.get("namespace")
    return "%s %s" % (doc.get("kind", "?"), "%s/%s" % (ns, name) if ns else name)


def check(doc):
    """(errors, what it was validated against, items of a List)"""
    if isinstance(doc, Unreadable):
        return ["not YAML: %s" % doc], None, None
    if not isinstance(doc, dict):
        return ["not a mapping"], None, None
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind must be strings"], None, None
    group, _ = group_version(api_version)
    crd = crds.get((group, kind))
    listed = next((c for (g, _), c in crds.items() if g == group and c["list"] == kind), None)
    if api_version == "v1" and kind == "List" or listed:
        items = doc.get("items")
        if not isinstance(items, list):
            return ["items: a %s needs a list of items" % kind], None, None
        return [], "list", items
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
        return ["metadata.name: required"], None, None
    if crd:
        errors, what = custom_resource(doc, crd)
    elif group in crd_groups or group.endswith(".istio.io"):
        hint = ""
        if (group, kind) in (("authentication.istio.io", "MeshPolicy"), ("authentication.istio.io", "Policy")):
            hint = " (gone since Istio 1.6: a PeerAuthentication, in istio-system for the whole mesh)"
        return ["%s %s: no CRD here defines this kind%s" % (api_version, kind, hint)], None, None
    else:
        errors, what = k8s_schema(doc)
    return errors + extra_checks(doc), what, None


# ---------------------------------------------------------------- run
files = list(expand(sys.argv[1:]))
for path, docs, problem in files:
    for doc in docs or []:
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition" \
                and str(doc.get("apiVersion", "")).startswith("apiextensions.k8s.io/"):
            learn_crd(doc)

for note in notes:
    print("note: " + note)
valid = invalid = 0
bad_files = 0
for path, docs, problem in files:
    if problem:
        print("INVALID %s: %s" % (display(path), problem))
        bad_files += 1
        continue
    queue = [(str(i), d) for i, d in enumerate(docs, 1) if d is not None]
    while queue:
        label, doc = queue.pop(0)
        errors, what, items = check(doc)
        where = "%s: document %s" % (display(path), label)
        if isinstance(doc, dict):
            where += " (%s)" % name_of(doc)
        if items is not None:
            queue[0:0] = [("%s item %d" % (label, j), d) for j, d in enumerate(items, 1)]
            continue
        if errors:
            invalid += 1
            for e in errors:
                print("INVALID %s: %s" % (where, e))
        else:
            valid += 1
            print("ok      %s: %s" % (where, what))

total = valid + invalid
print("validate.sh: %d document%s in %d file%s: %d valid, %d invalid%s; Kubernetes %s%s, kubernetes-validate %s"
      % (total, "" if total == 1 else "s", len(files), "" if len(files) == 1 else "s", valid, invalid,
         ", %d unreadable file%s" % (bad_files, "" if bad_files == 1 else "s") if bad_files else "",
         vstr(k8s), " strict" if strict else "", kubernetes_validate.__version__))
sys.exit(1 if invalid or bad_files else 0)
PY

exec "$python" -c "$program" "${paths[@]}"
