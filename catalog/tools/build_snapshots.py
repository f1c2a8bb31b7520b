"""Build the committed price snapshots in `catalog/snapshots/` from the public SkyPilot catalog.

Every figure in the snapshots is copied from `skypilot-org/skypilot-catalog` (Apache-2.0), the price
lists SkyPilot publishes for each cloud; nothing is computed or made up. Each output row names its
source file and commit (`source`) and that commit's date (`as_of`). This is a maintenance script,
never run at import: the CSVs it writes are committed data.

Usage, from a git checkout of the catalog (each file's commit and date come from `git log`):

    .venv/bin/python -m catalog.tools.build_snapshots --catalog ~/src/skypilot-catalog

or from copies of the files (a download, or rows cut from them), naming commit and date yourself:

    .venv/bin/python -m catalog.tools.build_snapshots \\
        --aws aws-vms.csv --commit-aws SHA [--date-aws YYYY-MM-DD] \\
        --runpod runpod-vms.csv --commit-runpod SHA [--date-runpod YYYY-MM-DD] \\
        --vast vast-vms.csv --commit-vast SHA [--date-vast YYYY-MM-DD] [--out DIR]

A cloud left out is not rebuilt. `--date-*` is the date of the commit the file was read at (from
`git log -1 --format=%cs SHA`); without it (and without a checkout to ask) `as_of` is left empty,
never guessed, and the offers show "snapshot" with no age. `--check` builds into memory and says
whether the committed tables match, without writing.

What is selected: only rows whose accelerator the project's taxonomy (`catalog/accelerators.yaml`)
knows: AWS instance types whose GpuInfo (name, memory) resolves to a variant, RunPod GPU types
whose RunPod id is in the taxonomy, Vast GPU names the taxonomy lists. Prices are kept as
published (the text of the cell). A price cell that is empty, or not above 0, is no price: that
row or market is left out (Vast's `SpotPrice` is 0.00 on every row, so no Vast row has a spot
price). Anything odd but published (a RunPod spot above on-demand) is kept; the selector decides.

Tables written (USD per hour throughout):
- `aws_instance_types`: one row per instance type (GpuInfo name/maker/count/MiB, vCPUs, RAM).
- `aws_prices`: on-demand per (instance type, region), zone empty; spot per availability zone.
  SkyPilot lists zones by zone *ID* (`use1-az1`), the same in every account; zone names such
  as `us-east-1a` map to different IDs per account, so the ID is what is kept.
- `runpod_gpu_types`: one row per pod shape (GPU type × count, cloud type), whole-pod prices,
  with the RunPod data-centre IDs it is listed in. SkyPilot's accelerator names are turned into
  RunPod gpuTypeIds the way SkyPilot's RunPod provisioner does (`RUNPOD_GPU_TYPE_IDS`).
- `vastai_offers`: one row per SkyPilot Vast instance type and location. These are SkyPilot's
  per-type prices, not individual marketplace asks: there are no ask ids, bids, reliability or
  verification figures in the source, so those cells are empty.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from catalog.taxonomy import taxonomy

OUT = Path(__file__).resolve().parent.parent / "snapshots"
REPOSITORY = "skypilot-org/skypilot-catalog"
CATALOG_PATHS = {
    "aws": "catalogs/v7/aws/vms.csv",
    "runpod": "catalogs/v7/runpod/vms.csv",
    "vast": "catalogs/v7/vast/vms.csv",
}
EXPECTED_COLUMNS = {
    "aws": {"InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
            "SpotPrice", "Region", "AvailabilityZone"},
    "runpod": {"InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Region",
               "SpotPrice", "Price", "AvailabilityZone"},
    "vast": {"InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
             "SpotPrice", "Region"},
}

# SkyPilot's RunPod accelerator name -> RunPod gpuTypeId, as SkyPilot's RunPod provisioner maps them
# when it deploys (`GPU_NAME_MAP` in sky/provision/runpod/utils.py of skypilot-org/skypilot). Only
# names whose gpuTypeId is in our taxonomy matter; a name missing here is not selected.
RUNPOD_GPU_TYPE_IDS = {
    "A100-80GB": "NVIDIA A100 80GB PCIe",
    "A100-80GB-SXM": "NVIDIA A100-SXM4-80GB",
    "A40": "NVIDIA A40",
    "B200": "NVIDIA B200",
    "H100": "NVIDIA H100 PCIe",
    "H100-NVL": "NVIDIA H100 NVL",
    "H100-SXM": "NVIDIA H100 80GB HBM3",
    "H200-SXM": "NVIDIA H200",
    "L4": "NVIDIA L4",
    "L40": "NVIDIA L40",
    "L40S": "NVIDIA L40S",
    "MI300X": "AMD Instinct MI300X OAM",
    "RTX3090": "NVIDIA GeForce RTX 3090",
    "RTX4090": "NVIDIA GeForce RTX 4090",
    "RTX5090": "NVIDIA GeForce RTX 5090",
    "RTX6000-Ada": "NVIDIA RTX 6000 Ada Generation",
    "RTXA6000": "NVIDIA RTX A6000",
    "V100-16GB-SXM2": "Tesla V100-SXM2-16GB",
    "V100-32GB-SXM2": "Tesla V100-SXM2-32GB",
    "V100-16GB-PCIe": "Tesla V100-PCIE-16GB",
}

AS_OF_NOTE = "as_of = the date of that commit; empty where it was not known when this table was built"

AWS_TYPES_HEADER = ["instance_type", "gpu_name", "gpu_manufacturer", "gpu_count", "gpu_memory_mib", "vcpus",
                    "memory_mib", "source", "as_of"]
AWS_PRICES_HEADER = ["region", "zone", "instance_type", "market", "price", "source", "as_of"]
RUNPOD_HEADER = ["instance_type", "gpu_type_id", "accelerator_name", "gpu_count", "cloud_type", "vcpus",
                 "host_memory_gb", "on_demand", "spot", "data_centers", "source", "as_of"]
VAST_HEADER = ["instance_type", "gpu_name", "num_gpus", "gpu_total_ram_mib", "vcpus", "memory_gib", "dph_total",
               "min_bid", "reliability", "verification", "geolocation", "source", "as_of"]


@dataclass(frozen=True)
class Source:
    """One SkyPilot catalog file read at one commit."""

    cloud: str
    file: Path
    commit: str
    date: str  # YYYY-MM-DD, or "" when unknown

    @property
    def label(self) -> str:
        return f"SkyPilot catalog {CATALOG_PATHS[self.cloud]} @ {self.commit}"


@dataclass(frozen=True)
class Table:
    name: str
    header: list[str]
    rows: list[list[str]]
    comment: list[str]

    def text(self) -> str:
        buffer = io.StringIO()
        for line in self.comment:
            buffer.write(f"# {line}\n")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buffer.getvalue()


# -- helpers ---------------------------------------------------------------------------------------
def _read(source: Source) -> list[dict[str, str]]:
    with source.file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = EXPECTED_COLUMNS[source.cloud] - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{source.file}: not a {CATALOG_PATHS[source.cloud]} file (missing {sorted(missing)})")
        return list(reader)


def price_cell(value: str) -> str:
    """The published price text, or '' when the cell holds no price (empty, 0.00, not a number)."""
    value = (value or "").strip()
    try:
        return value if float(value) > 0 else ""
    except ValueError:
        return ""


def plain_number(value: str | float | int) -> str:
    """4.0 -> '4', 30.5 -> '30.5' (counts and sizes; prices are never passed through this)."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def gpu_info(text: str) -> dict | None:
    """SkyPilot's GpuInfo cell (a Python-literal dict) -> its first GPU entry; None when empty."""
    if not text:
        return None
    info = ast.literal_eval(text)
    gpus = info.get("Gpus") or []
    return gpus[0] if gpus else None


