"""Regenerate the committed price snapshots in `catalog/snapshots/` (deterministic, seeded).

This is a maintenance script, never run at import: the CSVs it writes are committed data. Prices
are anchored on dated public list prices (see the ANCHORS comments); per-zone spot prices and
the Vast.ai marketplace spread are drawn from a seeded RNG around those anchors, and a few rows
deliberately carry the quirks real price feeds have (spot missing, 0.00, or not below
on-demand; the same thing listed under two names) so the selector is exercised on them.

    .venv/bin/python -m catalog.tools.generate_snapshots
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "snapshots"

AWS_AS_OF = "2026-11-01"
RUNPOD_AS_OF = "2026-11-10"
VAST_AS_OF = "2026-11-20"

# instance type: (gpu name, gpu count, gpu MiB, vCPUs, GiB RAM, us-east-1 on-demand $/h, spot/od ratio range)
# ANCHORS (FACTS.md): p5.48xlarge ~55 after the 2025 cut, spot ~21; p4d.24xlarge 32.77, spot 5.09-6.79;
# g4dn.xlarge 0.526, spot 0.176-0.201; g5.xlarge 1.006, spot 0.418.
AWS_TYPES: dict[str, tuple[str, int, int, int, int, float, tuple[float, float]]] = {
    "p5.48xlarge": ("H100", 8, 81920, 192, 2048, 55.04, (0.38, 0.46)),
    "p5.4xlarge": ("H100", 1, 81920, 16, 256, 6.88, (0.40, 0.50)),
    "p5e.48xlarge": ("H200", 8, 143771, 192, 2048, 60.48, (0.40, 0.50)),
    "p5en.48xlarge": ("H200", 8, 143771, 192, 2048, 63.30, (0.40, 0.52)),
    "p6-b200.48xlarge": ("B200", 8, 183359, 192, 2048, 113.93, (0.0, 0.0)),  # no spot market
    "p4d.24xlarge": ("A100", 8, 40960, 96, 1152, 32.77, (0.155, 0.207)),
    "p4de.24xlarge": ("A100", 8, 81920, 96, 1152, 40.97, (0.30, 0.40)),
    "p3.2xlarge": ("V100", 1, 16384, 8, 61, 3.06, (0.30, 0.34)),
    "p3.8xlarge": ("V100", 4, 16384, 32, 244, 12.24, (0.30, 0.36)),
    "p3.16xlarge": ("V100", 8, 16384, 64, 488, 24.48, (0.30, 0.38)),
    "p3dn.24xlarge": ("V100", 8, 32768, 96, 768, 31.212, (0.30, 0.40)),
    "g4dn.xlarge": ("T4", 1, 15360, 4, 16, 0.526, (0.335, 0.382)),
    "g4dn.2xlarge": ("T4", 1, 15360, 8, 32, 0.752, (0.33, 0.40)),
    "g4dn.4xlarge": ("T4", 1, 15360, 16, 64, 1.204, (0.33, 0.40)),
    "g4dn.8xlarge": ("T4", 1, 15360, 32, 128, 2.176, (0.33, 0.40)),
    "g4dn.16xlarge": ("T4", 1, 15360, 64, 256, 4.352, (0.33, 0.40)),
    "g4dn.12xlarge": ("T4", 4, 15360, 48, 192, 3.912, (0.33, 0.42)),
    "g4dn.metal": ("T4", 8, 15360, 96, 384, 7.824, (0.33, 0.42)),
    "g5.xlarge": ("A10G", 1, 24576, 4, 16, 1.006, (0.40, 0.46)),
    "g5.2xlarge": ("A10G", 1, 24576, 8, 32, 1.212, (0.38, 0.46)),
    "g5.4xlarge": ("A10G", 1, 24576, 16, 64, 1.624, (0.38, 0.46)),
    "g5.8xlarge": ("A10G", 1, 24576, 32, 128, 2.448, (0.38, 0.46)),
    "g5.16xlarge": ("A10G", 1, 24576, 64, 256, 4.096, (0.38, 0.46)),
    "g5.12xlarge": ("A10G", 4, 24576, 48, 192, 5.672, (0.38, 0.48)),
    "g5.24xlarge": ("A10G", 4, 24576, 96, 384, 8.144, (0.38, 0.48)),
    "g5.48xlarge": ("A10G", 8, 24576, 192, 768, 16.288, (0.38, 0.50)),
    "g6.xlarge": ("L4", 1, 22888, 4, 16, 0.8048, (0.30, 0.42)),
    "g6.2xlarge": ("L4", 1, 22888, 8, 32, 0.9776, (0.30, 0.42)),
    "g6.4xlarge": ("L4", 1, 22888, 16, 64, 1.3232, (0.30, 0.42)),
    "g6.8xlarge": ("L4", 1, 22888, 32, 128, 2.0144, (0.30, 0.42)),
    "g6.16xlarge": ("L4", 1, 22888, 64, 256, 3.3968, (0.30, 0.42)),
    "g6.12xlarge": ("L4", 4, 22888, 48, 192, 4.6016, (0.30, 0.45)),
    "g6.24xlarge": ("L4", 4, 22888, 96, 384, 6.6752, (0.30, 0.45)),
    "g6.48xlarge": ("L4", 8, 22888, 192, 768, 13.3504, (0.30, 0.45)),
    "g6e.xlarge": ("L40S", 1, 45776, 4, 32, 1.861, (0.30, 0.45)),
    "g6e.2xlarge": ("L40S", 1, 45776, 8, 64, 2.24208, (0.30, 0.45)),
    "g6e.4xlarge": ("L40S", 1, 45776, 16, 128, 3.00424, (0.30, 0.45)),
    "g6e.8xlarge": ("L40S", 1, 45776, 32, 256, 4.52856, (0.30, 0.45)),
    "g6e.16xlarge": ("L40S", 1, 45776, 64, 512, 7.57719, (0.30, 0.45)),
    "g6e.12xlarge": ("L40S", 4, 45776, 48, 384, 10.49264, (0.30, 0.48)),
    "g6e.24xlarge": ("L40S", 4, 45776, 96, 768, 15.06559, (0.30, 0.48)),
    "g6e.48xlarge": ("L40S", 8, 45776, 192, 1536, 30.13118, (0.30, 0.50)),
    "m7i.large": ("", 0, 0, 2, 8, 0.1008, (0.35, 0.50)),
    "m7i.xlarge": ("", 0, 0, 4, 16, 0.2016, (0.35, 0.50)),
    "m7i.2xlarge": ("", 0, 0, 8, 32, 0.4032, (0.35, 0.50)),
    "c7i.4xlarge": ("", 0, 0, 16, 32, 0.714, (0.35, 0.50)),
    "m7i.8xlarge": ("", 0, 0, 32, 128, 1.6128, (0.35, 0.50)),
}

# region: (price multiplier vs us-east-1, zones)
AWS_REGIONS: dict[str, tuple[float, tuple[str, ...]]] = {
    "us-east-1": (1.0, ("a", "b", "c", "d", "f")),
    "us-west-2": (1.0, ("a", "b", "c", "d")),
    "eu-west-1": (1.11, ("a", "b", "c")),
    "eu-central-1": (1.17, ("a", "b", "c")),
    "ap-northeast-1": (1.27, ("a", "c", "d")),
}
BIG_GPU_REGIONS = {"us-east-1", "us-west-2", "ap-northeast-1"}
BIG_GPU_PREFIXES = ("p5", "p6", "p4de", "p3dn")

# gpuTypeId, displayName, GB, cloud, on-demand $/GPU/h, spot (minimumBidPrice) $/GPU/h ('' = none),
# vCPUs/GPU, RAM GB/GPU, max GPUs per pod.
# ANCHORS (FACTS.md): H100 SXM 2.99 / 2.69 per GPU (8x = 23.92 / 21.52); A100 80GB PCIe 1.64 / 1.19;
# RTX 4090 0.69 / 0.34.
RUNPOD_TYPES: list[tuple[str, str, int, str, str, str, int, int, int]] = [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, "SECURE", "2.99", "2.69", 20, 125, 8),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, "COMMUNITY", "2.69", "", 16, 125, 8),  # quirk: no spot
    ("NVIDIA H100 SXM", "H100 SXM", 80, "SECURE", "2.99", "2.69", 20, 125, 8),  # quirk: same GPU, 2nd name
    ("NVIDIA H100 PCIe", "H100 PCIe", 80, "SECURE", "2.39", "1.99", 16, 188, 8),
    ("NVIDIA H100 PCIe", "H100 PCIe", 80, "COMMUNITY", "1.99", "1.59", 16, 125, 8),
    ("NVIDIA H100 NVL", "H100 NVL", 94, "SECURE", "2.79", "2.39", 16, 94, 8),
    ("NVIDIA H100 NVL", "H100 NVL", 94, "COMMUNITY", "2.59", "0.00", 16, 94, 8),  # quirk: spot 0.00
    ("NVIDIA H200", "H200 SXM", 141, "SECURE", "3.99", "3.59", 24, 188, 8),
    ("NVIDIA H200", "H200 SXM", 141, "COMMUNITY", "3.59", "", 24, 188, 8),
    ("NVIDIA B200", "B200", 180, "SECURE", "5.99", "5.59", 28, 283, 8),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", 80, "SECURE", "1.89", "1.49", 16, 117, 8),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", 80, "COMMUNITY", "1.74", "1.29", 16, 117, 8),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, "SECURE", "1.64", "1.19", 8, 117, 8),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, "COMMUNITY", "1.19", "0.89", 8, 83, 8),
    ("NVIDIA L40S", "L40S", 48, "SECURE", "0.86", "0.71", 16, 62, 8),
    ("NVIDIA L40S", "L40S", 48, "COMMUNITY", "0.79", "0.79", 12, 62, 8),  # quirk: spot == on-demand
    ("NVIDIA L40", "L40", 48, "SECURE", "0.99", "0.69", 8, 94, 8),
    ("NVIDIA L4", "L4", 24, "SECURE", "0.43", "0.26", 12, 50, 8),
    ("NVIDIA A40", "A40", 48, "SECURE", "0.40", "0.24", 9, 50, 8),
    ("NVIDIA A40", "A40", 48, "COMMUNITY", "0.35", "0.22", 9, 48, 8),
    ("NVIDIA RTX A6000", "RTX A6000", 48, "SECURE", "0.49", "0.39", 8, 50, 8),
    ("NVIDIA RTX A6000", "RTX A6000", 48, "COMMUNITY", "0.33", "0.25", 8, 46, 8),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 48, "SECURE", "0.77", "0.59", 12, 62, 8),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 48, "COMMUNITY", "0.74", "0.44", 12, 62, 8),
    ("NVIDIA GeForce RTX 5090", "RTX 5090", 32, "SECURE", "0.94", "0.76", 12, 46, 8),
    ("NVIDIA GeForce RTX 5090", "RTX 5090", 32, "COMMUNITY", "0.69", "0.58", 12, 46, 8),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "SECURE", "0.69", "0.34", 12, 41, 8),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "COMMUNITY", "0.34", "0.29", 8, 31, 8),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 24, "SECURE", "0.43", "0.26", 8, 24, 8),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 24, "COMMUNITY", "0.22", "0.11", 4, 24, 8),
    ("AMD Instinct MI300X OAM", "MI300X", 192, "SECURE", "2.49", "", 24, 283, 8),
    ("Tesla V100-SXM2-16GB", "V100 SXM2", 16, "SECURE", "0.39", "0.19", 6, 46, 8),
    ("Tesla V100-SXM2-32GB", "V100 SXM2 32GB", 32, "COMMUNITY", "0.29", "0.17", 6, 46, 8),
]

# gpu_name, GB, $/GPU/h low, high, weight (how common on the marketplace).
# ANCHORS (FACTS.md): H100 1.80-2.40 (8x ~17); A100 40GB 8x ~5.9; RTX 4090 0.30-0.40.
VAST_GPUS: list[tuple[str, int, float, float, int]] = [
    ("H100 SXM", 80, 1.80, 2.40, 30),
    ("H100 PCIE", 80, 1.45, 2.00, 14),
    ("H100 NVL", 94, 1.90, 2.50, 8),
    ("H200", 141, 2.60, 3.40, 12),
    ("B200", 180, 3.60, 4.60, 4),
    ("A100 SXM4", 40, 0.66, 0.95, 12),
    ("A100 SXM4", 80, 0.95, 1.35, 16),
    ("A100 PCIE", 80, 0.80, 1.20, 10),
    ("L40S", 48, 0.45, 0.72, 14),
    ("L40", 48, 0.50, 0.80, 6),
    ("L4", 24, 0.22, 0.40, 6),
    ("A40", 48, 0.28, 0.45, 8),
    ("A10", 24, 0.15, 0.30, 6),
    ("Tesla T4", 16, 0.09, 0.20, 6),
    ("Tesla V100", 16, 0.14, 0.30, 6),
    ("RTX A6000", 48, 0.35, 0.52, 14),
    ("RTX 6000Ada", 48, 0.55, 0.82, 12),
    ("RTX 5090", 32, 0.45, 0.75, 24),
    ("RTX 4090", 24, 0.30, 0.40, 60),
    ("RTX 3090", 24, 0.13, 0.25, 30),
]
VAST_PLACES = [
    "Texas, US", "California, US", "Oregon, US", "Virginia, US", "Utah, US", "Quebec, CA", "Ontario, CA",
    "Sweden, SE", "Norway, NO", "Germany, DE", "Netherlands, NL", "Poland, PL", "Czechia, CZ",
    "Japan, JP", "South Korea, KR", "Taiwan, TW", "Australia, AU",
]


def _write(name: str, header: list[str], rows: list[list[object]], comment: str) -> None:
    path = OUT / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        handle.write(f"# {comment}\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")


def aws(rng: random.Random) -> None:
    types = [
        [name, gpu, "NVIDIA" if gpu else "", count, mib, vcpus, gib * 1024]
        for name, (gpu, count, mib, vcpus, gib, _, _) in AWS_TYPES.items()
    ]
    _write(
        "aws_instance_types",
        ["instance_type", "gpu_name", "gpu_manufacturer", "gpu_count", "gpu_memory_mib", "vcpus", "memory_mib"],
        types,
        f"EC2 DescribeInstanceTypes (GpuInfo, VCpuInfo, MemoryInfo), as of {AWS_AS_OF}",
    )
    prices: list[list[object]] = []
    for region, (multiplier, zones) in AWS_REGIONS.items():
        for name, (_, _, _, _, _, od_base, (low, high)) in AWS_TYPES.items():
            if name.startswith(BIG_GPU_PREFIXES) and region not in BIG_GPU_REGIONS:
                continue
            if name.startswith(("p4de", "p3dn")) and region == "ap-northeast-1":
                continue
            on_demand = round(od_base * multiplier, 4)
            prices.append([region, "", name, "on-demand", on_demand, "AWS Price List API (AmazonEC2 offer file)", AWS_AS_OF])
            if name == "p4d.24xlarge" and region == "us-east-1":  # quirk: listed twice (two SKUs)
                prices.append([region, "", name, "on-demand", on_demand, "AWS Price List API (AmazonEC2 offer file)", AWS_AS_OF])
            if high == 0:
                continue
            for zone in zones:
                if rng.random() < 0.2:  # quirk: no spot market in this zone
                    continue
                spot = round(on_demand * rng.uniform(low, high), 4)
                if name == "p5en.48xlarge" and zone == "b":
                    spot = on_demand  # quirk: "spot" at the on-demand price is no discount
                if name == "p3.2xlarge" and zone == "c":
                    spot = 0.0  # quirk: the feed says 0.00
                prices.append([region, f"{region}{zone}", name, "spot", spot, "EC2 DescribeSpotPriceHistory (Linux/UNIX)", AWS_AS_OF])
    _write(
        "aws_prices",
        ["region", "zone", "instance_type", "market", "price", "source", "as_of"],
        prices,
        "USD per instance-hour; on-demand rows are per region (zone empty), spot rows per zone",
    )


def runpod() -> None:
    rows = [
        [gid, display, mem, cloud, od, spot, vcpu, ram, max_count,
         "RunPod GraphQL gpuTypes.lowestPrice (uninterruptablePrice, minimumBidPrice)", RUNPOD_AS_OF]
        for gid, display, mem, cloud, od, spot, vcpu, ram, max_count in RUNPOD_TYPES
    ]
    _write(
        "runpod_gpu_types",
        ["gpu_type_id", "display_name", "memory_gb", "cloud_type", "on_demand_per_gpu", "spot_per_gpu",
         "vcpus_per_gpu", "memory_gb_per_gpu", "max_gpu_count", "source", "as_of"],
        rows,
        "USD per GPU-hour; a pod of n GPUs costs n times this; spot = interruptible minimum bid",
    )


def vastai(rng: random.Random, count: int = 420) -> None:
    weights = [w for *_, w in VAST_GPUS]
    rows: list[list[object]] = []
    next_id = 21_000_000
    for machine in range(count):
        name, mem, low, high, _ = rng.choices(VAST_GPUS, weights)[0]
        num = rng.choices([1, 2, 4, 8], [45, 20, 15, 20])[0]
        per_gpu = rng.uniform(low, high)
        dph = round(per_gpu * num * rng.uniform(0.97, 1.03), 4)
        bid_roll = rng.random()
        if bid_roll < 0.04:
            min_bid: object = ""  # quirk: no interruptible price
        elif bid_roll < 0.07:
            min_bid = 0.0  # quirk: 0.00
        elif bid_roll < 0.10:
            min_bid = round(dph * rng.uniform(1.0, 1.1), 4)  # quirk: bid floor at/above on-demand
        else:
            min_bid = round(dph * rng.uniform(0.45, 0.75), 4)
        next_id += rng.randint(3, 4000)
        row = [
            next_id, 40_000 + machine, name, num, mem * 1024,
            round(num * rng.choice([8, 12, 16, 24, 32]), 1), num * rng.choice([32, 64, 96, 128, 192]) * 1000,
            dph, min_bid, round(rng.uniform(0.85, 0.9995), 4), rng.choice(VAST_PLACES),
            "verified" if rng.random() < 0.8 else "unverified", rng.choice([0, 0, 1]),
            "Vast.ai search offers (bundles) snapshot", VAST_AS_OF,
        ]
        rows.append(row)
        if name == "RTX 4090" and rng.random() < 0.08:  # quirk: the same ask under a second gpu_name
            rows.append([row[0], row[1], "GeForce RTX 4090", *row[3:]])
    _write(
        "vastai_offers",
        ["id", "machine_id", "gpu_name", "num_gpus", "gpu_ram", "cpu_cores_effective", "cpu_ram",
         "dph_total", "min_bid", "reliability", "geolocation", "verification", "hosting_type", "source", "as_of"],
        rows,
        "USD per hour for the whole offer (all num_gpus); gpu_ram/cpu_ram in MB; min_bid = interruptible floor",
    )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    aws(random.Random(20261101))
    runpod()
    vastai(random.Random(20261120))


if __name__ == "__main__":
    main()
