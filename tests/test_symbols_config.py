"""Symbols as users write them, and connection settings from arguments, environment and config file."""

import pytest

from qdibkr import InputError, LiveTradingRefused, load_settings, parse_symbol


@pytest.mark.parametrize("text", ["0700.HK", "00700", "700", "0700", "700.hk", " 700 "])
def test_hk_spellings_are_one_stock(text):
    symbol = parse_symbol(text)
    assert (symbol.ib_symbol, symbol.exchange, symbol.currency, symbol.market) == ("700", "SEHK", "HKD", "HShare")
    assert symbol.display == "0700.HK"


@pytest.mark.parametrize("text", ["BRK.B", "BRK B", "brk.b", "BRK/B"])
def test_us_share_classes(text):
    symbol = parse_symbol(text)
    assert (symbol.ib_symbol, symbol.exchange, symbol.currency) == ("BRK B", "SMART", "USD")
    assert symbol.display == "BRK.B"


def test_market_type_agrees_with_symbol():
    assert parse_symbol("AAPL", "USStock").display == "AAPL"
    assert parse_symbol("5", "hshare").display == "0005.HK"
    with pytest.raises(InputError, match="marketType is HShare"):
        parse_symbol("AAPL", "HShare")
    with pytest.raises(InputError, match="marketType is USStock"):
        parse_symbol("0700.HK", "USStock")
    with pytest.raises(InputError, match="use USStock or HShare") as e:
        parse_symbol("AAPL", "Crypto")
    assert e.value.field == "marketType"


@pytest.mark.parametrize("text", ["", "AAPL!", "123456", "0.HK", "TOOLONGX"])
def test_unreadable_symbols_name_the_formats(text):
    with pytest.raises(InputError, match="0700.HK, 00700 or 700") as e:
        parse_symbol(text)
    assert e.value.field == "symbol"


def test_settings_defaults_are_tws_paper():
    s = load_settings()
    assert (s.host, s.port, s.client_id, s.account, s.live) == ("127.0.0.1", 7497, 4, "", False)


def test_settings_precedence(monkeypatch, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[connection]\nhost = "10.0.0.1"\npreset = "gateway-paper"\nclient_id = 7\naccount = "DU1"\n')
    monkeypatch.setenv("QDIBKR_CONFIG", str(config))
    s = load_settings()
    assert (s.host, s.port, s.client_id, s.account) == ("10.0.0.1", 4002, 7, "DU1")
    monkeypatch.setenv("QDIBKR_PORT", "4001")
    monkeypatch.setenv("QDIBKR_CLIENT_ID", "8")
    s = load_settings()
    assert (s.port, s.client_id) == (4001, 8)
    s = load_settings(port=7497, client_id=0, host="127.0.0.1")
    assert (s.host, s.port, s.client_id) == ("127.0.0.1", 7497, 0)
    assert load_settings(preset="tws-live").port == 7496


def test_bad_settings_name_the_field(monkeypatch):
    with pytest.raises(InputError, match="unknown preset 'tws'.*tws-paper 7497") as e:
        load_settings(preset="tws")
    assert e.value.field == "preset"
    monkeypatch.setenv("QDIBKR_PORT", "seven")
    with pytest.raises(InputError, match="QDIBKR_PORT"):
        load_settings()
    with pytest.raises(InputError, match="not a TCP port"):
        load_settings(port=70000)


@pytest.mark.parametrize("port", [7496, 4001])
def test_live_ports_need_opt_in(port, monkeypatch):
    with pytest.raises(LiveTradingRefused, match="real money.*--live"):
        load_settings(port=port).check_port()
    load_settings(port=port, live=True).check_port()
    monkeypatch.setenv("QDIBKR_LIVE", "1")
    load_settings(port=port).check_port()


def test_non_paper_account_needs_opt_in():
    load_settings().check_account("DU1234567")
    with pytest.raises(LiveTradingRefused, match="not a paper account"):
        load_settings().check_account("U1234567")
    load_settings(live=True).check_account("U1234567")
