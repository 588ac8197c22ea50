#!/usr/bin/env python3
"""Checks the fields of deploy/'s Kubernetes Jobs and Tekton Tasks that make the sevimage stage safe to run
unprivileged, field by field, with PyYAML: every container or step runs as a non-root user, drops every
capability and adds none, cannot escalate, has a read-only root filesystem, and has TMPDIR on an emptyDir; it
runs `sevimage create` or `rotate` with --json, takes each passphrase from a file on a Secret (never argv or env)
and the tree or image from a volume; the JSON becomes the result (Job: the termination message; Tekton: a
declared result). Prints one line per failure and exits 1 when there is any; prints what it checked otherwise.

    check-deploy.py DEPLOY_DIR
"""
import glob
import os
import re
import shlex
import sys

import yaml

failures = []
checked = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def command_words(text):
    """The words of each command line in a shell script (backslash-newlines joined, comments dropped)."""
    text = text.replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(shlex.split(line, comments=True))
    return lines


def option(words, name):
    for index, word in enumerate(words):
        if word == name and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def under(path, mounts):
    """The mount (path, volume name, readOnly) that holds path, the longest first."""
    best = None
    for mount_path, volume, read_only in mounts:
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            if best is None or len(mount_path) > len(best[0]):
                best = (mount_path, volume, read_only)
    return best


def check_security(where, pod_context, context):
    pod_context = pod_context or {}
    context = context or {}

    def effective(key):
        return context[key] if key in context else pod_context.get(key)

    if effective("runAsNonRoot") is not True:
        fail(where, "runAsNonRoot is not true")
    user = effective("runAsUser")
    if not isinstance(user, int) or user == 0:
        fail(where, f"runAsUser is {user!r}, not a non-zero uid")
    if context.get("allowPrivilegeEscalation") is not False:
        fail(where, "allowPrivilegeEscalation is not false")
    if context.get("privileged") not in (None, False):
        fail(where, "privileged")
    if context.get("readOnlyRootFilesystem") is not True:
        fail(where, "readOnlyRootFilesystem is not true")
    capabilities = context.get("capabilities") or {}
    if capabilities.get("drop") != ["ALL"]:
        fail(where, f"capabilities.drop is {capabilities.get('drop')!r}, not [ALL]")
    if capabilities.get("add"):
        fail(where, f"capabilities.add is {capabilities.get('add')!r}")
    seccomp = effective("seccompProfile") or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        fail(where, "no seccompProfile RuntimeDefault")


def check_env(where, env):
    values = {}
    for variable in env or []:
        if "valueFrom" in variable:
            source = variable["valueFrom"]
            if "secretKeyRef" in source:
                fail(where, f"environment variable {variable['name']} comes from a Secret")
            continue
        values[variable["name"]] = str(variable.get("value", ""))
        if re.search(r"passphrase", variable["name"], re.I) and not values[variable["name"]].startswith(("/", "$(workspaces.")):
            fail(where, f"environment variable {variable['name']} looks like a passphrase, not a path")
    return values


def expand(word, env):
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), word)


def check_command(where, lines, env, mounts, volume_kinds, result_file):
    """lines: the command lines; result_file: where the JSON must go."""
    runs = [words for words in lines if words and words[0].endswith("sevimage") and len(words) > 1]
    if len(runs) != 1:
        fail(where, f"runs sevimage {len(runs)} times, not once")
        return None
    words = [expand(word, env) for word in runs[0]]
    subcommand = words[1]
    if subcommand not in ("create", "rotate"):
        fail(where, f"runs sevimage {subcommand}")
    if "--json" not in words:
        fail(where, "no --json")
    # stdout is redirected to the result file (shlex keeps ">FILE" as one word).
    redirect = [word for word in words if word.startswith(">")]
    if [word[1:] for word in redirect] != [result_file]:
        fail(where, f"stdout goes to {redirect!r}, not >{result_file}")
    secret_options = ["--passphrase-file"] + (["--new-passphrase-file"] if subcommand == "rotate" else [])
    for name in secret_options:
        path = option(words, name)
        if path is None:
            fail(where, f"no {name}")
            continue
        mount = under(path, mounts)
        if mount is None or volume_kinds.get(mount[1]) != "secret" or not mount[2]:
            fail(where, f"{name} {path} is not on a read-only Secret volume")
    for word in words:
        if word.startswith("--passphrase") and "=" in word:
            fail(where, "a passphrase option with = in argv")
    data = option(words, "--rootfs") if subcommand == "create" else words[2]
    mount = under(data or "", mounts)
    if mount is None or volume_kinds.get(mount[1]) in (None, "secret", "emptyDir"):
        fail(where, f"the input {data} is not on a volume")
    elif subcommand == "create" and not mount[2]:
        fail(where, f"the tree {data} is on a writable mount")
    if subcommand == "create":
        output = option(words, "--output") or ""
        mount = under(output, mounts)
        if mount is None or volume_kinds.get(mount[1]) in (None, "secret") or mount[2]:
            fail(where, f"the output {output} is not on a writable volume")
    tmpdir = env.get("TMPDIR")
    mount = under(tmpdir or "", mounts)
    if not tmpdir or mount is None or volume_kinds.get(mount[1]) != "emptyDir":
        fail(where, f"TMPDIR {tmpdir!r} is not an emptyDir")
    return subcommand


