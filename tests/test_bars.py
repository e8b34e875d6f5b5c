"""Historical bars through the simulated gateway: one request, pieces, pacing, the cache, the CLI."""

import json

import pandas as pd
import pytest

from qdibkr import PacingError, TWSError
from qdibkr.bars import Cache, CacheKey, Pacer, fetch, period_start
from qdibkr.cli import main
from qdibkr.ibkr import IBKR
from qdibkr.symbols import SIMULATOR_TAG
from qdibkr.sim import SimGateway


@pytest.fixture
def seen_errors(ibkr):
    """Every error code TWS sends this session, retried ones included."""
    codes = []
    ibkr.ib.errorEvent += lambda req_id, code, text, contract: codes.append(code)
    return codes


def requests_made(gateway) -> list[tuple]:
    """The historical requests the gateway has received: (con id, end, bar size, duration, RTH, what)."""
    return list(gateway.historical_requests)


def local(text: str, zone: str = "America/New_York"):
    return pd.Timestamp(text, tz=zone).to_pydatetime()


# ---------------------------------------------------------------- one request
def test_daily_bars_are_indexed_by_local_session_date(ibkr):
    bars = ibkr.bars("AAPL", end=local("2025-03-15"), duration="1 M", bar_size="1 day")
    assert list(bars.columns) == ["open", "high", "low", "close", "volume", "wap", "count"]
    assert str(bars.index.tz) == "America/New_York"
    assert (bars.index == bars.index.normalize()).all()
    assert bars.index[-1] == pd.Timestamp("2025-03-14", tz="America/New_York")  # Friday; the 15th is a Saturday
    assert ((bars["low"] <= bars[["open", "close"]].min(axis=1)) & (bars["high"] >= bars["open"])).all()


def test_intraday_bars_are_exchange_local_with_hk_lunch_break(ibkr):
    bars = ibkr.bars("700", end=local("2025-03-12 16:30", "Asia/Hong_Kong"), duration="2 D", bar_size="1 hour")
    assert str(bars.index.tz) == "Asia/Hong_Kong"
    one_day = [t.strftime("%H:%M") for t in bars.index if t.day == 12]
    assert one_day == ["09:30", "10:00", "11:00", "13:00", "14:00", "15:00"]
    us = ibkr.bars("AAPL", end=local("2025-03-12 16:30"), duration="1 D", bar_size="30 mins")
    assert us.index[0] == pd.Timestamp("2025-03-12 09:30", tz="America/New_York")


def test_invalid_request_and_pacing_violation_say_so(ibkr):
    with pytest.raises(TWSError, match="the duration is longer than it serves .* for that bar size .error 162") \
            as invalid:
        ibkr.bars("AAPL", duration="1 Y", bar_size="1 secs")
    assert invalid.value.code == 162
    # IB paces requests for bars of 30 seconds or less: no identical one within 15 s.
    ibkr.bars("SPY", end=local("2025-03-12 16:00"), duration="1800 S", bar_size="30 secs")
    with pytest.raises(PacingError, match="too many requests too quickly .error 162"):
        ibkr.bars("SPY", end=local("2025-03-12 16:00"), duration="1800 S", bar_size="30 secs")


# ---------------------------------------------------------------- pieces and pacing
def test_long_range_of_second_bars_comes_in_pieces_without_pacing_errors(ibkr, gateway, seen_errors, tmp_path):
    end = local("2025-03-10 15:00")
    before = len(requests_made(gateway))
    bars = fetch(ibkr, ["AAPL", "MSFT"], end=end, duration="14400 S", bar_size="1 secs", cache_dir=tmp_path)
    made = requests_made(gateway)[before:]
    # 4 hours of 1-second bars: eight requests of 1800 S per symbol, of which IB allows
    # only 5 per contract in 2 s (the simulator 6): the pacer spaced them, and TWS refused none.
    assert len(made) == 16 and {r[3] for r in made} == {"1800 S"}
    assert 162 not in seen_errors
    for frame in bars.values():
        assert len(frame) == 4 * 3600 and frame.index.is_unique and frame.index.is_monotonic_increasing
        assert frame.index[0] == pd.Timestamp("2025-03-10 11:00:00", tz="America/New_York")
        assert frame.index[-1] == pd.Timestamp("2025-03-10 14:59:59", tz="America/New_York")


def test_pacer_keeps_inside_each_of_ibs_rules():
    now = [1000.0]
    pacer = Pacer(clock=lambda: now[0])

    def send(request, contract=("AAPL", "TRADES"), small=True):
        assert pacer.delay(request, contract, small) == 0
        pacer.sent.append((now[0], request, contract, small))

    send("a", small=False)
    assert pacer.delay("a", ("AAPL", "TRADES"), False) == 15 + Pacer.MARGIN  # identical within 15 s
    assert pacer.delay("b", ("AAPL", "TRADES"), False) == 0
    for i in range(5):
        send(f"burst {i}")
    assert pacer.delay("6th", ("AAPL", "TRADES"), True) == 2 + Pacer.MARGIN  # the 6th in 2 s for one contract
    assert pacer.delay("other", ("MSFT", "TRADES"), True) == 0
    for i in range(55):  # 60 small-bar requests in all, within a few minutes
        now[0] += 3
        send(f"spread {i}", contract=(f"S{i}", "TRADES"))
    assert pacer.delay("61st", ("X", "TRADES"), True) == pytest.approx(1000 + 600 + Pacer.MARGIN - now[0])
    assert pacer.delay("big bars", ("X", "TRADES"), False) == 0  # the 60 in 10 minutes counts small bars only


