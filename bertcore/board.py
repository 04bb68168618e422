"""Host side of the UART link to a board running the encoder core (``docs/uart-protocol.md``).

Usage (with a board on a serial port)::

    link = load_parameters("/dev/ttyUSB0", image_words, config)
    out_words = run(link, pack_activations(x, config), len(x), config)
    table, data = pack_segments([x0, x1], config)          # a packed run: two sequences
    out_words = run(link, data, len(x0) + len(x1), config, table=table)

``port`` is a :class:`BoardLink`, a pyserial-like object (``write``, ``read``,
``reset_input_buffer``; ``send_break`` for :meth:`BoardLink.break_reset`) or a URL opened with
:func:`serial.serial_for_url` (``"/dev/ttyUSB0"``, ``"loop://"``, ``"socket://host:port"``).

The core takes the parameter image as a stream that it consumes while it computes, so
:func:`load_parameters` resets the core, checks the link and stores the image on the link, and a
:func:`run` streams it: the image header first, then the activation packet, then the rest of the
image while the core computes, then READ frames until the output packet's last word. With
``config.resident`` the core keeps the image of a successful run on chip: only the first run
after :func:`load_parameters` (or after a reset) streams the image, later runs send the
activation packet alone; ``load_parameters(..., reuse=True)`` trusts the image the core kept
from an earlier session (the command line's ``bertcore board run --no-load``).

On a board with an SDRAM image store (its STATUS reply is the long one) the image is loaded
once with :func:`load_image` (LOAD, the PARAM frames, then the board's CRC-32 of what it read back
compared with :func:`image_fingerprint`); :func:`run` then checks that the board still holds
that image (a power cycle empties the SDRAM) and sends RUN and the activations only.

A packed run (several sequences in one run, ``docs/interface.md``) sends its segment table in
ACT_TABLE frames (the bridge forwards their words with ``s_axis_act_tuser`` = 1) before the
rows; :func:`run_texts` packs texts first-fit (:func:`bertcore.packing.first_fit`) when the
board's bridge says it carries tables (STATUS flag ``ST_TABLE``).

Every frame is sent until it is answered (stop and wait): a NAK, a corrupted reply or no reply
within the timeout makes the host resend the same frame with the same sequence byte (the board
executes a frame once and answers a repeat with the stored reply), at most ``retries`` times;
then :class:`LinkError` is raised.
"""

import struct
import weakref
import zlib

from bertcore import uart_protocol as P

__all__ = ["BoardLink", "LinkError", "BoardError", "ImageStoreError", "load_parameters",
           "load_image", "image_fingerprint", "run", "run_texts", "status", "open_port"]

#: Default UART baud rate of the board tops.
DEFAULT_BAUD = 1_000_000


class LinkError(IOError):
    """The link failed: no valid reply after the allowed retries, or an unexpected reply."""


class BoardError(RuntimeError):
    """The board answered, but the core reported an error."""


class ImageStoreError(BoardError):
    """The board's SDRAM image store cannot serve: no SDRAM, a failed bring-up, an image that
    does not verify, or a stored image other than the one to run."""


def image_fingerprint(words, bus_width):
    """The fingerprint the SDRAM image store reports for ``words``: CRC-32 (``zlib.crc32``) of
    their little-endian bytes, ``bus_width // 8`` per word."""
    nb = bus_width // 8
    return zlib.crc32(b"".join(int(w).to_bytes(nb, "little") for w in words))


def open_port(url, baud=DEFAULT_BAUD, timeout=0.5):
    """Open ``url`` with :func:`serial.serial_for_url`; a malformed URL raises
    :class:`ValueError` saying so."""
    import serial
    from urllib.parse import urlsplit
    if url.startswith("socket://"):
        # pyserial's own message for a bad socket URL is its format string's KeyError
        # ('debug|info|warning|error') or a comparison with None
        try:
            port = urlsplit(url).port
        except ValueError:
            port = None
        if not urlsplit(url).hostname or port is None:
            raise ValueError(f"serial port {url}: a socket URL is socket://HOST:PORT "
                             "(PORT 0..65535)")
    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=timeout)
    except KeyError:
        # the same format-string error for unknown URL options (loop://?bad=1)
        raise ValueError(f"serial port {url}: unknown options in the URL") from None