def _credit(source: Source) -> str:
    return f"Source: {source.label} (github.com/{REPOSITORY}, Apache-2.0)."


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- AWS -------------------------------------------------------------------------------------------
def build_aws(source: Source) -> list[Table]:
    tax = taxonomy()
    rows = _read(source)
    types: dict[str, list[str]] = {}
    for row in rows:
        name = row["InstanceType"]
        gpu = gpu_info(row["GpuInfo"]) if row["AcceleratorName"] else None
        if gpu is None or name in types:
            continue
        mib = float(gpu["MemoryInfo"]["SizeInMiB"])
        if tax.lookup("aws", gpu["Name"], mib / 1024) is None:
            # p4de lists its GPU as "A100-80GB" on some rows and "A100" on others: an instance type
            # is selected if any of its rows resolves, and its facts come from the first that does.
            continue
        memory_mib = float(row["MemoryGiB"]) * 1024
        if not memory_mib.is_integer():
            raise SystemExit(f"{name}: MemoryGiB {row['MemoryGiB']} is not a whole number of MiB")
        types[name] = [name, gpu["Name"], gpu.get("Manufacturer", ""), plain_number(gpu["Count"]),
                       plain_number(mib), plain_number(row["vCPUs"]), plain_number(memory_mib),
                       source.label, source.date]
    # instance type -> region -> zone -> (on-demand prices, spot prices), in the source's order
    places: dict[str, dict[str, dict[str, tuple[list[str], list[str]]]]] = {}
    for row in rows:
        if row["InstanceType"] not in types:
            continue
        on_demand, spot = (places.setdefault(row["InstanceType"], {}).setdefault(row["Region"], {})
                           .setdefault(row["AvailabilityZone"], ([], [])))
        if price := price_cell(row["Price"]):
            on_demand.append(price)
        if price := price_cell(row["SpotPrice"]):
            spot.append(price)
    price_rows: list[list[str]] = []
    for name, regions in places.items():
        for region, zones in regions.items():
            # EC2 prices on-demand per region: SkyPilot repeats it on every zone row, so it is kept once.
            region_prices = _unique(p for on_demand, _ in zones.values() for p in on_demand)
            if len(region_prices) > 1:
                print(f"note: {name} in {region}: {len(region_prices)} different on-demand prices, all kept",
                      file=sys.stderr)
            for price in region_prices:
                price_rows.append([region, "", name, "on-demand", price, source.label, source.date])
            for zone, (_, spot) in zones.items():
                for price in _unique(spot):  # a zone listed twice with the same price is one row
                    price_rows.append([region, zone, name, "spot", price, source.label, source.date])
    credit = _credit(source)
    return [
        Table("aws_instance_types", AWS_TYPES_HEADER, list(types.values()), [
            credit,
            "One row per GPU instance type whose GpuInfo the taxonomy knows: GpuInfo name, manufacturer, count,",
            f"MiB per GPU; vCPUs; memory_mib = MemoryGiB x 1024. {AS_OF_NOTE}.",
            "Built by catalog/tools/build_snapshots.py; do not edit by hand.",
        ]),
        Table("aws_prices", AWS_PRICES_HEADER, price_rows, [
            credit,
            "USD per instance-hour, as published. on-demand: per region (zone empty), from Price; spot: per",
            "availability-zone ID (use1-az1; zone names like us-east-1a differ per account), from SpotPrice.",
            f"No row where the source lists no price. {AS_OF_NOTE}.",
            "Built by catalog/tools/build_snapshots.py; do not edit by hand.",
        ]),
    ]


