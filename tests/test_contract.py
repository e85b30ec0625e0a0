"""The JSON contract: order, extra keys, ids, bad input, exit codes (no images needed)."""

import json

import numpy as np
import pytest

from conftest import run_cli, write_input
from facecluster.contract import ContractError, build_output, load_input, renumber


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "invalid JSON"),
        ('{"img_path": "a.jpg"}', "expected a JSON array"),
        ('["a.jpg"]', "record 0: expected an object"),
        ('[{"img_path": "a.jpg"}, {"path": "b.jpg"}]', "record 1: missing 'img_path'"),
        ('[{"img_path": ""}]', "record 0: 'img_path' must be a non-empty string"),
        ('[{"img_path": 3}]', "record 0: 'img_path' must be a non-empty string"),
        ('[{"img_path": "a.jpg", "keypoints": [[1, 2]]}]', "record 0: 'keypoints' must be 5"),
    ],
)
def test_invalid_input_is_one_line_error(tmp_path, text, needle):
    p = tmp_path / "in.json"
    p.write_text(text)
    with pytest.raises(ContractError) as e:
        load_input(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["{not json", '{"a": 1}', '[{"path": "x"}]'])
def test_invalid_input_exit_2_and_nothing_written(tmp_path, text, capsys):
    p = tmp_path / "in.json"
    p.write_text(text)
    out = tmp_path / "out.json"
    assert run_cli("run", p, "-o", out, "--device", "cpu") == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1


def test_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "in.json"
    p.write_text('[{"img_path": "a.jpg", "x": "\u00e9"}]', encoding="utf-8-sig")
    assert p.read_bytes().startswith(b"\xef\xbb\xbf")
    records, paths = load_input(p)
    assert records == [{"img_path": "a.jpg", "x": "\u00e9"}] and paths == [str(tmp_path / "a.jpg")]


def test_missing_input_file_exit_2(tmp_path):
    assert run_cli("run", tmp_path / "nope.json", "-o", tmp_path / "o.json") == 2


def test_relative_paths_resolve_against_input_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    p = write_input(tmp_path / "sub", [{"img_path": "a.jpg"}, {"img_path": str(tmp_path / "b.jpg")}])
    _, paths = load_input(p)
    assert paths == [str(tmp_path / "sub" / "a.jpg"), str(tmp_path / "b.jpg")]


def test_build_output_keeps_order_keys_and_flags_failures():
    recs = [{"img_path": "a", "x": 1}, {"img_path": "b", "meta": {"t": 2}}, {"img_path": "c"}, {"img_path": "d"}]
    out = build_output(recs, np.array([0, 2, 3]), np.array([7, 3, 7]), {1: "file not found"})
    assert [r["img_path"] for r in out] == ["a", "b", "c", "d"]
    assert out[0] == {"img_path": "a", "x": 1, "cluster_id": 0}
    assert out[1]["cluster_id"] == -1 and out[1]["error"] == "file not found" and out[1]["meta"] == {"t": 2}
    assert out[2]["cluster_id"] == 1 and out[3]["cluster_id"] == 0
    assert recs[0] == {"img_path": "a", "x": 1}  # input not modified


def test_renumber_by_first_appearance():
    assert list(renumber(np.array([5, 5, 2, -1, 9, 2]))) == [0, 0, 1, -1, 2, 1]
