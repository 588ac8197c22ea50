#!/usr/bin/env python3
"""Reads a libvirt domain XML with Python's own XML parser and checks it against a sevimage manifest.

  libvirt_domain.py DOMAIN.xml [--manifest M.json] [--image IMAGE] [--firmware FILE]

Prints JSON: "domain", what a launch depends on (the loader and its attributes, the NVRAM template,
launchSecurity's fields, the vCPU count, the CPU model, the disks, sevimage's metadata), and with --manifest,
"problems", every way the domain would not boot as the manifest expects (empty: none). Written for sevimage's
tests from libvirt's domain format and the manifest's fields, independently of sevimage's XML writer:
  - an SEV domain (launchSecurity type='sev'): its loader is a read-only, stateless pflash file whose size and
    SHA-256 are the manifest's firmware's (--firmware: the file expected), no NVRAM; its policy sets NODBG and
    NOKS and its mode (bit 2: SEV-ES) has a launch digest in the manifest; for SEV-ES one for exactly the
    domain's vCPU count, whose vCPU type without its version suffix (EPYC-v4 -> EPYC) is the CPU model;
    every virtio device has iommu='on'; the metadata names that launch digest;
  - a standard domain: no launchSecurity, a pflash loader with an NVRAM template;
  - both: q35, one disk, QCOW2, at the image's absolute path (--image), named as the manifest's image.file,
    and a serial console.
"""
import argparse
import hashlib
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

META_NS = "urn:sevimage:libvirt-domain:1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def read(root):
    os_ = root.find("os")
    loader = os_.find("loader")
    nvram = os_.find("nvram")
    sec = root.find("launchSecurity")
    cpu = root.find("cpu")
    model = cpu.find("model") if cpu is not None else None
    meta = root.find("metadata/{%s}launch" % META_NS)
    disks = []
    for d in root.findall("devices/disk"):
        driver, source, target = d.find("driver"), d.find("source"), d.find("target")
        disks.append({"file": source.get("file") if source is not None else None,
                      "driver": driver.get("type") if driver is not None else None,
                      "iommu": driver.get("iommu") if driver is not None else None,
                      "bus": target.get("bus") if target is not None else None})
    return {
        "name": root.findtext("name"),
        "type": root.get("type"),
        "machine": os_.find("type").get("machine"),
        "loader": loader.text if loader is not None else None,
        "loaderType": loader.get("type") if loader is not None else None,
        "readonly": loader.get("readonly") if loader is not None else None,
        "stateless": loader.get("stateless") if loader is not None else None,
        "nvram": nvram is not None,
        "nvramTemplate": nvram.get("template") if nvram is not None else None,
        "launchSecurity": None if sec is None else {
            "type": sec.get("type"), "policy": sec.findtext("policy"), "cbitpos": sec.findtext("cbitpos"),
            "reducedPhysBits": sec.findtext("reducedPhysBits"), "dhCert": sec.findtext("dhCert"),
            "session": sec.findtext("session")},
        "vcpus": int(root.findtext("vcpu")),
        "cpuMode": cpu.get("mode") if cpu is not None else None,
        "cpuModel": model.text if model is not None else None,
        "memoryMiB": memory_mib(root.find("memory")),
        "disks": disks,
        "serial": root.find("devices/serial") is not None and root.find("devices/console") is not None,
        "metadata": dict(meta.attrib) if meta is not None else None,
        "qemuArgs": [arg.get("value") for arg in root.findall("{%s}commandline/{%s}arg" % (QEMU_NS, QEMU_NS))],
    }


def memory_mib(element):
    units = {"KiB": 1 << 10, "k": 1 << 10, "MiB": 1 << 20, "M": 1 << 20, "GiB": 1 << 30, "G": 1 << 30, "b": 1, "bytes": 1}
    return int(element.text) * units[element.get("unit", "KiB")] // (1 << 20)


def virtio_without_iommu(root):
    """Every virtio device whose driver element does not say iommu='on'."""
    found = []
    for dev in root.find("devices"):
        virtio = (dev.tag == "disk" and dev.find("target") is not None and dev.find("target").get("bus") == "virtio") \
            or (dev.get("model") or "").startswith("virtio") \
            or (dev.tag == "interface" and dev.find("model") is not None and dev.find("model").get("type") == "virtio")
        if virtio:
            driver = dev.find("driver")
            if driver is None or driver.get("iommu") != "on":
                found.append(dev.tag)
    return found


