#!/usr/bin/env python3
"""Checks the gateway's configuration as the rendered manifests deliver it (run by
deploy/check.sh).

Usage: check-config.py RENDERED.yaml ROOT OUT.toml

- Takes idgate.toml out of the idgate-config ConfigMap.
- Checks that the SPIFFE Workload API socket the gateway connects to (`[identity]
  workload_api`, or the container's SPIFFE_ENDPOINT_SOCKET) lies in a volume mounted into
  the gateway container from the SPIFFE CSI driver (or a hostPath), that every file the
  configuration names is under a volume mounted into the gateway container, and that
  every secret file under the secrets volume is written by the secret-files init
  container.
- Writes OUT.toml: the configuration with every file it reads moved under ROOT, each
  `vault:` reference replaced by a `file:` reference (`idgate check` would otherwise need
  a live Vault), and the container's SPIFFE_ENDPOINT_SOCKET written in as `workload_api`
  when the file relies on it (`idgate check` checks the address and connects to no
  agent). Prints one line per file that `idgate check` will read, as "KIND PATH" (KIND:
  svid_cert, svid_key, bundle, ca, secret), for the caller to create.
"""

import re
import sys
import tomllib
from urllib.parse import urlsplit

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


# The drivers that deliver a SPIFFE Workload API socket as a CSI ephemeral volume.
WORKLOAD_API_CSI_DRIVERS = {"csi.spiffe.io"}


def workload_api_socket(config, gateway):
    """(KEY, PATH) of the Workload API socket the gateway uses, or None with SVID files.

    The configuration's `identity.workload_api` first; without it and without SVID files,
    the SPIFFE_ENDPOINT_SOCKET of the gateway container, as the gateway itself falls back.
    """
    identity = config["identity"]
    key, address = "identity.workload_api", identity.get("workload_api")
    if address is None:
        if "svid_cert" in identity or "svid_key" in identity:
            return None
        env = {e["name"]: e.get("value") for e in gateway.get("env", [])}
        key, address = "SPIFFE_ENDPOINT_SOCKET", env.get("SPIFFE_ENDPOINT_SOCKET")
        if address is None:
            fail("[identity] names no workload_api nor svid_cert/svid_key, and the idgate "
                 "container sets no SPIFFE_ENDPOINT_SOCKET")
    named = [k for k in ("svid_cert", "svid_key", "trust_bundles") if k in identity]
    if named:
        fail(f"{key} and identity.{', identity.'.join(named)} are exclusive: the SVID and "
             "bundles come from the Workload API or from files, not both")
    uri = urlsplit(address)
    if uri.scheme != "unix" or uri.netloc or not uri.path.startswith("/"):
        fail(f'{key} = "{address}": give the socket as unix:///absolute/path')
    return key, uri.path


def check_socket_volume(spec, gateway, key, socket):
    """The socket's directory must be a volume that brings the agent's socket in."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    directory = socket.rsplit("/", 1)[0] or "/"
    for mount in gateway.get("volumeMounts", []):
        if mount["mountPath"].rstrip("/") != directory or "subPath" in mount:
            continue
        volume = volumes.get(mount["name"], {})
        if volume.get("csi", {}).get("driver") in WORKLOAD_API_CSI_DRIVERS:
            return
        if "hostPath" in volume:
            return
        fail(f"{key}: {directory} is mounted from volume {mount['name']}, which is not "
             f"the SPIFFE CSI driver ({', '.join(sorted(WORKLOAD_API_CSI_DRIVERS))}) "
             "nor a hostPath of the agent's socket directory")
    fail(f"{key} = {socket}: no volume is mounted at {directory} in the idgate container")


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
    if "svid_cert" in identity:
        files.append(("svid_cert", identity["svid_cert"], "identity.svid_cert"))
    if "svid_key" in identity:
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

    spec = pod_spec(objects, "Deployment", "idgate")
    gateway = container(spec, "idgate")
    mounts = [m["mountPath"].rstrip("/") for m in gateway.get("volumeMounts", [])]
    copier = " ".join(container(spec, "secret-files", init=True).get("command", []))

    socket = workload_api_socket(config, gateway)
    if socket is not None:
        check_socket_volume(spec, gateway, *socket)

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
    if socket is not None and socket[0] == "SPIFFE_ENDPOINT_SOCKET":
        # `idgate check` runs without the container's environment: the address it would
        # take from SPIFFE_ENDPOINT_SOCKET is written into [identity] instead. It checks
        # the address and connects to nothing.
        variant, replaced = re.subn(
            r"^\[identity\][ \t]*$",
            lambda _: f'[identity]\nworkload_api = "unix://{socket[1]}"',
            variant,
            count=1,
            flags=re.MULTILINE,
        )
        if not replaced:
            fail("no [identity] table header to put the Workload API address under")
    with open(out, "w", encoding="utf-8") as f:
        f.write(variant)

    for kind, path, _ in files:
        print(kind, f"{root}{path}")


if __name__ == "__main__":
    main()
