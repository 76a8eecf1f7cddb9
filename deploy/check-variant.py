#!/usr/bin/env python3
"""Holds deploy/kubernetes-audit to deploy/kubernetes (run by deploy/check.sh).

Usage: check-variant.py BASE.yaml VARIANT.yaml

The variant with the audit trail repeats the gateway's pod (a StatefulSet cannot borrow a
Deployment's template) and its configuration (a ConfigMap generator cannot add to another
directory's file). This checks that the copies do not drift:

- the variant's idgate.toml is the base's plus [audit] (and [siem], [incidents], which need
  it), and the base's has no [audit];
- the StatefulSet's pod is the Deployment's, but for what the trail needs: volumes,
  mounts and secret-files lines of its own, a longer terminationGracePeriodSeconds,
  fsGroupChangePolicy, and no matchLabelKeys (pod-template-hash is a Deployment's label).
"""

import re
import sys
import tomllib

import yaml

# What only the trail adds to the configuration.
AUDIT_SECTIONS = ("audit", "siem", "incidents")


def fail(message):
    print(f"deploy/check: {message}", file=sys.stderr)
    sys.exit(1)


def load(path):
    with open(path, encoding="utf-8") as f:
        return [o for o in yaml.safe_load_all(f) if o]


def one(objects, kind, name):
    found = [o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        fail(f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def config(objects):
    maps = [
        o
        for o in objects
        if o.get("kind") == "ConfigMap"
        and re.fullmatch(r"idgate-config-[a-z0-9]+", o["metadata"]["name"])
    ]
    if len(maps) != 1:
        fail(f"expected one ConfigMap idgate-config, found {len(maps)}")
    return tomllib.loads(maps[0]["data"]["idgate.toml"])


def unhashed(name):
    """A generated ConfigMap's name without its content hash, which differs by design."""
    return re.sub(r"^(idgate-config)-[a-z0-9]+$", r"\1", name)


def mount_id(m):
    return (m["name"], m["mountPath"], m.get("subPath"))


def normalized(spec, base_spec):
    """The pod spec without what the trail may add or change, as far as base_spec has it."""
    spec = yaml.safe_load(yaml.safe_dump(spec))  # a deep copy
    spec.pop("terminationGracePeriodSeconds", None)
    spec.get("securityContext", {}).pop("fsGroupChangePolicy", None)
    for constraint in spec.get("topologySpreadConstraints", []):
        constraint.pop("matchLabelKeys", None)
    base_volumes = {v["name"] for v in base_spec.get("volumes", [])}
    spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] in base_volumes]
    for v in spec["volumes"]:
        if "configMap" in v:
            v["configMap"]["name"] = unhashed(v["configMap"]["name"])
    for field in ("initContainers", "containers"):
        base = {c["name"]: c for c in base_spec.get(field, [])}
        for c in spec.get(field, []):
            b = base.get(c["name"])
            if b is None:
                continue
            ids = {mount_id(m) for m in b.get("volumeMounts", [])}
            c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if mount_id(m) in ids]
            # A shell script's own lines: the copies the trail adds are extra lines.
            command, base_command = c.get("command"), b.get("command")
            if command and base_command and len(command) == len(base_command):
                lines = set(b["command"][-1].splitlines())
                script = [line for line in c["command"][-1].splitlines() if line in lines]
                c["command"][-1] = "\n".join(script) + "\n"
    return spec


def first_difference(a, b, path=""):
    """The path of the first place a and b differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}.{key}"
            found = first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} (the lists differ in length)"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else path


def main():
    base_objects, variant_objects = load(sys.argv[1]), load(sys.argv[2])

    base_config, variant_config = config(base_objects), config(variant_objects)
    if "audit" in base_config:
        fail("deploy/kubernetes/idgate.toml has [audit]: the Deployment has no volume of "
             "its own per replica for it; the trail belongs in deploy/kubernetes-audit")
    if "audit" not in variant_config:
        fail("deploy/kubernetes-audit/idgate.toml has no [audit]")
    rest = {k: v for k, v in variant_config.items() if k not in AUDIT_SECTIONS}
    difference = first_difference(base_config, rest)
    if difference:
        fail("deploy/kubernetes-audit/idgate.toml differs from deploy/kubernetes/idgate.toml"
             f" at {difference.lstrip('.')}: only {', '.join(AUDIT_SECTIONS)} may differ")

    base = one(base_objects, "Deployment", "idgate")
    variant = one(variant_objects, "StatefulSet", "idgate")
    if base["spec"].get("replicas") != variant["spec"].get("replicas"):
        fail("the StatefulSet idgate runs another number of replicas than the Deployment")
    base_spec = base["spec"]["template"]["spec"]
    variant_spec = variant["spec"]["template"]["spec"]
    if variant_spec.get("terminationGracePeriodSeconds", 30) < base_spec.get(
        "terminationGracePeriodSeconds", 30
    ):
        fail("the StatefulSet idgate gives its pods less time to stop than the Deployment: "
             "the trail's close comes on top of the drain")
    if base["spec"]["template"]["metadata"] != variant["spec"]["template"]["metadata"]:
        fail("the StatefulSet idgate labels its pods otherwise than the Deployment")
    difference = first_difference(normalized(base_spec, base_spec),
                                  normalized(variant_spec, base_spec))
    if difference:
        fail("the pod of StatefulSet idgate (deploy/kubernetes-audit/statefulset.yaml) "
             f"differs from the Deployment's at spec.template.spec{difference}: only what "
             "the audit trail needs may differ")


if __name__ == "__main__":
    main()