def problems(root, domain, manifest, image, firmware_file):
    out = []
    if domain["machine"] != "q35" and not (domain["machine"] or "").startswith("pc-q35"):
        out.append("machine is %s, not q35" % domain["machine"])
    if len(domain["disks"]) != 1:
        out.append("%d disks" % len(domain["disks"]))
    for disk in domain["disks"]:
        if disk["driver"] != "qcow2":
            out.append("disk driver type %s" % disk["driver"])
        if not (disk["file"] or "").startswith("/"):
            out.append("disk path %s is not absolute" % disk["file"])
        if os.path.basename(disk["file"] or "") != manifest["image"]["file"]:
            out.append("disk %s is not the manifest's image %s" % (disk["file"], manifest["image"]["file"]))
        if image and disk["file"] != os.path.realpath(image):
            out.append("disk %s is not %s" % (disk["file"], os.path.realpath(image)))
    if not domain["serial"]:
        out.append("no serial console")
    sec = domain["launchSecurity"]
    if sec is None:
        if domain["loaderType"] != "pflash" or not domain["nvramTemplate"]:
            out.append("a standard domain needs a pflash loader with an NVRAM template")
        return out

    fw = manifest.get("firmware")
    if sec["type"] != "sev" or fw is None:
        return out + ["launchSecurity %s with a manifest firmware %s" % (sec["type"], fw is not None)]
    if domain["loaderType"] != "pflash" or domain["readonly"] != "yes" or domain["stateless"] != "yes" or domain["nvram"]:
        out.append("the loader is not a read-only stateless pflash without NVRAM")
    if firmware_file and domain["loader"] != os.path.realpath(firmware_file):
        out.append("loader %s is not %s" % (domain["loader"], firmware_file))
    try:
        data = open(domain["loader"], "rb").read()
        if len(data) != fw["size"] or hashlib.sha256(data).hexdigest() != fw["sha256"].lower():
            out.append("the loader's size or SHA-256 is not the manifest's firmware's")
    except OSError as e:
        out.append("cannot read the loader: %s" % e)
    policy = int(sec["policy"], 16) if sec["policy"].lower().startswith("0x") else int(sec["policy"])
    if policy & 0x3 != 0x3:
        out.append("policy %#x does not set NODBG and NOKS" % policy)
    mode = "sev-es" if policy & 0x4 else "sev"
    digests = [d for d in fw["launchDigests"] if d["mode"] == mode]
    if mode == "sev-es":
        digests = [d for d in digests if d.get("vcpus") == domain["vcpus"]]
    if not digests:
        out.append("the manifest has no %s launch digest for %d vCPUs" % (mode, domain["vcpus"]))
    else:
        d = digests[0]
        if mode == "sev-es":
            expected_model = re.sub(r"-v[0-9]+$", "", d["vcpuType"])
            if domain["cpuModel"] != expected_model:
                out.append("cpu model %s, the digest's vCPU type is %s" % (domain["cpuModel"], d["vcpuType"]))
        meta = domain["metadata"] or {}
        if meta.get("launch-digest") != d["digest"].lower():
            out.append("metadata launch-digest %s, the manifest's is %s" % (meta.get("launch-digest"), d["digest"]))
        if meta.get("mode") != mode or int(meta.get("policy", "-1"), 16) != policy:
            out.append("metadata mode/policy %s/%s" % (meta.get("mode"), meta.get("policy")))
    missing = virtio_without_iommu(root)
    if missing:
        out.append("virtio devices without iommu='on': %s" % ", ".join(missing))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("xml")
    ap.add_argument("--manifest")
    ap.add_argument("--image")
    ap.add_argument("--firmware")
    a = ap.parse_args()
    root = ET.parse(a.xml).getroot()
    domain = read(root)
    result = {"domain": domain}
    if a.manifest:
        result["problems"] = problems(root, domain, json.load(open(a.manifest)), a.image, a.firmware)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
