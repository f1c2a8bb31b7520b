"""The shipped price snapshots hold only published figures, each citing its source, and the tool that
builds them keeps the source's gaps as gaps (no spot price is ever made up)."""

from __future__ import annotations

import csv
import re
from datetime import date
from pathlib import Path

import pytest

from catalog import prices
from catalog.taxonomy import taxonomy
from catalog.tools import build_snapshots
from skyward_ray import AWS, RunPod, VastAI

CATALOG = Path(build_snapshots.__file__).resolve().parent.parent
SNAPSHOTS = CATALOG / "snapshots"
TABLES = {  # table -> the SkyPilot catalog file its rows come from
    "aws_instance_types": "catalogs/v7/aws/vms.csv",
    "aws_prices": "catalogs/v7/aws/vms.csv",
    "runpod_gpu_types": "catalogs/v7/runpod/vms.csv",
    "vastai_offers": "catalogs/v7/vast/vms.csv",
}


def shipped(table: str) -> list[dict[str, str]]:
    with (SNAPSHOTS / f"{table}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def positive(value: str) -> bool:
    return float(value) > 0


@pytest.fixture(autouse=True)
def real_snapshots(monkeypatch):
    monkeypatch.delenv(prices.CATALOG_DIR_ENV, raising=False)


@pytest.mark.parametrize("table", TABLES)
def test_every_row_cites_the_skypilot_file_and_commit(table):
    rows = shipped(table)
    assert rows, f"{table} is empty"
    pattern = re.compile(rf"SkyPilot catalog {re.escape(TABLES[table])} @ [0-9a-f]{{40}}")
    assert all(pattern.fullmatch(row["source"]) for row in rows), {row["source"] for row in rows}
    # as_of is the commit's date: one per source commit. It is empty where that date was not known
    # when the table was built (never a guessed date; see catalog/tools/build_snapshots.py).
    dates = {row["source"]: row["as_of"] for row in rows}
    assert all(row["as_of"] == dates[row["source"]] for row in rows)
    for value in dates.values():
        assert value == "" or date.fromisoformat(value) <= date.today()


def test_the_shipped_snapshots_stay_small_and_hold_nothing_made_up():
    assert sum(path.stat().st_size for path in SNAPSHOTS.glob("*.csv")) < 400_000
    for path in SNAPSHOTS.glob("*.csv"):
        text = path.read_text(encoding="utf-8").lower()
        assert "fixture" not in text and "made up" not in text, path
    for path in CATALOG.rglob("*.py"):
        assert not re.search(r"\brandom\b", path.read_text(encoding="utf-8")), f"{path} uses random numbers"


def test_prices_are_positive_and_spot_cells_are_empty_or_numbers():
    for row in shipped("aws_prices"):
        assert row["market"] in ("on-demand", "spot") and positive(row["price"])
        assert (row["zone"] == "") == (row["market"] == "on-demand")
    for row in shipped("runpod_gpu_types"):
        assert positive(row["on_demand"]) and (row["spot"] == "" or positive(row["spot"]))
    for row in shipped("vastai_offers"):
        assert positive(row["dph_total"])


def test_no_vast_row_has_a_spot_price_or_a_figure_the_source_lacks():
    rows = shipped("vastai_offers")
    # SkyPilot's Vast SpotPrice is 0.00 on every row (not a price); asks, reliability and verification
    # are not in its data at all.
    assert {row["min_bid"] for row in rows} == {""}
    assert {row["reliability"] for row in rows} == {""} and {row["verification"] for row in rows} == {""}
    offers = VastAI(verified_only=False, min_reliability=0).list_offers(None)
    assert offers and {o.market for o in offers} == {"on-demand"}


def test_no_price_row_is_listed_twice():
    keys = [(r["region"], r["zone"], r["instance_type"], r["market"]) for r in shipped("aws_prices")]
    assert len(keys) == len(set(keys))  # p4de is listed twice per zone in the source: kept once
    keys = [r["instance_type"] for r in shipped("runpod_gpu_types")]
    assert len(keys) == len(set(keys))


def test_every_row_is_a_card_the_taxonomy_knows():
    tax = taxonomy()
    types = {row["instance_type"]: row for row in shipped("aws_instance_types")}
    for row in types.values():
        assert tax.lookup("aws", row["gpu_name"], float(row["gpu_memory_mib"]) / 1024) is not None, row
    assert {row["instance_type"] for row in shipped("aws_prices")} <= set(types)
    assert all(tax.lookup("runpod", row["gpu_type_id"]) for row in shipped("runpod_gpu_types"))
    assert all(tax.lookup("vastai", row["gpu_name"]) for row in shipped("vastai_offers"))
    assert tax.lookup("aws", types["p4de.24xlarge"]["gpu_name"], 80).label == "A100 SXM 80GB"


def price(table: str, **match: str) -> list[dict[str, str]]:
    return [row for row in shipped(table) if all(row[k] == v for k, v in match.items())]


def test_known_published_figures_are_present():
    # AWS (catalogs/v7/aws/vms.csv): on-demand per region, spot per zone ID, as published.
    [p4d] = price("aws_prices", region="us-east-1", instance_type="p4d.24xlarge", market="on-demand")
    assert p4d["price"] == "32.7726"
    assert {r["zone"]: r["price"] for r in price("aws_prices", region="us-east-1", instance_type="p4d.24xlarge",
                                                 market="spot")} == {"use1-az1": "6.791500", "use1-az2": "9.610700",
                                                                     "use1-az6": "5.093300"}
    [g4dn] = price("aws_prices", region="us-east-1", instance_type="g4dn.xlarge", market="on-demand")
    assert g4dn["price"] == "0.526"
    [p5] = price("aws_prices", zone="use1-az3", instance_type="p5.48xlarge")
    assert p5["price"] == "20.993400"
    # p5e.48xlarge has no on-demand price in the source: spot rows only, no on-demand row made up
    assert price("aws_prices", instance_type="p5e.48xlarge", market="spot")
    assert not price("aws_prices", instance_type="p5e.48xlarge", market="on-demand")
    # RunPod (catalogs/v7/runpod/vms.csv): whole-pod prices; a blank spot stays blank; L40S spot above
    # on-demand is kept as published (the selector rejects it).
    [h100] = price("runpod_gpu_types", instance_type="8x_H100-SXM_SECURE")
    assert (h100["gpu_type_id"], h100["on_demand"], h100["spot"]) == ("NVIDIA H100 80GB HBM3", "23.92", "21.52")
    [a100] = price("runpod_gpu_types", instance_type="1x_A100-80GB_SECURE")
    assert (a100["gpu_type_id"], a100["on_demand"], a100["spot"]) == ("NVIDIA A100 80GB PCIe", "1.64", "1.19")
    [a40] = price("runpod_gpu_types", instance_type="1x_A40_SECURE")
    assert (a40["on_demand"], a40["spot"]) == ("0.44", "")
    [l40s] = price("runpod_gpu_types", instance_type="1x_L40S_SECURE")
    assert (l40s["on_demand"], l40s["spot"]) == ("0.43", "0.86")
    # Vast (catalogs/v7/vast/vms.csv)
    [h100x8] = price("vastai_offers", instance_type="8x-H100_SXM-32-65536")
    assert (h100x8["gpu_name"], h100x8["dph_total"], h100x8["geolocation"]) == ("H100 SXM", "17.07", ", US, NA")
    [a100x8] = price("vastai_offers", instance_type="8x-A100_SXM4-32-65536")
    assert a100x8["dph_total"] == "5.87"


def test_offers_from_the_snapshots_carry_the_published_prices():
    aws = AWS(region="us-east-1").list_offers(None)
    assert any(o.instance_type == "p4d.24xlarge" and o.market == "on-demand" and o.price == 32.7726 for o in aws)
    runpod = RunPod().list_offers(None)
    h100 = [o for o in runpod if o.instance_type == "NVIDIA H100 80GB HBM3" and o.count == 8]
    assert {(o.market, o.price) for o in h100} == {("on-demand", 23.92), ("spot", 21.52)}
    vast = [o for o in VastAI().list_offers(None) if o.instance_type == "8x-A100_SXM4-32-65536"]
    assert [(o.accelerator_label, o.price) for o in vast] == [("A100 SXM 40GB ×8", 5.87)]
    assert all(o.price_source.startswith("snapshot:") for o in [*aws, *runpod, *vast])


# -- the builder, on small made-up source files (not real prices) ---------------------------------
MADE_UP_AWS = """\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone
dl1.24xlarge,Gaudi HL-205,8.0,96.0,768.0,"{'Gpus': [{'Name': 'Gaudi HL-205', 'Manufacturer': 'Habana', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 32768}}], 'TotalGpuMemoryInMiB': 262144}",1.0,0.5,us-east-1,use1-az2
g4dn.xlarge,T4,1.0,4.0,16.0,"{'Gpus': [{'Name': 'T4', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 16384}}], 'TotalGpuMemoryInMiB': 16384}",1.5,,us-east-1,use1-az1
g4dn.xlarge,T4,1.0,4.0,16.0,"{'Gpus': [{'Name': 'T4', 'Manufacturer': 'NVIDIA', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 16384}}], 'TotalGpuMemoryInMiB': 16384}",1.5,0.250000,us-east-1,use1-az2
p4de.24xlarge,A100-80GB,8.0,96.0,1152.0,"{'Gpus': [{'Name': 'A100-80GB', 'Manufacturer': 'NVIDIA', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 655360}",9.5,,us-east-1,use1-az1
p4de.24xlarge,A100-80GB,8.0,96.0,1152.0,"{'Gpus': [{'Name': 'A100', 'Manufacturer': 'NVIDIA', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 81920}}], 'TotalGpuMemoryInMiB': 655360}",9.5,3.000000,us-east-1,use1-az1
p5e.48xlarge,H200,8.0,192.0,2048.0,"{'Gpus': [{'Name': 'H200', 'Manufacturer': 'NVIDIA', 'Count': 8, 'MemoryInfo': {'SizeInMiB': 144384}}], 'TotalGpuMemoryInMiB': 1155072}",,7.000000,us-east-2,use2-az1
"""
MADE_UP_RUNPOD = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Region,SpotPrice,Price,AvailabilityZone\r\n"
    "1x_H100-SXM_SECURE,H100-SXM,1.0,20.0,80.0,H100-SXM,CA,2.00,3.00,CA-MTL-1\r\n"
    "1x_H100-SXM_SECURE,H100-SXM,1.0,20.0,80.0,H100-SXM,US,2.00,3.00,US-TX-1\r\n"
    "1x_H100-SXM_SECURE,H100-SXM,1.0,20.0,80.0,H100-SXM,US,2.00,3.00,US-TX-1\r\n"
    "1x_A40_SECURE,A40,1.0,9.0,48.0,A40,CA,,0.50,CA-MTL-1\r\n"
    "1x_RTXA4000_SECURE,RTXA4000,1.0,6.0,16.0,RTXA4000,CA,,0.30,CA-MTL-1\r\n"
    "cpu3c-2-4,,,2.0,4.0,,CA,,0.06,CA-MTL-1\r\n"
)
MADE_UP_VAST = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region\r\n"
    "2x-A100_SXM4-32-65536,A100,2,32,64.0,\"{'Gpus': [{'Name': 'A100', 'Count': 2, 'MemoryInfo': {'SizeInMiB': 81920}}], "
    "'TotalGpuMemoryInMiB': 81920}\",1.50,0.00,\"Texas, US, NA\"\r\n"
    "1x-RTX_3060-32-65536,RTX3060,1,32,64.0,\"{'Gpus': [{'Name': 'RTX3060', 'Count': 1, 'MemoryInfo': {'SizeInMiB': 12288}}], "
    "'TotalGpuMemoryInMiB': 12288}\",0.10,0.00,\"Quebec, CA, NA\"\r\n"
)
SHA = "0123456789abcdef0123456789abcdef01234567"


