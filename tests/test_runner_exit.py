"""The runner and the CLI end without the interpreter's teardown (tuiwiz/process_exit.py exit_now), yet finish
first what that teardown would: threads, thread pools' queued work, exit handlers, buffered output."""

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tuiwiz.process_exit import exit_now

    folder = Path(sys.argv[1])

    def later(name, delay):
        time.sleep(delay)
        (folder / name).write_text("done")

    threading.Thread(target=later, args=("thread", 0.3)).start()
    ThreadPoolExecutor(1).submit(later, "pool", 0.3)  # its worker is a daemon thread: only the shutdown waits
    atexit.register(lambda: (folder / "atexit").write_text("done"))
    sys.stdout.write("buffered, no newline")  # a pipe: block-buffered until flushed
    exit_now(7)
""")


def test_exit_now_finishes_threads_pools_handlers_and_output_then_keeps_the_code(tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 7, result.stderr
    assert result.stdout == "buffered, no newline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atexit", "pool", "thread"]
