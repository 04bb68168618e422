"""A sentence-transformers-like Python API: ``SentenceEncoder(artifact).encode(texts)``.

Example (``minilm.safetensors`` written by ``bertcore quantize``; ``tests/test_api.py`` makes
the same calls on a tiny model)::

    from bertcore import SentenceEncoder
    enc = SentenceEncoder("minilm.safetensors", backend="int")
    enc.encode(["A man is riding a horse.", "A woman plays music."]).shape   # (2, 384)

Every backend goes through the code of ``bertcore embed`` (:mod:`bertcore.embed`): the same
tokenization and truncation (the tokenizer stored in the artifact), mean pooling over the
tokens and L2 normalization, as sentence-transformers' ``Pooling`` (mean) and ``Normalize``
modules of all-MiniLM-L6-v2 do.
"""

import os

import numpy as np

from .checkpoint import BertError

__all__ = ["SentenceEncoder", "BACKENDS"]

#: The backends of :class:`SentenceEncoder`.
BACKENDS = ("int", "float", "rtl", "board")


class SentenceEncoder:
    """Sentence embeddings of a quantized artifact (``bertcore quantize``) on a backend.

    Parameters
    ----------
    artifact : str or Path
        Quantized model written by ``bertcore quantize``.
    backend : str
        ``"int"``: the integer reference model (the spec); ``"float"``: the float model the
        artifact was quantized from; ``"rtl"``: the emitted Verilog of the encoder core in a
        simulator (bit-identical to ``"int"``; the first call builds it, cached in
        ``build/rtlsim/``); ``"board"``: an FPGA board running the core over its UART.
    simulator : str
        ``"verilator"`` or ``"icarus"`` (``backend="rtl"``).
    port : str or pyserial-like object
        Serial device or pyserial URL of the board (``backend="board"``).
    config : CoreConfig, optional
        Core configuration the board runs (default: the preset of the model's shape), e.g.
        ``boards.top.board_spec("ulx3s-85f").config``.
    baud : int
        UART rate of the board (``backend="board"``).

    Raises
    ------
    BertError
        If the artifact is missing or unreadable, the backend is unknown or an argument is of
        the wrong kind; from :meth:`encode`, for bad texts and, on the board backend, a port
        that cannot be opened or a configuration that does not fit the model or the board.
    """

    def __init__(self, artifact, backend="int", *, simulator="verilator", port=None,
                 config=None, baud=None):
        from .config import CoreConfig
        from .quant.artifact import load_artifact
        if not isinstance(artifact, (str, os.PathLike)) or not str(artifact).strip():
            raise BertError(f"artifact must be the path of a quantized model (str or Path), "
                            f"not {artifact!r}")
        if backend not in BACKENDS:
            raise BertError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
        if backend == "board" and port is None:
            raise BertError("backend 'board' needs port= (a serial device or pyserial URL)")
        if port is not None and not isinstance(port, str) and not (
                hasattr(port, "read") and hasattr(port, "write")):
            raise BertError(f"port must be a serial device, a pyserial URL or a pyserial-like "
                            f"object, not {type(port).__name__}")
        if config is not None and not isinstance(config, CoreConfig):
            raise BertError(f"config must be a CoreConfig (e.g. bertcore.config.preset(name)), "
                            f"not {type(config).__name__}")
        if baud is not None and (isinstance(baud, bool) or not isinstance(baud, int)
                                 or baud < 1):
            raise BertError(f"baud must be a positive integer, not {baud!r}")
        self.artifact = artifact
        self.backend = backend
        self.simulator = simulator
        self._model = load_artifact(artifact)          # checked now, not at the first encode
        self._port, self._config, self._baud, self._link = port, config, baud, None

    def close(self):
        """Release the board's serial port if this encoder opened it (a port object given as
        ``port=`` stays open: its owner closes it). The encoder can be used again: the next
        call opens the port and loads the image again. Also ``with SentenceEncoder(...) as
        enc:``."""
        link, self._link = self._link, None
        if link is not None and isinstance(self._port, str):
            close = getattr(link.port, "close", None)
            if close is not None:
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def dimension(self):
        """Size of an embedding (the model's hidden size)."""
        return self._model.shape.hidden

    def get_sentence_embedding_dimension(self):
        """Size of an embedding (sentence-transformers' name)."""
        return self.dimension

    def encode(self, sentences):
        """Embeddings of ``sentences``: float32 ``[N, dimension]``, L2-normalized, input order
        kept; a single string gives one vector ``[dimension]`` (as sentence-transformers)."""
        from .embed import check_texts
        single = isinstance(sentences, str)
        texts = check_texts(sentences)
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        if self.backend == "board":
            emb = self._board(texts)
        else:
            from .embed import embed_texts
            emb = embed_texts(texts, backend=self.backend, quantized=self.artifact,
                              simulator=self.simulator)
        return emb[0] if single else emb

    def _board(self, texts):
        """The board runs the encoder layers; the host embeds, pools and normalizes as the
        other backends (``bertcore board run``)."""
        from .board import (DEFAULT_BAUD, BoardError, BoardLink, load_parameters, open_port,
                            run_texts)
        from .core.image import ImageError, check_model, pack_parameter_image
        from .quant.floatref import mean_pool
        qm = self._model
        if self._link is None:
            config = self._config
            if config is None:
                from .embed import preset_for
                _, config = preset_for(qm.shape)
            try:
                check_model(qm, config)
                port = self._port
                if isinstance(port, str):
                    port = open_port(port, self._baud or DEFAULT_BAUD)
            except (ImageError, OSError, ValueError) as exc:   # SerialException: an OSError
                raise BertError(" ".join(str(exc).split())) from None
            link = BoardLink.of(port)
            try:
                load_parameters(link, pack_parameter_image(qm, config), config)
            except BoardError as exc:        # the board runs another configuration
                raise BertError(str(exc)) from None
            self._link, self._config = link, config
        try:
            results = run_texts(self._link, qm, texts, self._config)
        except ValueError as exc:
            raise BertError(str(exc)) from None
        return np.stack([mean_pool(qm.dequantize(r["out"])).numpy()
                         for r in results]).astype(np.float32)
