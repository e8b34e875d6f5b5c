"""The README's first command ends with `qdibkr demo`: it must trade end to end and exit 0."""

from qdibkr.cli import main


def test_demo_trades_us_and_hk(capsys, tmp_path):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    orders = out.split("\norders\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [(row.split()[2], row.split()[8]) for row in orders] == [("AAPL", "Filled"), ("0700.HK", "Filled")]
    positions = out.split("\npositions\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [(row.split()[0], row.split()[1]) for row in positions] == [("AAPL", "10"), ("0700.HK", "100")]
