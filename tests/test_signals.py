"""install_stop_handlers: the first SIGTERM/SIGINT asks for a stop, a second one exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

from workshaper.signals import install_stop_handlers

SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from workshaper.signals import install_stop_handlers

    stopping = threading.Event()
    install_stop_handlers(stopping.set, stopping.is_set, forced_exit_note="test")
    print("ready", flush=True)
    stopping.wait(60)
    print("stop requested", flush=True)
    if sys.argv[1] == "twice":
        threading.Event().wait(60)  # a second signal must end this at once
    """
)


def run_and_signal(mode: str, signals: list[signal.Signals]) -> int:
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signals[0])
            assert proc.stdout.readline().strip() == "stop requested"
            for s in signals[1:]:
                proc.send_signal(s)
            return proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_first_signal_requests_a_stop() -> None:
    assert run_and_signal("once", [signal.SIGTERM]) == 0


def test_second_signal_exits_at_once_with_status_1() -> None:
    assert run_and_signal("twice", [signal.SIGINT, signal.SIGTERM]) == 1


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)
    restores = []
    thread = threading.Thread(
        target=lambda: restores.append(install_stop_handlers(print, bool, forced_exit_note="x"))
    )
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is before
    restores[0]()  # a no-op, callable all the same


def test_restore_puts_the_previous_handlers_back() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    restore = install_stop_handlers(print, bool, forced_exit_note="x")
    assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    restore()
    assert {s: signal.getsignal(s) for s in before} == before


# The second signal lands while the first one's handler is still logging, before it has asked
# for the stop (as when a test or an operator reacts to the "stopping" log line at once).
NESTED_SCRIPT = textwrap.dedent(
    """
    import logging, os, signal, sys, threading
    from workshaper.signals import install_stop_handlers

    class SignalAgainOnStopping(logging.Handler):
        sent = False

        def emit(self, record):
            if "stopping" in record.getMessage() and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # bytecodes: the nested handler runs here
                    pass

    logging.getLogger("workshaper").addHandler(SignalAgainOnStopping())
    logging.getLogger("workshaper").setLevel(logging.INFO)
    stopping = threading.Event()
    install_stop_handlers(stopping.set, stopping.is_set, forced_exit_note="test")
    os.kill(os.getpid(), signal.SIGTERM)
    stopping.wait(10)
    sys.exit(0)
    """
)


def test_a_second_signal_during_the_first_ones_handling_exits() -> None:
    proc = subprocess.run([sys.executable, "-c", NESTED_SCRIPT], timeout=60, check=False)
    assert proc.returncode == 1