# -- RunPod ----------------------------------------------------------------------------------------
def build_runpod(source: Source) -> list[Table]:
    tax = taxonomy()
    groups: dict[tuple[str, ...], list[str]] = {}
    for row in _read(source):
        skypilot_name = row["AcceleratorName"]
        gpu_type_id = RUNPOD_GPU_TYPE_IDS.get(skypilot_name)
        if gpu_type_id is None or tax.lookup("runpod", gpu_type_id) is None:
            continue  # CPU pods and GPUs the taxonomy does not know
        cloud_type = row["InstanceType"].rsplit("_", 1)[-1]
        if cloud_type not in ("SECURE", "COMMUNITY"):
            raise SystemExit(f"{row['InstanceType']}: no cloud type suffix")
        on_demand, spot = price_cell(row["Price"]), price_cell(row["SpotPrice"])
        if not on_demand and not spot:
            continue
        key = (row["InstanceType"], gpu_type_id, skypilot_name, plain_number(row["AcceleratorCount"]), cloud_type,
               plain_number(row["vCPUs"]), plain_number(row["MemoryGiB"]), on_demand, spot)
        groups.setdefault(key, []).append(row["AvailabilityZone"])
    rows = [[*key, " ".join(_unique(zones)), source.label, source.date] for key, zones in groups.items()]
    return [Table("runpod_gpu_types", RUNPOD_HEADER, rows, [
        _credit(source),
        "USD per hour for the whole pod (gpu_count GPUs), as published; spot empty where none is listed.",
        "One row per instance type and price; data_centers = the RunPod data-centre IDs it is listed in.",
        "gpu_type_id = RunPod's id for SkyPilot's accelerator_name, as SkyPilot's RunPod provisioner maps it.",
        f"{AS_OF_NOTE}. Built by catalog/tools/build_snapshots.py; do not edit by hand.",
    ])]


# -- Vast.ai ---------------------------------------------------------------------------------------
VAST_TYPE = re.compile(r"(?P<count>\d+)x-(?P<gpu>.+)-(?P<cpus>\d+)-(?P<ram>\d+)")


