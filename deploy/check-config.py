#!/usr/bin/env python3
"""Checks the gateway's configuration as the rendered manifests deliver it (run by
deploy/check.sh).

Usage: check-config.py RENDERED.yaml ROOT OUT.toml

- Takes idgate.toml out of the idgate-config ConfigMap, and the gateway's pod out of the
  one workload named idgate (the Deployment of deploy/kubernetes, the StatefulSet of
  deploy/kubernetes-audit).
- Checks that every container image is pinned by digest (`@sha256:` and 64 hex digits,
  or the templates' placeholder `@sha256:REPLACE-WITH-DIGEST`, reported on standard
  error).
- Checks that the SPIFFE Workload API socket the gateway connects to (`[identity]
  workload_api`, or the container's SPIFFE_ENDPOINT_SOCKET) lies in a volume mounted into
  the gateway container from the SPIFFE CSI driver (or a hostPath), that every file the
  configuration names is under a volume mounted into the gateway container, and that
  every secret file under the secrets volume is written by the secret-files init
  container.
- Checks that every directory the configuration writes to (`[audit] dir`, the
  directories of `[siem]` file sinks, `[incidents] dir`, the directory of a redb `[state]
  path`) is on a writable mount of the gateway container, never on its read-only root
  filesystem nor on a ConfigMap, Secret or read-only volume: `idgate check` opens none of
  them, so only the running gateway would find out, and fail. What must outlive the pod
  and belongs to one gateway (the trail, the incidents, the redb file) must be on a
  persistent volume of that replica's own: a StatefulSet's volumeClaimTemplates, or a
  PersistentVolumeClaim of a single replica.
- Writes OUT.toml: the configuration with every file it reads or directory it writes
  moved under ROOT, each `vault:` reference replaced by a `file:` reference (`idgate
  check` would otherwise need a live Vault), and the container's SPIFFE_ENDPOINT_SOCKET
  written in as `workload_api` when the file relies on it (`idgate check` checks the
  address and connects to no agent). Prints one line per file that `idgate check` will
  read, or directory to make, as "KIND PATH" (KIND: svid_cert, svid_key, bundle, ca,
  secret, cert, key, audit_signing_key, audit_public_key, audit_encryption_key, dir), for
  the caller to create.

The secret references of [[webhooks]], [masking], [token_endpoint] and fallbacks are not
given placeholders: a configuration that uses them fails `idgate check` here (the file
is missing) rather than passing unchecked.
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


# The kinds the gateway's pods may be run by.
GATEWAY_WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def workload(objects, name):
    """The one Deployment or StatefulSet named name."""
    found = [
        o
        for o in objects
        if o.get("kind") in GATEWAY_WORKLOAD_KINDS and o["metadata"]["name"] == name
    ]
    if len(found) != 1:
        fail(f"expected one Deployment or StatefulSet {name}, found {len(found)}")
    return found[0]


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


def secret_files(value, key, kind="secret"):
    """(KIND, PATH, KEY) for the files a secret reference reads: a file: reference's file
    is of kind (a key with a format of its own), a pkcs11: PIN file is a plain secret. A
    vault: reference comes back whole in place of PATH, for main to replace by a file."""
    if value.startswith("file:"):
        return [(kind, value[len("file:") :], key)]
    if value.startswith("vault:"):
        return [(kind, value, key)]
    return [("secret", p, key) for p in secret_paths(value)]


def audit_enabled(config):
    """The [audit] table when the trail is on: enabled = false leaves the rest unchecked
    but for its syntax, and the gateway reads none of it."""
    audit = config.get("audit")
    if audit is None or audit.get("enabled", True) is False:
        return None
    return audit


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
        files += secret_files(state["password"], "state.password")
    vault = config.get("vault", {})
    if "ca" in vault:
        files.append(("ca", vault["ca"], "vault.ca"))
    for key in ("role_id", "secret_id"):
        files += secret_files(vault.get("approle", {}).get(key, ""), f"vault.approle.{key}")
    files += secret_files(vault.get("token", ""), "vault.token")
    for i, up in enumerate(config.get("upstreams", [])):
        if "ca" in up:
            files.append(("ca", up["ca"], f"upstreams[{i}].ca"))
        for key, value in up.get("credential", {}).items():
            if isinstance(value, str):
                files += secret_files(value, f"upstreams[{i}].credential.{key}")
    audit = audit_enabled(config)
    if audit is not None:
        if "signing_key" in audit:
            files += secret_files(
                audit["signing_key"], "audit.signing_key", "audit_signing_key"
            )
        for i, path in enumerate(audit.get("public_keys", [])):
            files.append(("audit_public_key", path, f"audit.public_keys[{i}]"))
        if "encryption_key" in audit:
            files += secret_files(
                audit["encryption_key"], "audit.encryption_key", "audit_encryption_key"
            )
        for i, value in enumerate(audit.get("previous_encryption_keys", [])):
            files += secret_files(
                value, f"audit.previous_encryption_keys[{i}]", "audit_encryption_key"
            )
    for i, sink in enumerate(config.get("siem", {}).get("sinks", [])):
        key = f"siem.sinks[{i}]"
        if "ca" in sink:
            files.append(("ca", sink["ca"], f"{key}.ca"))
        if "client_cert" in sink:
            files.append(("cert", sink["client_cert"], f"{key}.client_cert"))
        if "client_key" in sink:
            files.append(("key", sink["client_key"], f"{key}.client_key"))
    notify = config.get("incidents", {}).get("notify", {})
    if "secret" in notify:
        files += secret_files(notify["secret"], "incidents.notify.secret")
    if "ca" in notify:
        files.append(("ca", notify["ca"], "incidents.notify.ca"))
    api_keys = config.get("api_keys", {})
    if "pepper" in api_keys:
        files += secret_files(api_keys["pepper"], "api_keys.pepper")
    if "store" in api_keys:
        # Read by the gateway, written by `idgate keys`; a store that does not exist yet
        # holds no keys, but its directory must.
        files.append(("dir", parent(api_keys["store"]), "api_keys.store"))
    return files


def parent(path):
    return path.rstrip("/").rsplit("/", 1)[0] or "/"


def dirs_written(config):
    """(KEY, DIRECTORY, KEPT) for every directory the configuration makes the gateway
    write into. KEPT: what it writes there must outlive the pod and belongs to one
    gateway (one trail per directory; incidents and a redb file are one process's)."""
    dirs = []
    audit = audit_enabled(config)
    if audit is not None and "dir" in audit:
        dirs.append(("audit.dir", audit["dir"], True))
    for i, sink in enumerate(config.get("siem", {}).get("sinks", [])):
        if sink.get("kind") == "file" and "path" in sink:
            dirs.append((f"siem.sinks[{i}].path", parent(sink["path"]), False))
    incidents = config.get("incidents", {})
    if "dir" in incidents:
        dirs.append(("incidents.dir", incidents["dir"], True))
    state = config.get("state", {})
    if state.get("backend") == "redb" and "path" in state:
        dirs.append(("state.path", parent(state["path"]), True))
    return dirs


# Volumes whose content comes from the API server: read-only in the container whatever
# the mount says.
READ_ONLY_VOLUMES = ("configMap", "secret", "projected", "downwardAPI")


def mount_at(gateway, path):
    """The gateway container's mount that holds path (the deepest), or None."""
    best = None
    for mount in gateway.get("volumeMounts", []):
        at = mount["mountPath"].rstrip("/") or "/"
        if at == "/" or path == at or path.startswith(at + "/"):
            if best is None or len(at) > len(best["mountPath"].rstrip("/")):
                best = mount
    return best


def check_written(work, gateway, key, shown, directory, kept):
    """The directory must be writable in the gateway container, and, when kept, on a
    persistent volume of the replica's own. shown: the key's value, for the messages."""
    kind, name = work["kind"], work["metadata"]["name"]
    spec = work["spec"]["template"]["spec"]
    replicas = work["spec"].get("replicas", 1)
    mount = mount_at(gateway, directory)
    # What to mount where the gateway writes: for what it keeps, a claim per replica.
    remedy = ("mount a persistent volume of each replica's own there (a StatefulSet's "
              "volumeClaimTemplates, as deploy/kubernetes-audit does)" if kept
              else "mount a writable volume there")
    if mount is None:
        if gateway.get("securityContext", {}).get("readOnlyRootFilesystem"):
            fail(f"{key} = {shown} is on the idgate container's read-only root "
                 f"filesystem: the gateway could not write there; {remedy}")
        if kept:
            fail(f"{key} = {shown} is on the idgate container's own filesystem, lost "
                 f"with the container: {remedy}")
        return
    at = mount["mountPath"]
    if mount.get("readOnly"):
        fail(f"{key} = {shown} is on volume {mount['name']}, mounted read-only at {at}")
    claims = work["spec"].get("volumeClaimTemplates", [])
    templates = {t["metadata"]["name"]: t for t in claims}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if mount["name"] in templates:
        modes = templates[mount["name"]].get("spec", {}).get("accessModes", [])
        if modes == ["ReadOnlyMany"]:
            fail(f"{key} = {shown} is on claim template {mount['name']}, ReadOnlyMany")
        return
    volume = volumes.get(mount["name"])
    if volume is None:
        fail(f"{key} = {shown}: volume {mount['name']} mounted at {at} is not defined")
    source = next((k for k in volume if k != "name"), None)
    if source is None:
        fail(f"{key} = {shown}: volume {mount['name']} mounted at {at} has no source")
    if source in READ_ONLY_VOLUMES:
        fail(f"{key} = {shown} is on volume {mount['name']}, a {source}: read-only")
    settings = volume[source] or {}
    if settings.get("readOnly"):
        fail(f"{key} = {shown} is on volume {mount['name']}, a read-only {source}")
    if not kept:
        return
    if source == "persistentVolumeClaim":
        if replicas == 1:
            return
        fail(f"{key} = {shown} is on PersistentVolumeClaim {settings.get('claimName')}, "
             f"which the {replicas} replicas of {kind} {name} would share, where each "
             f"gateway needs a directory of its own: {remedy}")
    fail(f"{key} = {shown} is on volume {mount['name']}, a {source}, which does not "
         "outlive the pod: every rollout would lose what is written there (the audit "
         f"trail's chain with it); {remedy}")


# Every pod-running kind whose containers are checked for pinned images.
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PLACEHOLDER_DIGEST = "@sha256:REPLACE-WITH-DIGEST"


def pod_specs(objects):
    for o in objects:
        kind = o.get("kind")
        if kind == "Pod":
            yield o, o["spec"]
        elif kind in POD_TEMPLATE_KINDS:
            yield o, o["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def check_images(objects):
    """Every image pinned by digest: a tag can be moved to other content, and these
    containers hold the gateway's secrets. Returns the images that carry the templates'
    placeholder digest."""
    placeholders = []
    for o, spec in pod_specs(objects):
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            image = c.get("image", "")
            where = f"{o['kind']} {o['metadata']['name']}, container {c['name']}"
            if image.endswith(PLACEHOLDER_DIGEST):
                placeholders.append(image)
            elif not DIGEST.search(image):
                fail(f"{where}: image {image} is not pinned by digest: give it as "
                     "NAME:TAG@sha256:DIGEST (docs/deployment.md, step 4)")
    return placeholders


def main():
    rendered, root, out = sys.argv[1:4]
    root = root.rstrip("/")
    with open(rendered, encoding="utf-8") as f:
        objects = [o for o in yaml.safe_load_all(f) if o]

    placeholders = check_images(objects)

    toml_text = config_map(objects, "idgate-config", "idgate.toml")
    config = tomllib.loads(toml_text)

    work = workload(objects, "idgate")
    spec = work["spec"]["template"]["spec"]
    gateway = container(spec, "idgate")
    mounts = [m["mountPath"].rstrip("/") for m in gateway.get("volumeMounts", [])]
    copier = " ".join(container(spec, "secret-files", init=True).get("command", []))

    socket = workload_api_socket(config, gateway)
    if socket is not None:
        check_socket_volume(spec, gateway, *socket)

    files = files_read(config)
    # vault: references are read from placeholder files instead: checking them needs a
    # live Vault.
    vault_refs = [(kind, ref) for kind, ref, _ in files if ref.startswith("vault:")]
    files = [f for f in files if not f[1].startswith("vault:")]
    for kind, path, key in files:
        if not path.startswith("/"):
            fail(f"{key} = {path}: give absolute paths in the pod's configuration")
        if not any(path == m or path.startswith(m + "/") for m in mounts):
            fail(f"{key} = {path} is on no volume mounted into the idgate container")
        if path.startswith("/run/idgate/secrets/") and path not in copier:
            fail(f"{key} = {path} is not written by the secret-files init container")

    written = dirs_written(config)
    for key, directory, kept in written:
        if not directory.startswith("/"):
            fail(f"{key} = {directory}: give absolute paths in the pod's configuration")
        check_written(work, gateway, key, value_at(config, key), directory, kept)

    # The variant for `idgate check`: every absolute path under ROOT, and vault:
    # references read from files of the same kind.
    variant = toml_text
    # A directory as the file names it: the key store's, a sink's or redb's file.
    paths = {value_at(config, key) if kind == "dir" else path for kind, path, key in files}
    paths |= {value_at(config, key) for key, _, _ in written}
    for path in paths:
        variant = re.sub(r'(?<=[":])' + re.escape(path) + r'(?=["&])', root + path, variant)
    files += [("dir", directory, key) for key, directory, _ in written]
    for i, (kind, ref) in enumerate(vault_refs):
        path = f"/run/idgate/secrets/vault-{i}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ref[-40:])
        variant = variant.replace(f'"{ref}"', f'"file:{root}{path}"')
        files.append((kind, path, "vault reference"))
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

    if placeholders:
        print(f"deploy/check: {len(placeholders)} images carry the placeholder digest "
              f"{PLACEHOLDER_DIGEST[1:]}: pin them before applying (docs/deployment.md, "
              "step 4)", file=sys.stderr)
    for kind, path, _ in files:
        print(kind, f"{root}{path}")


def value_at(config, key):
    """The configuration's value at a key such as "siem.sinks[0].path"."""
    value = config
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    return value


if __name__ == "__main__":
    main()