class BoardLink:
    """A stop-and-wait frame link over ``port`` (see the module docstring).

    Parameters
    ----------
    port : pyserial-like object
        ``read(n)`` returns fewer than ``n`` bytes when its timeout expires.
    retries : int
        Resends of a frame before :class:`LinkError`.
    max_payload : int or None
        Payload bytes per frame; ``None`` asks the board (STATUS).

    Attributes
    ----------
    stats : dict
        Counts of ``frames`` sent, ``naks`` and ``timeouts`` (replies missing or corrupt).
    cycles : int or None
        Core cycles of the last :func:`run`.
    streamed : bool or None
        Whether the last :func:`run` streamed the parameter image (else the core replayed it).
    tables : bool or None
        The board's bridge forwards segment tables (ACT_TABLE frames: packed runs); known after
        the first STATUS.
    """

    _links = weakref.WeakKeyDictionary()

    def __init__(self, port, *, retries=8, max_payload=None):
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        self.port = port
        self.retries = retries
        self.stats = {"frames": 0, "naks": 0, "timeouts": 0}
        self.cycles = None
        self.image = None
        self.config = None
        self.resident = False          # the core holds self.image (resident configurations)
        self.assumed = False           # ... which is assumed, not known (load_parameters(reuse))
        self.streamed = None           # the last run streamed the image
        self.sdram = False             # the board has an SDRAM image store (long STATUS)
        self.tables = None             # the bridge forwards ACT_TABLE frames (packed runs)
        self._seq = 0
        self._max_payload = max_payload
        self._bus_bytes = None

    @classmethod
    def of(cls, port, **kwargs):
        """``port`` if it is a link, else the link of a port object (one per object) or of a
        newly opened URL."""
        if isinstance(port, BoardLink):
            return port
        if isinstance(port, str):
            return cls(open_port(port), **kwargs)
        try:
            link = cls._links.get(port)
        except TypeError:
            return cls(port, **kwargs)
        if link is None:
            link = cls._links[port] = cls(port, **kwargs)
        return link

    # -- frames --------------------------------------------------------------------------------

    def _read_reply(self):
        """One reply frame ``(type, seq, payload)``, or ``None`` on timeout or a bad CRC."""
        read = self.port.read
        for _ in range(64 + P.HEADER_BYTES):          # skip line noise before SOF
            b = read(1)
            if not b:
                return None
            if b[0] == P.SOF:
                break
        else:
            return None
        head = read(4)
        if len(head) < 4:
            return None
        n = head[2] | head[3] << 8
        rest = read(n + P.TRAILER_BYTES)
        if len(rest) < n + P.TRAILER_BYTES or P.crc16(head + rest) != 0:
            return None
        return head[0], head[1], bytes(rest[:n])

    def transact(self, ftype, payload=b""):
        """Send one frame until it is answered; returns the reply ``(type, payload)``.

        Raises
        ------
        LinkError
            After ``retries`` resends without an ACK/DATA/STATUS reply to this frame.
        """
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        frame = P.encode_frame(ftype, seq, payload)
        problems = []
        for _ in range(self.retries + 1):
            self.stats["frames"] += 1
            if hasattr(self.port, "reset_input_buffer"):
                self.port.reset_input_buffer()     # stop and wait: anything unread is stale
            self.port.write(frame)
            reply = self._read_reply()
            if reply is None:
                self.stats["timeouts"] += 1
                problems.append("no valid reply")
                if hasattr(self.port, "reset_input_buffer"):
                    self.port.reset_input_buffer()
                continue
            rtype, rseq, body = reply
            if not rtype & 0x80:
                problems.append("a host frame came back (is the line looped back?)")
                continue
            if rtype == P.R_NAK:
                self.stats["naks"] += 1
                reason = P.NAK_REASONS.get(body[0] if body else 0, "unknown reason")
                problems.append(f"NAK ({reason})")
                continue
            if rseq != seq:
                problems.append(f"reply to sequence {rseq}, not {seq}")
                continue
            return rtype, body
        raise LinkError(f"frame type 0x{ftype:02x} (sequence {seq}) failed after "
                        f"{self.retries + 1} attempts: {', '.join(problems)}")

    def _expect(self, ftype, payload, want):
        rtype, body = self.transact(ftype, payload)
        if rtype != want:
            raise LinkError(f"frame type 0x{ftype:02x} was answered with type 0x{rtype:02x}, "
                            f"not 0x{want:02x}")
        return body

    # -- operations ----------------------------------------------------------------------------

    def status(self):
        """``{"busy", "error", "output", "lost", "tables", "cycles", "bus_bytes",
        "max_payload"}`` (``tables``: the bridge carries segment tables, packed runs); a
        board with an SDRAM image store adds ``sdram`` (True), ``init_done``, ``init_error``,
        ``image_valid``, ``image_error``, ``store_busy``, ``loading``, ``fingerprint`` and
        ``image_words``."""
        st = self._parse_status(self._expect(P.T_STATUS, b"", P.R_STATUS))
        st.pop("accepted", None)
        return st

    def store_command(self, ftype, payload=b""):
        """LOAD, VERIFY (``payload``: words and fingerprint, u32 LE each) or RUN (SDRAM
        boards); returns the status reply, ``accepted`` included."""
        rtype, body = self.transact(ftype, payload)
        if rtype != P.R_STATUS:
            raise LinkError(f"frame type 0x{ftype:02x} was answered with type 0x{rtype:02x}, "
                            f"not a status")
        return self._parse_status(body)

    def _parse_status(self, body):
        if len(body) not in (P.STATUS_BYTES, P.SDRAM_STATUS_BYTES):
            raise LinkError(f"STATUS reply of {len(body)} bytes, not {P.STATUS_BYTES} or "
                            f"{P.SDRAM_STATUS_BYTES}")
        flags = body[0]
        st = {"busy": bool(flags & P.ST_BUSY), "error": bool(flags & P.ST_ERROR),
              "output": bool(flags & P.ST_OUTPUT), "lost": bool(flags & P.ST_LOST),
              "tables": bool(flags & P.ST_TABLE),
              "cycles": int.from_bytes(body[1:5], "little"), "bus_bytes": body[5],
              "max_payload": int.from_bytes(body[6:8], "little")}
        self.sdram = len(body) == P.SDRAM_STATUS_BYTES
        self.tables = st["tables"]
        if self.sdram:
            sd = body[8]
            st.update({"sdram": True, "init_done": bool(sd & P.SD_INIT_DONE),
                       "init_error": bool(sd & P.SD_INIT_ERROR),
                       "image_valid": bool(sd & P.SD_VALID),
                       "image_error": bool(sd & P.SD_ERROR), "store_busy": bool(sd & P.SD_BUSY),
                       "loading": bool(sd & P.SD_LOADING),
                       "accepted": bool(sd & P.SD_ACCEPTED),
                       "fingerprint": int.from_bytes(body[9:13], "little"),
                       "image_words": int.from_bytes(body[13:17], "little")})
        self._bus_bytes = st["bus_bytes"]
        if self._max_payload is None:
            self._max_payload = st["max_payload"]
        return st

    def reset(self):
        """Reset the core (RESET frame; aborts a run, forgets a resident image)."""
        self.resident = self.assumed = False
        self._expect(P.T_RESET, b"", P.R_ACK)

    def break_reset(self, duration=0.01):
        """Reset the core with a line break (works even while the board waits on the core)."""
        self.resident = self.assumed = False
        self.port.send_break(duration)
        if hasattr(self.port, "reset_input_buffer"):
            self.port.reset_input_buffer()

    def send_words(self, ftype_more, ftype_last, words, nbytes):
        """Send ``words`` (``nbytes`` each) in frames; the last frame is ``ftype_last``."""
        per = self._max_payload // nbytes
        for start in range(0, len(words), per):
            chunk = words[start:start + per]
            payload = b"".join(int(w).to_bytes(nbytes, "little") for w in chunk)
            last = start + per >= len(words)
            self._expect(ftype_last if last else ftype_more, payload, P.R_ACK)

    def read_words(self, count, nbytes, *, polls=100000):
        """READ until the output packet's last word; returns the words (at most ``count``)."""
        words = []
        for _ in range(polls):
            body = self._expect(P.T_READ, b"", P.R_DATA)
            flags, data = body[0], body[1:]
            if len(data) % nbytes:
                raise LinkError(f"DATA reply of {len(data)} bytes, not whole words")
            words += [int.from_bytes(data[i:i + nbytes], "little")
                      for i in range(0, len(data), nbytes)]
            if flags & P.DATA_FAILED:
                from bertcore.core.image import RunFailed
                raise RunFailed(words[0] if words else 0)
            if flags & P.DATA_ERROR and not data:
                raise BoardError("the core reported an error while the host waited for output "
                                 "(bad image or activation packet?)")
            if flags & P.DATA_LAST:
                if len(words) != count:
                    raise BoardError(f"the core returned {len(words)} words, expected {count}")
                return words
            if len(words) > count:
                raise BoardError(f"the core returned more than {count} words")
        raise LinkError(f"no complete output after {polls} READ frames")


