#!/usr/bin/env python3
"""Reads a libvirt domain XML with Python's own XML parser and prints, as JSON, what a launch depends on:
the loader and its attributes, the NVRAM template, launchSecurity's fields, the vCPU count, the CPU model
and the disks. Written for sevimage's tests, independently of sevimage's XML writer."""
import json
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
os_ = root.find("os")
loader = os_.find("loader")
nvram = os_.find("nvram")
sec = root.find("launchSecurity")
cpu = root.find("cpu")
model = cpu.find("model") if cpu is not None else None
disks = [{"file": d.find("source").get("file"), "driver": d.find("driver").get("type"),
          "iommu": d.find("driver").get("iommu")} for d in root.findall("devices/disk")]
print(json.dumps({
    "name": root.findtext("name"),
    "machine": os_.find("type").get("machine"),
    "loader": loader.text, "loaderType": loader.get("type"), "readonly": loader.get("readonly"),
    "stateless": loader.get("stateless"),
    "nvramTemplate": nvram.get("template") if nvram is not None else None,
    "launchSecurity": None if sec is None else {
        "type": sec.get("type"), "policy": sec.findtext("policy"),
        "cbitpos": sec.findtext("cbitpos"), "reducedPhysBits": sec.findtext("reducedPhysBits")},
    "vcpus": int(root.findtext("vcpu")),
    "cpuModel": model.text if model is not None else None,
    "disks": disks,
    "serial": root.find("devices/serial") is not None,
}))
