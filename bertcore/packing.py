"""Host side of packed runs: several sequences per run of the encoder core.

A run of the core streams the whole parameter image once; a packed run carries several
sequences (segments) in its ``max_seq`` rows, so the image serves all of them
(``docs/interface.md``, "Packed runs"). :func:`first_fit` groups sequences into runs,
:func:`plan_runs` builds their activation packets and :func:`split_outputs` hands each sequence
its rows back, in the order of the input. :func:`reference_runner` runs packets through the
integer reference with the core's protocol checks (the oracle of the packed core).
"""

from dataclasses import dataclass

from .checkpoint import BertError

__all__ = ["first_fit", "Run", "plan_runs", "split_outputs", "reference_runner"]


def first_fit(lengths, capacity, max_segments):
    """Group sequences of ``lengths`` rows into runs of at most ``capacity`` rows and
    ``max_segments`` sequences: first fit by decreasing length.

    Each sequence, longest first (ties in input order), goes into the first run that still has
    room for it, or opens a new run. Returns the runs as lists of input indices, each in input
    order, the runs ordered by their first index.

    Raises
    ------
    BertError
        If a length lies outside ``1..capacity``.
    """
    lengths = [int(n) for n in lengths]
    for n in lengths:
        if not 1 <= n <= capacity:
            raise BertError(f"a sequence of {n} tokens does not fit a run of 1..{capacity} rows")
    if max_segments < 1:
        raise BertError(f"max_segments must be at least 1, not {max_segments}")
    runs, rows = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, used in enumerate(rows):
            if used + lengths[i] <= capacity and len(runs[r]) < max_segments:
                runs[r].append(i)
                rows[r] += lengths[i]
                break
        else:
            runs.append([i])
            rows.append(lengths[i])
    return sorted((sorted(run) for run in runs), key=lambda run: run[0])


@dataclass(frozen=True)
class Run:
    """One run of the core: which inputs it carries and its activation packet.

    ``table`` is the segment table (beats with ``tuser = 1``; empty for an unpacked run, whose
    packet is a plain single-sequence packet), ``data`` the row beats.
    """
    indices: tuple
    lengths: tuple
    table: list
    data: list


def plan_runs(xs, config, *, pack=True):
    """The runs of the core for the int8 inputs ``xs`` (``[L, hidden]`` each).

    With ``pack`` the sequences are grouped by :func:`first_fit` into packets with a segment
    table (a run of a single sequence gets no table); without, one plain packet per sequence.
    """
    from .core.image import pack_activations, pack_segments
    lengths = [int(x.shape[0]) for x in xs]
    if pack:
        groups = first_fit(lengths, config.max_seq, min(config.max_segments, config.max_seq))
    else:
        for n in lengths:
            if not 1 <= n <= config.max_seq:
                raise BertError(f"a sequence of {n} tokens does not fit the core's "
                                f"1..{config.max_seq} rows")
        groups = [[i] for i in range(len(xs))]
    runs = []
    for group in groups:
        if len(group) == 1:
            table, data = [], pack_activations(xs[group[0]], config)
        else:
            table, data = pack_segments([xs[i] for i in group], config)
        runs.append(Run(tuple(group), tuple(lengths[i] for i in group), table, data))
    return runs


def split_outputs(runs, outputs, config):
    """The output rows of each input sequence, in input order.

    ``outputs[r]`` are the output words of ``runs[r]`` (the rows of its segments, in packet
    order: ``docs/interface.md``).
    """
    from .core.image import unpack_segments
    if len(outputs) != len(runs):
        raise BertError(f"{len(outputs)} outputs for {len(runs)} runs")
    n = sum(len(run.indices) for run in runs)
    result = [None] * n
    for run, words in zip(runs, outputs):
        for i, y in zip(run.indices, unpack_segments(words, run.lengths, config)):
            result[i] = y
    return result


def reference_runner(model, config):
    """A function ``runs -> outputs`` that runs each packet as the core does, on the integer
    reference: the protocol checks of :func:`~bertcore.core.image.check_activation_packet`,
    then ``encode_int`` with the segments; returns the output words of each run.
    """
    from .core.image import (ImageError, check_activation_packet, pack_activations,
                             unpack_activations)

    def run_all(runs):
        outputs = []
        for run in runs:
            try:
                lengths = check_activation_packet(run.table, run.data, config)
            except ImageError as exc:
                raise BertError(f"the core would reject this packet: {exc}") from None
            x = unpack_activations(run.data, sum(lengths), config)
            segments = lengths if run.table else None
            outputs.append(pack_activations(model.encode_int(x, segments=segments), config))
        return outputs

    return run_all