def build_vast(source: Source) -> list[Table]:
    tax = taxonomy()
    rows: list[list[str]] = []
    for row in _read(source):
        match = VAST_TYPE.fullmatch(row["InstanceType"])
        gpu = gpu_info(row["GpuInfo"])
        if match is None or gpu is None:
            continue
        # SkyPilot builds the instance type from Vast's gpu_name with whitespace turned into "_".
        gpu_name = match["gpu"].replace("_", " ")
        count = int(match["count"])
        if count != int(float(row["AcceleratorCount"])):
            raise SystemExit(f"{row['InstanceType']}: AcceleratorCount {row['AcceleratorCount']} disagrees")
        total_mib = float(gpu["MemoryInfo"]["SizeInMiB"])  # Vast's gpu_total_ram: all GPUs together
        if tax.lookup("vastai", gpu_name, total_mib / count / 1024) is None:
            continue
        price = price_cell(row["Price"])
        if not price:
            continue
        # SpotPrice is 0.00 on every SkyPilot Vast row: not a price, so min_bid stays empty.
        rows.append([row["InstanceType"], gpu_name, str(count), plain_number(total_mib), plain_number(row["vCPUs"]),
                     plain_number(row["MemoryGiB"]), price, price_cell(row["SpotPrice"]), "", "", row["Region"],
                     source.label, source.date])
    return [Table("vastai_offers", VAST_HEADER, rows, [
        _credit(source),
        "USD per hour for the whole machine (num_gpus GPUs): SkyPilot's price for that instance type and",
        "location, not an individual marketplace ask (so there are no ask ids). SkyPilot's SpotPrice is 0.00",
        "on every Vast row, which is not a price: min_bid is empty. The source has no reliability or",
        "verification figures: empty. gpu_total_ram_mib is for all GPUs together, as published.",
        f"{AS_OF_NOTE}. Built by catalog/tools/build_snapshots.py; do not edit by hand.",
    ])]


BUILDERS = {"aws": build_aws, "runpod": build_runpod, "vast": build_vast}


# -- command line ----------------------------------------------------------------------------------
def _git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _from_checkout(checkout: Path, cloud: str) -> Source:
    path = CATALOG_PATHS[cloud]
    if _git(checkout, "status", "--porcelain", "--", path):
        raise SystemExit(f"{checkout / path} has local changes; build from a clean checkout")
    commit, date = _git(checkout, "log", "-1", "--format=%H %cs", "--", path).split()
    return Source(cloud, checkout / path, commit, date)


def _check_source(source: Source) -> Source:
    if not re.fullmatch(r"[0-9a-f]{40}", source.commit):
        raise SystemExit(f"--commit-{source.cloud}: a full 40-hex commit id, got {source.commit!r}")
    if source.date and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", source.date):
        raise SystemExit(f"--date-{source.cloud}: YYYY-MM-DD, got {source.date!r}")
    if not source.file.is_file():
        raise SystemExit(f"{source.file}: no such file")
    return source


def sources_from_args(args: argparse.Namespace) -> list[Source]:
    sources: list[Source] = []
    for cloud in BUILDERS:
        file = getattr(args, cloud)
        commit, date = getattr(args, f"commit_{cloud}"), getattr(args, f"date_{cloud}")
        if file is not None:
            if commit is None:
                raise SystemExit(f"--{cloud} needs --commit-{cloud} (the catalog commit the file was read at)")
            sources.append(_check_source(Source(cloud, Path(file), commit, date or "")))
        elif args.catalog is not None:
            source = _from_checkout(Path(args.catalog), cloud)
            sources.append(_check_source(Source(cloud, source.file, commit or source.commit, date or source.date)))
    if not sources:
        raise SystemExit("nothing to build: give --catalog DIR, or --aws/--runpod/--vast FILE")
    return sources


def build(sources: Iterable[Source]) -> list[Table]:
    return [table for source in sources for table in BUILDERS[source.cloud](source)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="a git checkout of skypilot-org/skypilot-catalog")
    for cloud in BUILDERS:
        parser.add_argument(f"--{cloud}", help=f"a copy of {CATALOG_PATHS[cloud]} (or rows cut from it)")
        parser.add_argument(f"--commit-{cloud}", help="the catalog commit that file was read at")
        parser.add_argument(f"--date-{cloud}", help="that commit's date, YYYY-MM-DD (left empty if not given)")
    parser.add_argument("--out", default=str(OUT), help="where to write the tables (default: catalog/snapshots)")
    parser.add_argument("--check", action="store_true", help="compare with the tables in --out; write nothing")
    args = parser.parse_args(argv)
    tables = build(sources_from_args(args))
    out = Path(args.out)
    stale = []
    for table in tables:
        path = out / f"{table.name}.csv"
        text = table.text()
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(table.rows)} rows, {len(text.encode()):,} bytes)")
    for table in tables:
        if not any(row[-1] for row in table.rows):
            print(f"note: {table.name}: no commit date given, as_of left empty", file=sys.stderr)
    if stale:
        print("differ from what the sources build:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