def _check_config(link, config):
    st = link.status()
    nbytes = config.bus_width // 8
    if st["bus_bytes"] != nbytes:
        raise BoardError(f"the board's bus is {8 * st['bus_bytes']} bits, the configuration's "
                         f"{config.bus_width}")
    if link._max_payload < nbytes or link._max_payload % nbytes:
        raise LinkError(f"frame payload of {link._max_payload} bytes does not hold whole "
                        f"{config.bus_width}-bit words")
    return st


def load_parameters(port, words, config, *, reuse=False):
    """Prepare the board for :func:`run` with the parameter image ``words``.

    Resets the core, checks that the board's bus width matches ``config`` and stores the image
    on the link (it is streamed with every run; see the module docstring). Returns the
    :class:`BoardLink`.

    With ``reuse`` (resident configurations only) the core is not reset: it is assumed to hold
    this image from an earlier session, so the first run sends its activations alone. If the
    core holds no image it rejects them; :func:`run` then resets it and streams the image.
    A core holding the image of *another* model is not detected.
    """
    link = BoardLink.of(port)
    words = _check_image_words(words, config)
    if reuse and not config.resident:
        raise ValueError("reuse needs a resident configuration (a core that keeps its image)")
    if reuse:
        # The bridge answers a frame whose sequence byte equals that of the last frame it
        # executed with the stored reply, also across host sessions. A READ first (harmless:
        # it only drops a stale output) so that the run's first ACT is surely executed.
        link.transact(P.T_READ)
    else:
        link.reset()
    _check_config(link, config)
    link.image, link.config = words, config
    link.resident = link.assumed = reuse
    return link


