#!/usr/bin/env python3
"""Checks the gateway's configuration as the rendered manifests deliver it (run by
deploy/check.sh).

Usage: check-config.py RENDERED.yaml ROOT OUT.toml

- Takes idgate.toml out of the idgate-config ConfigMap and spiffe-helper's helper.conf
  out of idgate-spiffe-helper.
- Checks that every file the configuration names is under a volume mounted into the
  gateway container, that the spiffe-helper sidecar writes the SVID, key and bundle at
  the paths the configuration reads, and that every secret file under the secrets volume
  is written by the secret-files init container.
- Writes OUT.toml: the configuration with every file it reads moved under ROOT, and each
  `vault:` reference replaced by a `file:` reference (`idgate check` would otherwise need
  a live Vault), and prints one line per file that `idgate check` will read, as
  "KIND PATH" (KIND: svid_cert, svid_key, bundle, ca, secret), for the caller to create.
"""

import re
import sys
import tomllib

import yaml


def fail(message):
    print(f"deploy/check: {message}", file=sys.stderr)
    sys.exit(1)


def config_map(objects, prefix, key):
    """The data under key of the one ConfigMap named prefix-<hash>."""
    found = [
        o
        for o in objects
        if o.get("kind") == "ConfigMap"
        and re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]+)?", o["metadata"]["name"])
    ]
    if len(found) != 1:
        fail(f"expected one ConfigMap {prefix}, found {len(found)}")
    data = found[0].get("data", {})
    if key not in data:
        fail(f"ConfigMap {prefix} has no key {key}")
    return data[key]


def helper_conf(text):
    """spiffe-helper's HCL, for the flat `key = "value"` settings used here."""
    return dict(re.findall(r'^\s*([a-z_]+)\s*=\s*"([^"]*)"', text, re.MULTILINE))


def pod_spec(objects, kind, name):
    for o in objects:
        if o.get("kind") == kind and o["metadata"]["name"] == name:
            return o["spec"]["template"]["spec"]
    fail(f"no {kind} {name}")


def container(spec, name, init=False):
    for c in spec.get("initContainers" if init else "containers", []):
        if c["name"] == name:
            return c
    fail(f"no container {name}")


def secret_paths(value):
    """The files a secret reference reads: file:PATH, and a pkcs11: URI's pin-source."""
    if value.startswith("file:"):
        return [value[len("file:") :]]
    if value.startswith("pkcs11:"):
        return re.findall(r"pin-source=file:([^&]+)", value)
    return []


def files_read(config):
    """(KIND, PATH, KEY) for every file the configuration makes the gateway read."""
    files = []
    identity = config["identity"]
    files.append(("svid_cert", identity["svid_cert"], "identity.svid_cert"))
    files.append(("svid_key", identity["svid_key"], "identity.svid_key"))
    for i, tb in enumerate(identity.get("trust_bundles", [])):
        files.append(("bundle", tb["bundle"], f"identity.trust_bundles[{i}].bundle"))
    state = config.get("state", {})
    if "ca" in state:
        files.append(("ca", state["ca"], "state.ca"))
    if "password" in state:
        files += [("secret", p, "state.password") for p in secret_paths(state["password"])]
    vault = config.get("vault", {})
    if "ca" in vault:
        files.append(("ca", vault["ca"], "vault.ca"))
    for key in ("role_id", "secret_id"):
        for p in secret_paths(vault.get("approle", {}).get(key, "")):
            files.append(("secret", p, f"vault.approle.{key}"))
    for p in secret_paths(vault.get("token", "")):
        files.append(("secret", p, "vault.token"))
    for i, up in enumerate(config.get("upstreams", [])):
        if "ca" in up:
            files.append(("ca", up["ca"], f"upstreams[{i}].ca"))
        for key, value in up.get("credential", {}).items():
            if isinstance(value, str):
                for p in secret_paths(value):
                    files.append(("secret", p, f"upstreams[{i}].credential.{key}"))
    return files


def main():
    rendered, root, out = sys.argv[1:4]
    root = root.rstrip("/")
    with open(rendered, encoding="utf-8") as f:
        objects = [o for o in yaml.safe_load_all(f) if o]

    toml_text = config_map(objects, "idgate-config", "idgate.toml")
    config = tomllib.loads(toml_text)
    helper = helper_conf(config_map(objects, "idgate-spiffe-helper", "helper.conf"))

    spec = pod_spec(objects, "Deployment", "idgate")
    gateway = container(spec, "idgate")
    mounts = [m["mountPath"].rstrip("/") for m in gateway.get("volumeMounts", [])]
    copier = " ".join(container(spec, "secret-files", init=True).get("command", []))

    # The SVID files: written by spiffe-helper exactly where the configuration reads them.
    cert_dir = helper.get("cert_dir", "").rstrip("/")
    identity = config["identity"]
    expected = {
        "identity.svid_cert": (identity["svid_cert"], "svid_file_name"),
        "identity.svid_key": (identity["svid_key"], "svid_key_file_name"),
    }
    for key, (path, setting) in expected.items():
        written = f"{cert_dir}/{helper.get(setting, '')}"
        if path != written:
            fail(f"{key} = {path} is not where spiffe-helper writes it ({written}, {setting})")
    bundle = f"{cert_dir}/{helper.get('svid_bundle_file_name', '')}"
    if bundle not in [tb["bundle"] for tb in identity.get("trust_bundles", [])]:
        fail(f"no identity.trust_bundles entry reads spiffe-helper's bundle {bundle}")

    files = files_read(config)
    for kind, path, key in files:
        if not path.startswith("/"):
            fail(f"{key} = {path}: give absolute paths in the pod's configuration")
        if not any(path == m or path.startswith(m + "/") for m in mounts):
            fail(f"{key} = {path} is on no volume mounted into the idgate container")
        if kind == "secret" and path.startswith("/run/idgate/secrets/") and path not in copier:
            fail(f"{key} = {path} is not written by the secret-files init container")

    # The variant for `idgate check`: every absolute path under ROOT, and vault:
    # references read from files, since checking them needs a live Vault.
    variant = toml_text
    for path in {path for _, path, _ in files}:
        variant = re.sub(r'(?<=[":])' + re.escape(path) + r'(?=["&])', root + path, variant)
    vault_refs = re.findall(r'"vault:([^"#]+)#([^"]+)"', variant)
    for i, (location, field) in enumerate(vault_refs):
        path = f"{root}/run/idgate/secrets/vault-{i}-{field}"
        variant = variant.replace(f'"vault:{location}#{field}"', f'"file:{path}"', 1)
        files.append(("secret", f"/run/idgate/secrets/vault-{i}-{field}", "vault reference"))
    with open(out, "w", encoding="utf-8") as f:
        f.write(variant)

    for kind, path, _ in files:
        print(kind, f"{root}{path}")


if __name__ == "__main__":
    main()
