"""Which endpoints miss timing, from nextpnr's routed timing report.

nextpnr prints one critical path per clock; fixing a design needs the whole list.
``nextpnr ... --report FILE --detailed-timing-report`` writes, for every net, the arrival time
(``[min, max]`` ns, from the launching clock edge) at each of its sinks. The sinks that are
timing endpoints (flip-flop data, enable and reset inputs, RAM write ports, DSP inputs) give
every register-to-register path's delay; :func:`failing_endpoints` groups those over the clock
period by the signal they belong to::

    >>> report = {"detailed_net_timings": [
    ...     {"driver": "a_TRELLIS_FF_Q", "port": "Q", "net": "a", "endpoints": [
    ...         {"cell": "top.core.x_TRELLIS_FF_Q_3", "port": "DI", "delay": [1.0, 11.5]},
    ...         {"cell": "top.core.x_TRELLIS_FF_Q_4", "port": "DI", "delay": [1.0, 10.9]},
    ...         {"cell": "top.core.y_TRELLIS_FF_Q", "port": "DI", "delay": [0.5, 4.0]}]}]}
    >>> failing_endpoints(report, 10.0)
    [{'endpoint': 'core.x.DI', 'arrival_ns': 11.5, 'count': 2}]

Cell names are nextpnr's (derived from yosys'); the grouping strips the suffixes synthesis adds
(``_TRELLIS_FF_Q_3``, ``$CCU2_COMB0``, bit indices), so a group is one register (all its bits)
or one memory (all its cells). Setup times are not included (a few tenths of a ns on ECP5).
"""

import re

__all__ = ["failing_endpoints", "endpoint_name"]

_CLOCK_PORTS = {"CLK", "WCK", "CLKA", "CLKB"}
_FF_ENDPOINTS = {"DI", "M", "CE", "LSR"}
_COMB_OUTPUTS = {"F", "F0", "F1", "FCO", "OFX"}
#: a LUT RAM's synchronous write inputs (``TRELLIS_DPR16X4``, placed as ``$DPRAM_COMB``
#: cells that also drive its read data on ``F0``/``F1``)
_RAM_WRITE = re.compile(r"(WD\d?|WAD\d|WRE)$")


def endpoint_name(cell):
    """The register or memory a cell belongs to (``top.`` and synthesis suffixes removed)."""
    name = re.sub(r"^top\.", "", cell)
    name = re.sub(r"(_(TRELLIS_FF|LUT4|PFUMX|L6MUX21|CCU2C|DI|Q|Z|[A-D]\d?|ALUT|BLUT|COUT|S\d|"
                  r"C0|D0|D1)(_\d+)?)+.*$", "", name)
    name = re.sub(r"\$\w+$", "", name)
    name = re.sub(r"\$\d+", "", name)
    name = re.sub(r"(\.\d+)+$", "", name)
    return re.sub(r"_\d+$", "_*", name)


def _latest(sink):
    delay = sink["delay"]
    return max(delay) if isinstance(delay, list) else delay


def failing_endpoints(report, period_ns, limit=None):
    """Endpoints whose arrival exceeds ``period_ns``, grouped (see the module docstring).

    ``report`` is the parsed JSON of ``nextpnr --report --detailed-timing-report``. Returns a
    list of ``{"endpoint", "arrival_ns", "count"}``, the latest group first; ``endpoint`` is
    ``<register or memory>.<port>``. Without ``"detailed_net_timings"`` in the report (nextpnr
    ran without ``--detailed-timing-report``) raises :class:`ValueError`.

    A multiplier's operand pins are endpoints when its input registers are on, which the
    report shows by its products arriving before its operands (their paths start at the
    clock); they are grouped per operand (``<dsp>.A``, ``.B``, ``.C``). A combinational
    multiplier's products arrive after its operands: its pins are not endpoints.
    """
    nets = report.get("detailed_net_timings")
    if nets is None:
        raise ValueError("the report has no detailed net timings "
                         "(run nextpnr with --report FILE --detailed-timing-report)")
    outputs = {}
    product_arrival = {}         # a multiplier's latest arrival at the sinks of its P outputs
    for net in nets:
        outputs.setdefault(net["driver"], set()).add(net["port"])
        if re.match(r"P\d+$", net["port"]):
            latest = max((_latest(sink) for sink in net["endpoints"]), default=0.0)
            product_arrival[net["driver"]] = max(product_arrival.get(net["driver"], 0.0), latest)
    input_arrival = {}           # and at its inputs
    for net in nets:
        for sink in net["endpoints"]:
            if sink["cell"] in product_arrival:
                input_arrival[sink["cell"]] = max(input_arrival.get(sink["cell"], 0.0),
                                                  _latest(sink))
    ends = []
    for net in nets:
        for sink in net["endpoints"]:
            cell, port = sink["cell"], sink["port"]
            if port in _CLOCK_PORTS:
                continue
            outs = outputs.get(cell, set())
            if "Q" in outs:                            # a flip-flop
                if port not in _FF_ENDPOINTS:
                    continue
            elif _RAM_WRITE.match(port):
                pass                # a LUT RAM's write port (the cell's F outputs: its reads)
            elif outs & _COMB_OUTPUTS:
                continue                               # logic
            elif (cell in product_arrival
                  and product_arrival[cell] >= input_arrival.get(cell, 0.0)):
                # a combinational multiplier: its products arrive after its operands (with
                # input registers, the products' paths start at the clock instead)
                continue
            delay = _latest(sink)
            if delay > period_ns:
                if ((cell in product_arrival or "MULT18X18D" in cell.upper())
                        and re.match(r"[ABC]\d+$", port)):
                    port = port[0]                     # a multiplier: one group per operand
                ends.append((delay, endpoint_name(cell) + "." + port))
    ends.sort(reverse=True)
    groups = {}
    for delay, name in ends:
        group = groups.setdefault(name, {"endpoint": name, "arrival_ns": round(delay, 2),
                                         "count": 0})
        group["count"] += 1
    result = list(groups.values())
    return result if limit is None else result[:limit]
