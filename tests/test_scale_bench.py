"""bench/scale.py and its generator bench/scale_data.py (issue 14).

The generator's files are read back with pydicom and DCMTK; the harness runs
once, small, against a real DCMTK storescp with storescu and fastsend.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import scale  # noqa: E402
import scale_data  # noqa: E402

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# PS3.5 9.1: digits and dots, no empty component, no leading zero in a component.
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and UID_PATTERN.match(uid) is not None


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> scale_data.GeneratedSet:
    """300 files, 100 to a study in 2 series of 50, written by two processes."""
    directory = tmp_path_factory.mktemp("scale") / "set"
    return scale_data.generate(directory, scale_data.SetShape(300, 100, 2), processes=2)


def test_generated_files_are_valid_ct_images(small_set: scale_data.GeneratedSet) -> None:
    paths = sorted(small_set.tree.rglob("*"))
    files = [path for path in paths if path.is_file()]
    assert len(files) == 300
    assert all(path.suffix == ".dcm" for path in files)  # nothing else for a sender to trip on
    for path in files:
        assert path.stat().st_size == small_set.file_bytes
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == CT_IMAGE_STORAGE
        # PS3.10 7.1: the file meta names the same instance as the data set.
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                    ds.FrameOfReferenceUID):  # fmt: skip
            assert _valid_uid(str(uid)), uid
        assert ds.InstanceNumber == int(path.stem)
        assert ds.pixel_array.shape == (64, 64)


def test_uids_are_unique_and_grouped_as_the_folders(small_set: scale_data.GeneratedSet) -> None:
    instances: set[str] = set()
    study_of_folder: dict[str, set[str]] = defaultdict(set)
    series_of_folder: dict[str, set[str]] = defaultdict(set)
    patients: dict[str, set[str]] = defaultdict(set)
    for path in sorted(small_set.tree.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instances.add(str(ds.SOPInstanceUID))
        study_folder = path.parent.parent.name
        study_of_folder[study_folder].add(str(ds.StudyInstanceUID))
        series_of_folder[f"{study_folder}/{path.parent.name}"].add(str(ds.SeriesInstanceUID))
        patients[study_folder].add(str(ds.PatientID))
    assert len(instances) == 300
    # studyNNNNNN/seriesNNNN: one study UID per study folder, one series UID per series folder.
    assert sorted(study_of_folder) == ["study000000", "study000001", "study000002"]
    assert all(len(uids) == 1 for uids in study_of_folder.values())
    assert len(set().union(*study_of_folder.values())) == 3
    assert len(series_of_folder) == 6
    assert all(len(uids) == 1 for uids in series_of_folder.values())
    assert len(set().union(*series_of_folder.values())) == 6
    assert all(len(ids) == 1 for ids in patients.values())
    assert len(set().union(*patients.values())) == 3


def test_dcmtk_reads_a_generated_file(small_set: scale_data.GeneratedSet) -> None:
    dcmftest, dcmdump = shutil.which("dcmftest"), shutil.which("dcmdump")
    if dcmftest is None or dcmdump is None:
        pytest.skip("DCMTK is not installed: `sudo apt-get install dcmtk`")
    path = small_set.tree / "study000002" / "series0002" / "00050.dcm"
    test = subprocess.run([dcmftest, str(path)], capture_output=True, text=True, check=False)
    assert test.returncode == 0 and test.stdout.startswith("yes:"), test.stdout
    dump = subprocess.run([dcmdump, "-E", str(path)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert dump.stderr == ""  # -E: DCMTK's warnings and errors go to stderr
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert dump.stdout.count(f"[{uid}]") == 2  # (0002,0003) and (0008,0018)
    assert "Little Endian Explicit" in dump.stdout


def test_a_set_is_reused_only_when_its_marker_matches(tmp_path: Path) -> None:
    directory = tmp_path / "set"
    first = scale_data.generate(directory, scale_data.SetShape(120, 50, 1), processes=1)
    assert not first.reused
    assert first.shape.studies == 3  # 50 + 50 + 20
    assert len(list(first.tree.rglob("*.dcm"))) == 120
    probe = first.tree / "study000000" / "series0001" / "00001.dcm"
    written = probe.stat().st_mtime_ns

    again = scale_data.generate(directory, scale_data.SetShape(120, 50, 1), processes=1)
    assert again.reused
    assert probe.stat().st_mtime_ns == written

    other = scale_data.generate(directory, scale_data.SetShape(80, 40, 1), processes=1)
    assert not other.reused
    assert len(list(other.tree.rglob("*.dcm"))) == 80
    assert json.loads((directory / scale_data.MARKER).read_text())["shape"]["files"] == 80


def test_a_foreign_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no scale set"):
        scale_data.generate(tmp_path, scale_data.SetShape(10, 10, 1))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_shapes_whose_uids_would_be_too_long_are_refused() -> None:
    with pytest.raises(ValueError, match="64"):
        scale_data.SetShape(999_999_999, 999_999, 999)


def test_a_small_run_against_storescp(tmp_path: Path) -> None:
    if scale.find_dcmtk("storescp") is None or scale.find_dcmtk("storescu") is None:
        pytest.skip("DCMTK is not installed: `sudo apt-get install dcmtk`")
    out = tmp_path / "results.json"
    status = scale.main(["--files", "200", "--runs", "1", "--processes", "1",
                         "--data", str(tmp_path / "set"), "--out", str(out),
                         "--timeout", "120"])  # fmt: skip
    assert status == 0
    entry = json.loads(out.read_text())["results"]["200-warm"]
    senders = entry["senders"]
    assert set(senders) == {scale.STORESCU, "fastsend -P 1", scale.RERUN}
    for name in (scale.STORESCU, "fastsend -P 1"):
        (run,) = senders[name]["runs"]
        assert run["problem"] is None, run["problem"]
        assert run["stored"] == 200
        assert run["returncode"] == 0
        assert run["cpu_seconds"] > 0
        assert 0 < senders[name]["first_store_seconds"] < run["seconds"] + 5
        assert senders[name]["peak_rss_bytes"] > 1_000_000
    (rerun,) = senders[scale.RERUN]["runs"]
    assert (rerun["stored"], rerun["skipped"], rerun["problem"]) == (0, 200, None)
    roles = senders["fastsend -P 1"]["peak_rss_bytes_by_role"]
    assert roles["coordinator"] > 0 and roles["worker"] > 0
    assert any("rerun" in target["name"] for target in entry["targets"])
    assert "| fastsend -P 1 |" in entry["table"]