def _wait_store(link, polls, what):
    """STATUS until the image store is up and idle; the last status."""
    for _ in range(polls):
        st = link.status()
        if st["init_error"]:
            raise ImageStoreError("the board's SDRAM failed its bring-up check (init_error): "
                                  "no image can be stored")
        if st["init_done"] and not st["store_busy"]:
            return st
    raise ImageStoreError(f"the board's image store is still busy or the SDRAM not up after "
                          f"{polls} status polls ({what})")


def _check_image_words(words, config):
    from bertcore.core.image import image_beats
    words = [int(w) for w in words]
    if len(words) != image_beats(config):
        raise ValueError(f"the image has {len(words)} words; the configuration needs "
                         f"{image_beats(config)}")
    return words


def load_image(port, words, config, *, polls=10000, verify_only=False):
    """Store the parameter image ``words`` in the board's SDRAM (boards with an image store).

    Checks the bus width, waits for the SDRAM bring-up, sends LOAD and the image in PARAM
    frames (each CRC-checked and resent as every frame), waits while the board reads the image
    back, then compares the board's fingerprint and word count with :func:`image_fingerprint`
    of ``words``. Returns the :class:`BoardLink`, ready for :func:`run`.

    With ``verify_only`` nothing is written: VERIFY tells the board the word count and the
    fingerprint of ``words``, and the board reads that many words back from its SDRAM and
    takes them as its image only if their CRC-32 is that fingerprint (the SDRAM kept the image
    across a reconfiguration of the FPGA without a power cycle, or a simulation preloaded it).

    Raises
    ------
    ImageStoreError
        No image store on the board, a failed SDRAM bring-up, an image the board did not take
        or that does not verify (read back differently, larger than the SDRAM; with
        ``verify_only``: the SDRAM does not hold this image).
    ValueError
        If ``words`` is not an image of ``config``'s size.
    """
    link = BoardLink.of(port)
    words = _check_image_words(words, config)
    st = _check_config(link, config)
    if not st.get("sdram"):
        raise ImageStoreError("the board has no SDRAM image store (its bitstream streams the "
                              "image with every run: use board run)")
    _wait_store(link, polls, "before the load")
    want = image_fingerprint(words, config.bus_width)
    command = "VERIFY" if verify_only else "LOAD"
    payload = struct.pack("<II", len(words), want) if verify_only else b""
    if not link.store_command(P.T_VERIFY if verify_only else P.T_LOAD, payload)["accepted"]:
        raise ImageStoreError(f"the board's image store did not take {command}")
    link.image = None                   # the stored image is being replaced
    if not verify_only:
        link.send_words(P.T_PARAM, P.T_PARAM_LAST, words, config.bus_width // 8)
    st = _wait_store(link, polls, "verifying the image")
    if verify_only and (st["image_error"] or not st["image_valid"]):
        raise ImageStoreError(f"the SDRAM does not hold this image: its first {len(words)} "
                              f"words do not have fingerprint {want:08x} (or are more than "
                              f"the SDRAM holds); load it with board load")
    if st["image_error"] or not st["image_valid"]:
        raise ImageStoreError(f"the image in SDRAM does not verify ({len(words)} words: read "
                              f"back differently, or larger than the SDRAM)")
    if st["fingerprint"] != want or st["image_words"] != len(words):
        raise ImageStoreError(f"the image in SDRAM does not verify: the board holds "
                              f"{st['image_words']} words with fingerprint "
                              f"{st['fingerprint']:08x}, sent {len(words)} words with "
                              f"{want:08x}")
    link.image, link.config = words, config
    link.resident = link.assumed = False
    return link


def run(port, activation_words, length, config, *, table=None):
    """Run one activation packet of ``length`` rows; returns the output words (``m_axis_act``).

    ``table`` (optional): the segment table of a packed packet
    (:func:`~bertcore.core.image.pack_segments`; ``length`` rows in all), sent in ACT_TABLE
    frames before ``activation_words``. The output is the rows of all segments
    (:func:`~bertcore.core.image.unpack_segments` splits them). The table is not checked
    here: the core checks it (a malformed one fails the run, :class:`RunFailed`).

    Raises
    ------
    BoardError
        If the core reports an error, no parameters were loaded, or the board's bridge cannot
        carry a segment table.
    RunFailed
        If the core ends the run with a failure packet (its cause code).
    LinkError
        If the link fails.
    """
    from bertcore.core.image import RunFailed, activation_beats
    link = BoardLink.of(port)
    if link.image is None:
        raise BoardError("load_parameters() first: the board has no parameter image")
    if link.config != config:
        raise BoardError("run() with another configuration than load_parameters()")
    beats = activation_beats(length, config)
    if len(activation_words) != beats:
        raise ValueError(f"{length} rows take {beats} activation words, not "
                         f"{len(activation_words)}")
    packet = ([int(w) for w in table or ()], list(activation_words))
    if link.assumed:
        link.assumed = False
        try:
            return _run(link, packet, config)
        except (BoardError, RunFailed):
            link.reset()               # the core holds no image: stream it (below)
    return _run(link, packet, config)


def _send_packet(link, packet, nbytes):
    """The activation packet: the segment table (ACT_TABLE frames, ``tuser``), then the rows."""
    table, data = packet
    if table:
        link.send_words(P.T_ACT_TABLE, P.T_ACT_TABLE, table, nbytes)
    link.send_words(P.T_ACT, P.T_ACT_LAST, data, nbytes)


def _run(link, packet, config):
    from bertcore.core.image import HEADER_BITS, vector_beats
    nbytes = config.bus_width // 8
    beats = len(packet[1])
    st = link.status()
    if packet[0] and not st["tables"]:
        raise BoardError("the board's bridge does not carry segment tables (a bitstream from "
                         "before packed runs): rebuild it, or run one sequence per run "
                         "(--no-pack)")
    if st["busy"] or st["output"]:
        link.reset()                               # a previous run was abandoned
    if link.sdram:
        return _run_stored(link, packet, config, st)
    if st["error"]:
        link.resident = False                      # a failed run invalidates a stored image
    link.streamed = not link.resident
    if link.resident:
        # the core replays its stored image for a run that starts with activations
        _send_packet(link, packet, nbytes)
    else:
        # header first (the core takes the activation packet only after it), then the rest
        head = vector_beats(HEADER_BITS, config.bus_width)
        link.send_words(P.T_PARAM, P.T_PARAM, link.image[:head], nbytes)
        _send_packet(link, packet, nbytes)
        link.send_words(P.T_PARAM, P.T_PARAM_LAST, link.image[head:], nbytes)
    try:
        out = link.read_words(beats, nbytes)
    except Exception:
        link.resident = False                      # a failed run invalidates a stored image
        raise
    st = link.status()
    if st["error"]:
        link.resident = False
        raise BoardError("the core reported an error after the run")
    link.cycles = st["cycles"]
    link.resident = config.resident
    return out


def _run_stored(link, packet, config, st):
    """A run on the image in SDRAM: its fingerprint checked first, then RUN + activations."""
    nbytes = config.bus_width // 8
    if st["busy"] or st.get("store_busy"):
        st = _wait_store(link, 1000, "before the run")
    want = image_fingerprint(link.image, config.bus_width)
    if not st["image_valid"]:
        raise ImageStoreError("the board's SDRAM holds no image (power cycled?): load it "
                              "first (board load)")
    if st["fingerprint"] != want or st["image_words"] != len(link.image):
        raise ImageStoreError(f"the board's SDRAM holds another image (fingerprint "
                              f"{st['fingerprint']:08x}, {st['image_words']} words; this "
                              f"model's is {want:08x}, {len(link.image)} words): load it first "
                              f"(board load)")
    if not link.store_command(P.T_RUN)["accepted"]:
        raise ImageStoreError("the board's image store did not take RUN")
    link.streamed = False
    _send_packet(link, packet, nbytes)
    out = link.read_words(len(packet[1]), nbytes)
    st = link.status()
    if st["error"]:
        raise BoardError("the core reported an error after the run")
    link.cycles = st["cycles"]
    return out


def status(port):
    """The board's status (see :meth:`BoardLink.status`)."""
    return BoardLink.of(port).status()


def run_texts(link, int_model, texts, config, *, pack=True):
    """Run ``texts`` through the board (after :func:`load_parameters`): the host tokenizes and
    embeds (``int_model.embed_int``), the board runs the encoder layers.

    With ``pack`` (and a bridge that carries segment tables, :attr:`BoardLink.tables`) the texts
    are packed into runs first-fit (:func:`bertcore.packing.plan_runs`: each run holds up to
    ``max_seq`` rows and ``max_segments`` texts; the results keep the order of ``texts``);
    otherwise each text is one run.

    Returns one dict per text: ``ids``, ``out`` (int8 hidden states ``[L, hidden]`` of the
    core), ``run`` (the index of its run), ``texts_in_run``, and of that run ``cycles`` (core
    cycles), ``seconds`` (host wall time), ``streamed`` (whether the parameter image went over
    the line with it).

    Raises
    ------
    ValueError
        If a text has more tokens than ``config.max_seq``.
    """
    import time
    from bertcore.packing import plan_runs
    from bertcore.core.image import unpack_segments
    token_ids = [int_model.encode_text(text) for text in texts]
    for text, ids in zip(texts, token_ids):          # all checked before the first run
        if len(ids) > config.max_seq:
            raise ValueError(f"{text[:30]!r} has {len(ids)} tokens; the core holds at most "
                             f"{config.max_seq}")
    if link.tables is None:
        link.status()
    runs = plan_runs([int_model.embed_int(ids) for ids in token_ids], config,
                     pack=pack and bool(link.tables))
    results = [None] * len(texts)
    for r, plan in enumerate(runs):
        t0 = time.monotonic()
        words = run(link, plan.data, sum(plan.lengths), config, table=plan.table)
        seconds = time.monotonic() - t0
        for i, out in zip(plan.indices, unpack_segments(words, plan.lengths, config)):
            results[i] = {"ids": token_ids[i], "out": out, "run": r,
                          "texts_in_run": len(plan.indices), "cycles": link.cycles,
                          "seconds": seconds, "streamed": link.streamed}
    return results