# ---------------------------------------------------------------- the cache
def test_second_fetch_of_a_range_costs_no_request_and_a_longer_one_only_the_rest(ibkr, gateway, tmp_path):
    end = "2025-06-02"  # naive: midnight on each exchange's clock
    first = fetch(ibkr, ["AAPL", "0700.HK"], end=end, duration="1 Y", cache_dir=tmp_path)
    before = len(requests_made(gateway))
    again = fetch(ibkr, ["AAPL", "700"], end=end, duration="1 Y", cache_dir=tmp_path)
    assert len(requests_made(gateway)) == before
    for symbol in ("AAPL", "0700.HK"):
        pd.testing.assert_frame_equal(again[symbol], first[symbol])
        assert 240 <= len(first[symbol]) <= 260
    assert str(again["0700.HK"].index.tz) == "Asia/Hong_Kong"

    longer = fetch(ibkr, "AAPL", end=end, duration="2 Y", cache_dir=tmp_path)["AAPL"]
    assert len(requests_made(gateway)) == before + 1  # only the older year
    pd.testing.assert_frame_equal(longer.loc[first["AAPL"].index[0]:], first["AAPL"])
    assert longer.index.is_unique and 490 <= len(longer) <= 515


def test_the_bar_still_forming_is_returned_but_not_cached(ibkr, gateway, tmp_path):
    fetch(ibkr, "AAPL", duration="1 M", cache_dir=tmp_path)
    now = pd.Timestamp(ibkr.status().server_time).tz_convert("America/New_York")
    cached, coverage = Cache(tmp_path).load(CacheKey(ibkr.data_source, "AAPL", "1 day", "TRADES", True))
    today = period_start(now, "1 day")
    assert cached.index.max() < today and coverage[-1][1] == today

    gateway.advance(60)  # a minute later: only the part since the last finished bar is asked again
    before = len(requests_made(gateway))
    bars = fetch(ibkr, "AAPL", duration="1 M", cache_dir=tmp_path)["AAPL"]
    assert len(requests_made(gateway)) == before + 1
    assert bars.index.is_unique and bars.index.max() <= today


def test_a_connection_says_whether_its_data_is_simulated_and_from_which_seed(ibkr):
    assert ibkr.data_source == "simulated-seed0"
    other = SimGateway(port=0, seed=7).start_in_thread()
    try:
        with IBKR(port=other.port) as session:
            assert session.data_source == "simulated-seed7"  # other prices: another folder
    finally:
        other.stop()


def test_tws_on_the_simulators_port_is_not_served_the_simulators_cached_bars(tmp_path, monkeypatch):
    """Bars fetched from the simulated gateway, then from TWS on the same port with the same cache.
    TWS is played by a simulator with another seed (other prices) that leaves out the account value
    only the simulator sends: on the wire, that is all that tells TWS from the simulator."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QDIBKR_CACHE", str(cache))

    def fetched(port: int) -> pd.DataFrame:  # a range long past: all of it is cached after one fetch
        with IBKR(port=port) as session:
            return fetch(session, "AAPL", end="2025-06-02", duration="1 M")["AAPL"]

    sim = SimGateway(port=0).start_in_thread()
    try:
        simulated = fetched(sim.port)
    finally:
        sim.stop()
    tws = SimGateway(port=sim.port, seed=7)
    sim_values = tws.broker.account_values
    monkeypatch.setattr(tws.broker, "account_values",
                        lambda account: [row for row in sim_values(account) if row[0] != SIMULATOR_TAG])
    tws.start_in_thread()
    try:
        real = fetched(tws.port)
        assert len(requests_made(tws)) == 1  # TWS was asked: the simulator's bars did not answer for it
    finally:
        tws.stop()

    pd.testing.assert_index_equal(real.index, simulated.index)
    assert (real["close"] != simulated["close"]).all()
    assert {p.relative_to(cache).as_posix() for p in cache.rglob("*.parquet")} == {
        "simulated-seed0/TRADES/1day/rth/AAPL.parquet", "ib/TRADES/1day/rth/AAPL.parquet"}


# ---------------------------------------------------------------- the command line
def test_cli_writes_bars_of_several_symbols_to_parquet_and_prints_json(gateway, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QDIBKR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bars.parquet"
    port = str(gateway.port)
    assert main(["bars", "AAPL", "0700.HK", "--port", port, "--duration", "1 M", "--out", str(out)]) == 0
    rows = pd.read_parquet(out)
    assert set(rows["symbol"]) == {"AAPL", "0700.HK"}
    assert str(rows["time"].dt.tz) == "UTC"  # two time zones in one column
    assert "bars of 2 symbols written to" in capsys.readouterr().err
    assert (tmp_path / "cache/simulated-seed0/TRADES/1day/rth/0700.HK.parquet").exists()  # the source's folder

    assert main(["bars", "SPY", "--port", port, "--duration", "1 M", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[-1]["symbol"] == "SPY" and printed[-1]["close"] > 0
    assert main(["bars", "SPY", "--port", port, "--bar-size", "1 dy"]) == 2
    assert "bar_size: '1 dy' is not an IB bar size" in capsys.readouterr().err