def check_job(path, document):
    name = document["metadata"]["name"]
    pod = document["spec"]["template"]["spec"]
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        fail(name, "restartPolicy")
    if pod.get("automountServiceAccountToken") is not False:
        fail(name, "the service account token is mounted")
    volume_kinds = {}
    for volume in pod.get("volumes", []):
        kind = next(key for key in volume if key != "name")
        volume_kinds[volume["name"]] = kind
        if kind == "secret" and volume["secret"].get("defaultMode", 0o644) & 0o007:
            fail(name, f"Secret volume {volume['name']} is readable by others")
    if pod.get("securityContext", {}).get("fsGroup") is None:
        fail(name, "no fsGroup: the volumes may not be writable by the stage's user")
    for container in pod.get("initContainers", []) + pod["containers"]:
        where = f"{path}: job/{name} container {container['name']}"
        check_security(where, pod.get("securityContext"), container.get("securityContext"))
        env = check_env(where, container.get("env"))
        mounts = [(m["mountPath"], m["name"], bool(m.get("readOnly"))) for m in container.get("volumeMounts", [])]
        message = container.get("terminationMessagePath", "/dev/termination-log")
        if container.get("command", [None])[0] not in ("/bin/sh", "sh") or len(container.get("args", [])) != 1:
            fail(where, "not /bin/sh -c SCRIPT")
            continue
        lines = command_words(container["args"][0])
        subcommand = check_command(where, lines, env, mounts, volume_kinds, message)
        if ["cat", message] not in lines:
            fail(where, "the result is not printed to the log")
        checked.append(f"job/{name} {subcommand}")


def check_task(path, document, runs):
    name = document["metadata"]["name"]
    spec = document["spec"]
    workspaces = {w["name"]: w for w in spec.get("workspaces", [])}
    results = {r["name"] for r in spec.get("results", [])}
    volume_kinds = {v["name"]: next(k for k in v if k != "name") for v in spec.get("volumes", [])}
    # What the TaskRuns bind each workspace to: a Secret for the passphrases, a claim for the data.
    bindings = {}
    for run in runs:
        if run["spec"].get("taskRef", {}).get("name") != name:
            continue
        template = run["spec"].get("podTemplate", {}).get("securityContext", {})
        if template.get("runAsNonRoot") is not True or template.get("fsGroup") is None:
            fail(f"taskrun/{run['metadata']['name']}", "podTemplate without runAsNonRoot and fsGroup")
        for binding in run["spec"].get("workspaces", []):
            kind = next(key for key in binding if key not in ("name", "subPath"))
            if kind == "secret" and binding["secret"].get("defaultMode", 0o644) & 0o007:
                fail(f"taskrun/{run['metadata']['name']}", f"Secret workspace {binding['name']} is readable by others")
            bindings.setdefault(binding["name"], set()).add(kind)
    if not bindings:
        fail(name, "no TaskRun in deploy/ binds its workspaces")
    for workspace in workspaces:
        kinds = bindings.get(workspace, set())
        if len(kinds) != 1:
            fail(name, f"workspace {workspace} bound as {sorted(kinds)}")
            continue
        kind = next(iter(kinds))
        volume_kinds["ws-" + workspace] = "secret" if kind == "secret" else ("emptyDir" if kind == "emptyDir" else "volume")
    for step in spec["steps"]:
        where = f"{path}: task/{name} step {step['name']}"
        check_security(where, None, step.get("securityContext"))
        env = check_env(where, step.get("env"))
        for key, value in list(env.items()):
            for workspace in workspaces:
                value = value.replace(f"$(workspaces.{workspace}.path)", workspaces[workspace].get("mountPath", f"/workspace/{workspace}"))
            for result in results:
                value = value.replace(f"$(results.{result}.path)", f"/tekton/results/{result}")
            env[key] = value
        mounts = [(m["mountPath"], m["name"], bool(m.get("readOnly"))) for m in step.get("volumeMounts", [])]
        mounts += [(w.get("mountPath", f"/workspace/{n}"), "ws-" + n, bool(w.get("readOnly"))) for n, w in workspaces.items()]
        if "script" not in step:
            fail(where, "no script")
            continue
        if re.search(r"\$\(params\.", step["script"]):
            fail(where, "params substituted into the script (pass them through env)")
        lines = command_words(step["script"])
        sevimage_lines = [words for words in lines if words and words[0].endswith("sevimage")]
        subcommand = sevimage_lines[0][1] if sevimage_lines and len(sevimage_lines[0]) > 1 else None
        if subcommand not in results:
            fail(where, f"no result named {subcommand!r} (results: {sorted(results)})")
        check_command(where, lines, env, mounts, volume_kinds, f"/tekton/results/{subcommand}")
        checked.append(f"task/{name} {subcommand}")


def main():
    directory = sys.argv[1]
    documents = []
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.yaml"), recursive=True)):
        with open(path) as handle:
            for document in yaml.safe_load_all(handle):
                if document:
                    documents.append((os.path.relpath(path, directory), document))
    runs = [d for _, d in documents if d.get("kind") == "TaskRun"]
    for path, document in documents:
        kind = (document.get("apiVersion"), document.get("kind"))
        if kind == ("batch/v1", "Job"):
            check_job(path, document)
        elif kind == ("tekton.dev/v1", "Task"):
            check_task(path, document, runs)
        elif kind != ("tekton.dev/v1", "TaskRun"):
            fail(path, f"unexpected {kind}")
    for line in failures:
        print(line)
    if failures:
        return 1
    print("checked: " + ", ".join(checked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
