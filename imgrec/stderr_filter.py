"""The quiet console's filter process (``imgrec.console.filter_stderr`` runs this
file with ``python -S -E``): lines in on stdin, those not matching the pattern in
``$IMGREC_NOISE_PATTERN`` out on stdout, which is the filtered process's original
stderr. A partial line (a prompt, a progress bar's "\\r" update) goes out after
0.2 s without more input. It never dies on a write error: its death would break
every later write to the descriptor it filters. Standard library only, no imgrec.
"""

import os
import re
import select

IDLE_S = 0.2


def _out(data: bytes) -> None:
    try:
        os.write(1, data)
    except OSError:
        pass  # the original stream is gone: keep draining, never block the writer


def main() -> None:
    drop = re.compile(os.environ["IMGREC_NOISE_PATTERN"].encode(), re.M)
    partial = b""
    while True:
        if partial and not select.select([0], [], [], IDLE_S)[0]:
            _out(partial)
            partial = b""
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        lines = (partial + chunk).splitlines(keepends=True)
        partial = b"" if lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        kept = b"".join(line for line in lines if not drop.search(line))
        if kept:
            _out(kept)
    if partial and not drop.search(partial):
        _out(partial)


if __name__ == "__main__":
    main()
