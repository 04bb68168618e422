"""The synthesis / place-and-route report flow (yowasp tools), on a small unit for speed."""

import dataclasses
import time

import pytest
from amaranth.back import verilog

from bertcore.cli import main
from bertcore.flow.report import DEVICES, FitError, FlowError, get_device, report_verilog
from bertcore.rtl.gelu import IntGELU


@pytest.fixture(scope="module")
def gelu_v():
    return verilog.convert(IntGELU(lanes=1, in_width=16), name="gelu")


def test_synthesis_counts_resources(gelu_v):
    r = report_verilog(gelu_v, "gelu", "up5k", pnr=False)
    assert r["resources"]["DSP"] == r["cells"]["SB_MAC16"] >= 1
    assert r["resources"]["FF"] >= 300 and r["resources"]["LUT"] > 0
    assert r["fmax_mhz"] is None


def test_place_and_route_ecp5_gives_fmax(gelu_v):
    t0 = time.time()
    r = report_verilog(gelu_v, "gelu", "ecp5-25k", freq_mhz=100)
    assert r["resources"]["DSP"] == r["cells"]["MULT18X18D"] == 3
    assert 50 < r["fmax_mhz"] < 500, r["fmax_mhz"]
    assert "TRELLIS_COMB" in r["nextpnr_utilization"] or "TRELLIS_SLICE" in str(r)
    print(f"IntGELU int16 on ECP5-25k: {r['fmax_mhz']:.1f} MHz in {time.time() - t0:.0f} s")


def test_design_that_does_not_fit(gelu_v, monkeypatch):
    small = dataclasses.replace(DEVICES["up5k"], capacity={"LUT": 5280, "FF": 100, "DSP": 8,
                                                            "BRAM": 30})
    monkeypatch.setitem(DEVICES, "up5k", small)
    with pytest.raises(FitError, match=r"does not fit up5k: it needs \d+ FF of 100"):
        report_verilog(gelu_v, "gelu", "up5k", pnr=False)


def test_unknown_device_and_tool_errors(gelu_v):
    with pytest.raises(FlowError, match="unknown device 'xc7a35t'"):
        get_device("xc7a35t")
    with pytest.raises(FlowError, match="yosys synthesis failed"):
        report_verilog("module broken(; endmodule", "broken", "up5k", pnr=False)


def test_cli_report_errors(capsys, tmp_path):
    def err(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("bertcore: error: ")
        return lines[-1]
    assert "invalid choice" in err(["report", "--preset", "tiny", "--device", "xc7"])
    assert "--sweep takes KEY=V1,V2" in err(["report", "--preset", "tiny", "--device", "up5k",
                                             "--sweep", "array_rows"])
    assert "array_rows must be an integer" in err(["report", "--preset", "tiny", "--device",
                                                   "up5k", "--sweep", "array_rows=4,x"])
    assert "unknown configuration key 'depth'" in err(
        ["report", "--preset", "tiny", "--device", "up5k", "--sweep", "depth=1,2"])


@pytest.mark.slow
def test_tiny_core_does_not_fit_up5k(capsys):
    """The iCEBreaker's UP5K cannot hold even the tiny core: the report says by how much."""
    assert main(["report", "--preset", "tiny", "--device", "up5k", "--quiet"]) == 2
    assert "does not fit up5k" in capsys.readouterr().err


def test_cli_build_errors(capsys):
    def err(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("bertcore: error: ")
        return lines[-1]
    assert "unknown board 'de10' (known: ulx3s-85f" in err(["build", "--board", "de10"])
    assert "divisible by heads (3)" in err(["build", "--board", "ulx3s-85f", "--set", "heads=3"])
    assert "unknown preset" in err(["build", "--board", "icebreaker", "--preset", "huge"])


@pytest.mark.slow
def test_build_ulx3s_bitstream(tmp_path, capsys):
    """ULX3S-85F with its default core (tiny, resident): routes and writes a bitstream (~15 min)."""
    import json
    assert main(["build", "--board", "ulx3s-85f", "-o", str(tmp_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["routed"] and rep["bitstream"] and (tmp_path / "top.bit").stat().st_size > 0
