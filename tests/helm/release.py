#!/usr/bin/env python3
"""Installs or uninstalls the streamjob-operator chart with the real Helm SDK (helm_python), for
tests/tests/chart_install.rs.

    release.py install   --kubeconfig K --namespace NS --name N [--values-json '{...}']
    release.py uninstall --kubeconfig K --namespace NS --name N

Prints one JSON object on stdout. install: {"objects": [...]}, every object of the release's
manifest as Helm sent it. uninstall: {"info": ...}. A Helm error ends the script with a
traceback on stderr and a non-zero exit code.
"""

import argparse
import json
import pathlib
import sys

import helm_python
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "streamjob-operator"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "uninstall"])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--values-json", default="{}")
    return parser.parse_args(argv)


def install(config, args):
    values = json.loads(args.values_json)
    chart = helm_python.Chart.load(str(CHART))
    release = config.install(chart, args.name, values, namespace=args.namespace, create_namespace=True, wait=None)
    objects = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    return {"objects": objects}


def uninstall(config, args):
    result = config.uninstall(args.name)
    return {"info": result.get("info", "")}


def main(argv):
    args = parse_args(argv)
    with helm_python.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace) as config:
        result = install(config, args) if args.action == "install" else uninstall(config, args)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
