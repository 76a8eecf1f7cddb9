#!/usr/bin/env python3
"""Tests of check-config.py and check-variant.py (run by deploy/check.sh).

Usage: check-config-test.py BASE.yaml VARIANT.yaml

BASE.yaml and VARIANT.yaml are deploy/kubernetes and deploy/kubernetes-audit rendered.
Each test changes one thing in them, as an operator might, and runs the check on the
result as deploy/check.sh does: the manifests as shipped must pass, and each change
that would break the running gateway must be refused, with a message that names it.
"""

import copy
import os
import re
import subprocess
import sys
import tempfile
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RENDERED = {}


def rendered(which):
    return copy.deepcopy(RENDERED[which])


def find(objects, kind, name):
    for o in objects:
        named = re.fullmatch(re.escape(name) + r"(-[a-z0-9]+)?", o["metadata"]["name"])
        if o.get("kind") == kind and named:
            return o
    raise AssertionError(f"no {kind} {name}")


def pod(objects, kind):
    return find(objects, kind, "idgate")["spec"]["template"]["spec"]


def gateway(objects, kind):
    return next(c for c in pod(objects, kind)["containers"] if c["name"] == "idgate")


def add_config(objects, text):
    data = find(objects, "ConfigMap", "idgate-config")["data"]
    data["idgate.toml"] += "\n" + text


class Checked:
    def __init__(self, result):
        self.code, self.stderr = result.returncode, result.stderr


def dump(objects, directory, name):
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(objects, f)
    return path


def check_config(objects):
    with tempfile.TemporaryDirectory() as d:
        rendered_path = dump(objects, d, "rendered.yaml")
        return Checked(subprocess.run(
            [sys.executable, os.path.join(HERE, "check-config.py"), rendered_path,
             os.path.join(d, "root"), os.path.join(d, "idgate.toml")],
            capture_output=True, text=True, timeout=60, check=False,
        ))


def check_variant(base, variant):
    with tempfile.TemporaryDirectory() as d:
        return Checked(subprocess.run(
            [sys.executable, os.path.join(HERE, "check-variant.py"),
             dump(base, d, "base.yaml"), dump(variant, d, "variant.yaml")],
            capture_output=True, text=True, timeout=60, check=False,
        ))