def build_made_up(tmp_path: Path, *extra: str) -> Path:
    for name, text in (("aws.csv", MADE_UP_AWS), ("runpod.csv", MADE_UP_RUNPOD), ("vast.csv", MADE_UP_VAST)):
        (tmp_path / name).write_bytes(text.encode())
    out = tmp_path / "out"
    argv = ["--out", str(out)]
    for cloud in ("aws", "runpod", "vast"):
        argv += [f"--{cloud}", str(tmp_path / f"{cloud}.csv"), f"--commit-{cloud}", SHA]
    assert build_snapshots.main([*argv, *extra]) == 0
    return out


def read(out: Path, table: str) -> list[dict[str, str]]:
    with (out / f"{table}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def test_builder_keeps_gaps_as_gaps_and_selects_known_cards(tmp_path):
    out = build_made_up(tmp_path, "--date-aws", "2025-01-02")
    types = {r["instance_type"]: r for r in read(out, "aws_instance_types")}
    assert set(types) == {"g4dn.xlarge", "p4de.24xlarge", "p5e.48xlarge"}  # no Gaudi
    assert types["p4de.24xlarge"]["gpu_name"] == "A100" and types["g4dn.xlarge"]["memory_mib"] == "16384"
    rows = [(r["region"], r["zone"], r["instance_type"], r["market"], r["price"]) for r in read(out, "aws_prices")]
    assert rows == [
        ("us-east-1", "", "g4dn.xlarge", "on-demand", "1.5"),
        ("us-east-1", "use1-az2", "g4dn.xlarge", "spot", "0.250000"),  # az1 lists no spot: no row
        ("us-east-1", "", "p4de.24xlarge", "on-demand", "9.5"),  # listed on two rows: once here
        ("us-east-1", "use1-az1", "p4de.24xlarge", "spot", "3.000000"),
        ("us-east-2", "use2-az1", "p5e.48xlarge", "spot", "7.000000"),  # no on-demand price: none made up
    ]
    assert {r["as_of"] for r in read(out, "aws_prices")} == {"2025-01-02"}
    assert {r["source"] for r in read(out, "aws_prices")} == {f"SkyPilot catalog catalogs/v7/aws/vms.csv @ {SHA}"}

    runpod = {r["instance_type"]: r for r in read(out, "runpod_gpu_types")}
    assert set(runpod) == {"1x_H100-SXM_SECURE", "1x_A40_SECURE"}  # no RTX A4000 (not in the taxonomy), no CPU
    assert runpod["1x_H100-SXM_SECURE"]["data_centers"] == "CA-MTL-1 US-TX-1"
    assert (runpod["1x_A40_SECURE"]["gpu_type_id"], runpod["1x_A40_SECURE"]["spot"]) == ("NVIDIA A40", "")
    assert {r["as_of"] for r in runpod.values()} == {""}  # no date given: left empty, not guessed

    [vast] = read(out, "vastai_offers")  # no RTX 3060 (not in the taxonomy)
    assert (vast["gpu_name"], vast["dph_total"], vast["min_bid"]) == ("A100 SXM4", "1.50", "")  # 0.00 is no bid


def test_builder_check_mode_reports_stale_tables(tmp_path):
    out = build_made_up(tmp_path)
    argv = ["--out", str(out), "--check", "--vast", str(tmp_path / "vast.csv"), "--commit-vast", SHA]
    assert build_snapshots.main(argv) == 0
    (out / "vastai_offers.csv").write_text("changed by hand\n")
    assert build_snapshots.main(argv) == 1


def test_builder_refuses_a_source_without_a_full_commit(tmp_path):
    (tmp_path / "vast.csv").write_bytes(MADE_UP_VAST.encode())
    with pytest.raises(SystemExit, match="commit"):
        build_snapshots.main(["--vast", str(tmp_path / "vast.csv"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="40-hex"):
        build_snapshots.main(["--vast", str(tmp_path / "vast.csv"), "--commit-vast", "abc123", "--out", str(tmp_path)])
