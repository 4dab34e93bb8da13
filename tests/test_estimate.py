from mrrec_lib.cli import main
from mrrec_lib.estimate import estimate, format_estimate


def test_paper_config_scales_with_the_pool(root):
    paper = estimate([root / "params" / "paper.yaml"])
    smoke = estimate([root / "params" / "smoke.yaml"])
    emb = {r["stage"]: r["bytes"] for r in paper["rows"]}["02 memory"]
    assert emb >= 1_058_417 * 1024 * 4  # one float32 copy of the 1M x 1024 pool at least
    assert paper["sizes"]["items"] > 100 * smoke["sizes"]["items"]
    assert "no GPU measurement" in format_estimate(paper)


def test_cli_estimate_prints_every_stage(root, capsys):
    assert main(["estimate", str(root / "params" / "smoke.yaml")]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("01 data", "02 memory", "03 sft", "04 grpo", "05 eval", "total"))
