import io

from inspector.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal():
    out = io.StringIO()
    p = Progress("replay", 100, stream=out, every=1, delay=0)
    p.update(50, 5)
    p.done()
    assert out.getvalue() == ""


def test_silent_for_the_first_second_then_shows():
    out = Tty()
    p = Progress("replay", 100, stream=out, every=1, delay=0.0)
    p.update(50, 500)
    assert "50.0%" in out.getvalue() and "500 at" in out.getvalue()
    p.done()
    assert out.getvalue().endswith("\r")
    quiet = Tty()
    q = Progress("scan", 100, stream=quiet, every=1, delay=60)
    q.update(99, 1)
    q.done()
    assert quiet.getvalue() == ""


def test_replay_through_a_terminal_shows_progress(tmp_path):
    """replay drives the bar from the capture reader's position (forced on, no delay)."""
    from inspector.bench import mixed_workload
    from inspector.config import Config
    from inspector.engine import Engine
    from inspector.replay import run
    from inspector.rules import load_rules

    out = Tty()
    packets = mixed_workload(20_000, 100)
    bar = Progress("replay", len(packets), stream=out, every=1000, delay=0)
    seen = [0]

    def tick() -> None:
        seen[0] += 1
        bar.update(seen[0], seen[0])
    run(Engine(Config(), load_rules([])), packets, lambda d: None, tick)
    assert out.getvalue().count("\r") >= 1 and "replay [" in out.getvalue()
