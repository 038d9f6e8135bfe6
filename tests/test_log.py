import logging
import os

from rebootshim.log import LogfmtFormatter, NonBlockingHandler, ctx


def record(msg: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, msg, (), None)
    rec.ctx = fields
    return rec


def test_lines_are_logfmt_with_fields_in_fixed_order() -> None:
    line = LogfmtFormatter({"namespace": "ns"}).format(
        record("rebooted", reboot_count=2, id="c1", pid=7)
    )
    assert line.startswith("time=")
    assert " level=info msg=rebooted namespace=ns id=c1 pid=7 reboot_count=2" in line


def test_values_with_spaces_and_quotes_are_quoted() -> None:
    line = LogfmtFormatter().format(record('runc said "no" twice'))
    assert 'msg="runc said \\"no\\" twice"' in line


def test_a_full_pipe_drops_lines_instead_of_blocking() -> None:
    r, w = os.pipe()
    try:
        handler = NonBlockingHandler(w)
        handler.setFormatter(LogfmtFormatter())
        for _ in range(5000):
            handler.emit(record("x" * 100))
        assert len(os.read(r, 1 << 20)) > 0
    finally:
        os.close(r)
        os.close(w)


def test_ctx_wraps_fields_for_extra() -> None:
    assert ctx(id="c1") == {"ctx": {"id": "c1"}}
