"""benchmarks.cp runs end to end on two gloo processes: the correctness gate passes,
every rank reports a time and the bytes it received, files are written."""
import json

from benchmarks import cp


def test_cp_benchmark_smoke(tmp_path):
    assert cp.main(["--seqlen", "64", "--heads", "2", "--kv-heads", "1", "--d-head", "8", "--d-state", "4",
                    "--reps", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "cp.json").read_text())["rows"]
    assert {(r["layout"], r["mode"]) for r in rows} == {(lay, m) for lay in ("zigzag", "contiguous")
                                                         for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert r["ok"] and len(r["per_rank_ms"]) == 2 and all(ms > 0 for ms in r["per_rank_ms"])
        # k, v (1 kv head x 8) and B_rot (2 x 4) of the other rank's 32 tokens, float32, and
        # their g (2) in float64; its chunks' totals of g (2 heads, float64) and Phi (2 x 2,
        # float32); the 12 int64 descriptors the ranks agree on (8 of shape, 4 result scalars)
        if r["mode"] == "fwd":
            chunks = 2 if r["layout"] == "zigzag" else 1
            expected = 32 * ((2 * 8 + 2 * 4) * 4 + 2 * 8) + chunks * (2 * 8 + 2 * 2 * 4) + 12 * 8
            assert r["bytes_received_per_rank"] == [expected] * 2
    assert "| zigzag | fwd |" in (tmp_path / "cp.md").read_text()
