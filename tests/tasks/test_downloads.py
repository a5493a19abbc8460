"""Issue 28 item 11: a download never writes into a data root that lacked the files unless it
succeeded (PyG's Planetoid download goes to a temporary folder, then moves in)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch_geometric")


def _fake_planetoid(fail: bool):
    def planetoid(root: str, name: str) -> None:
        raw = Path(root) / name / "raw"
        raw.mkdir(parents=True)
        (raw / "ind.cora.x").write_text("part")  # what a download leaves before it breaks
        if fail:
            raise OSError("offline")
        (Path(root) / name / "processed").mkdir()
        (Path(root) / name / "processed" / "data.pt").write_text("cache")
    return planetoid


def test_a_failed_download_leaves_the_data_root_untouched(tmp_path: Path, monkeypatch) -> None:
    import torch_geometric.datasets

    from cprec.tasks.graph import _download

    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("the user's")
    stamp = root.stat().st_mtime_ns
    monkeypatch.setattr(torch_geometric.datasets, "Planetoid", _fake_planetoid(fail=True))
    _download(root, "Cora")
    assert [p.name for p in root.iterdir()] == ["mine.txt"] and root.stat().st_mtime_ns == stamp


def test_a_successful_download_is_moved_in(tmp_path: Path, monkeypatch) -> None:
    import torch_geometric.datasets

    from cprec.tasks.graph import _download

    monkeypatch.setattr(torch_geometric.datasets, "Planetoid", _fake_planetoid(fail=False))
    _download(tmp_path / "data", "Cora")
    assert (tmp_path / "data" / "Cora" / "raw" / "ind.cora.x").read_text() == "part"
    assert (tmp_path / "data" / "Cora" / "processed" / "data.pt").is_file()