class CheckConfig(unittest.TestCase):
    def assert_refused(self, checked, *words):
        self.assertNotEqual(checked.code, 0, "the check passed")
        for word in words:
            self.assertIn(word, checked.stderr)

    def assert_passes(self, checked):
        self.assertEqual(checked.code, 0, checked.stderr)

    def test_the_shipped_manifests_pass(self):
        self.assert_passes(check_config(rendered("base")))
        self.assert_passes(check_config(rendered("variant")))
        self.assert_passes(check_variant(rendered("base"), rendered("variant")))

    def test_an_audit_dir_on_the_read_only_root_filesystem_is_refused(self):
        objects = rendered("base")
        add_config(objects, '[audit]\ndir = "/var/lib/idgate/audit"\n'
                            'signing_key = "vault:secret/idgate/audit#signing_key"\n')
        self.assert_refused(check_config(objects), "audit.dir", "read-only root filesystem")

    def test_an_incidents_dir_on_the_read_only_root_filesystem_is_refused(self):
        objects = rendered("base")
        add_config(objects, '[incidents]\ndir = "/var/lib/idgate/incidents"\n')
        self.assert_refused(check_config(objects), "incidents.dir", "read-only root filesystem")

    def test_a_siem_file_sink_on_a_secret_volume_is_refused(self):
        objects = rendered("variant")
        gateway(objects, "StatefulSet")["volumeMounts"].append(
            {"name": "redis-ca", "mountPath": "/var/log/idgate"})
        add_config(objects, '[siem]\n[[siem.sinks]]\nkind = "file"\n'
                            'path = "/var/log/idgate/audit.jsonl"\n')
        self.assert_refused(check_config(objects), "siem.sinks[0].path", "a secret: read-only")

    def test_a_siem_file_sink_on_a_read_only_mount_is_refused(self):
        objects = rendered("variant")
        add_config(objects, '[siem]\n[[siem.sinks]]\nkind = "file"\n'
                            'path = "/run/idgate/secrets/audit.jsonl"\n')
        self.assert_refused(check_config(objects), "siem.sinks[0].path", "mounted read-only")

    def test_a_siem_file_sink_on_a_writable_empty_dir_passes(self):
        objects = rendered("variant")
        pod(objects, "StatefulSet")["volumes"].append({"name": "siem", "emptyDir": {}})
        gateway(objects, "StatefulSet")["volumeMounts"].append(
            {"name": "siem", "mountPath": "/var/log/idgate"})
        add_config(objects, '[siem]\n[[siem.sinks]]\nkind = "file"\n'
                            'path = "/var/log/idgate/audit.jsonl"\n')
        self.assert_passes(check_config(objects))

    def test_an_audit_dir_on_an_empty_dir_is_refused_as_lost_at_every_rollout(self):
        objects = rendered("base")
        pod(objects, "Deployment")["volumes"].append({"name": "data", "emptyDir": {}})
        gateway(objects, "Deployment")["volumeMounts"].append(
            {"name": "data", "mountPath": "/var/lib/idgate"})
        add_config(objects, '[audit]\ndir = "/var/lib/idgate/audit"\n'
                            'signing_key = "vault:secret/idgate/audit#signing_key"\n')
        self.assert_refused(check_config(objects), "audit.dir", "emptyDir", "does not outlive")

    def test_an_audit_dir_on_a_claim_the_replicas_share_is_refused(self):
        objects = rendered("base")
        pod(objects, "Deployment")["volumes"].append(
            {"name": "data", "persistentVolumeClaim": {"claimName": "idgate-data"}})
        gateway(objects, "Deployment")["volumeMounts"].append(
            {"name": "data", "mountPath": "/var/lib/idgate"})
        add_config(objects, '[audit]\ndir = "/var/lib/idgate/audit"\n'
                            'signing_key = "vault:secret/idgate/audit#signing_key"\n')
        self.assert_refused(check_config(objects), "audit.dir", "idgate-data", "3 replicas")

    def test_an_audit_dir_on_the_claim_mounted_read_only_is_refused(self):
        objects = rendered("variant")
        for mount in gateway(objects, "StatefulSet")["volumeMounts"]:
            if mount["name"] == "data":
                mount["readOnly"] = True
        self.assert_refused(check_config(objects), "audit.dir", "mounted read-only")

    def test_a_redb_state_file_outside_any_mount_is_refused(self):
        objects = rendered("variant")
        data = find(objects, "ConfigMap", "idgate-config")["data"]
        data["idgate.toml"] = re.sub(
            r'(?ms)^\[state\]\n.*?(?=^\[vault\])',
            '[state]\nbackend = "redb"\npath = "/var/lib/idgate-state/state.redb"\n\n',
            data["idgate.toml"])
        self.assert_refused(check_config(objects), "state.path", "read-only root filesystem")

    def test_a_secret_file_the_init_container_does_not_copy_is_refused(self):
        objects = rendered("variant")
        init = next(c for c in pod(objects, "StatefulSet")["initContainers"]
                    if c["name"] == "secret-files")
        init["command"][-1] = "\n".join(
            line for line in init["command"][-1].splitlines() if "audit-signing" not in line)
        self.assert_refused(check_config(objects), "audit.signing_key",
                            "not written by the secret-files init container")

    def test_an_image_pinned_by_tag_alone_is_refused(self):
        objects = rendered("base")
        init = pod(objects, "Deployment")["initContainers"][0]
        init["image"] = "docker.io/library/busybox:1.37"
        self.assert_refused(check_config(objects), "busybox:1.37 is not pinned by digest")

    def test_an_image_pinned_by_digest_passes(self):
        objects = rendered("base")
        init = pod(objects, "Deployment")["initContainers"][0]
        init["image"] = "docker.io/library/busybox:1.37@sha256:" + "0" * 64
        self.assert_passes(check_config(objects))

    def test_a_statefulset_pod_that_drifts_from_the_deployment_is_refused(self):
        variant = rendered("variant")
        gateway(variant, "StatefulSet")["readinessProbe"]["periodSeconds"] = 30
        self.assert_refused(check_variant(rendered("base"), variant),
                            "readinessProbe.periodSeconds")

    def test_a_statefulset_without_a_secret_volume_of_the_deployment_is_refused(self):
        variant = rendered("variant")
        spec = pod(variant, "StatefulSet")
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "redis-ca"]
        self.assert_refused(check_variant(rendered("base"), variant), "volumes")

    def test_a_variant_configuration_that_drifts_from_the_base_is_refused(self):
        variant = rendered("variant")
        data = find(variant, "ConfigMap", "idgate-config")["data"]
        data["idgate.toml"] = data["idgate.toml"].replace('timeout = "50ms"', 'timeout = "5s"')
        self.assert_refused(check_variant(rendered("base"), variant), "state.timeout")

    def test_an_audit_section_in_the_base_configuration_is_refused(self):
        base = rendered("base")
        add_config(base, '[audit]\ndir = "/var/lib/idgate/audit"\n'
                         'signing_key = "vault:secret/idgate/audit#signing_key"\n')
        self.assert_refused(check_variant(base, rendered("variant")),
                            "deploy/kubernetes/idgate.toml has [audit]")

    def test_a_shorter_grace_period_than_the_deployments_is_refused(self):
        variant = rendered("variant")
        pod(variant, "StatefulSet")["terminationGracePeriodSeconds"] = 30
        self.assert_refused(check_variant(rendered("base"), variant), "less time to stop")


def main():
    for which, path in zip(("base", "variant"), sys.argv[1:3]):
        with open(path, encoding="utf-8") as f:
            RENDERED[which] = [o for o in yaml.safe_load_all(f) if o]
    if len(RENDERED) != 2:
        print("usage: check-config-test.py BASE.yaml VARIANT.yaml", file=sys.stderr)
        sys.exit(2)
    unittest.main(argv=sys.argv[:1], verbosity=1)


if __name__ == "__main__":
    main()
