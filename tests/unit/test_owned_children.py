"""The engine core and the template workers live in sessions of their own: a terminal's
Ctrl-C (SIGINT to the whole foreground process group) reaches only the process that owns
them, even while they are still starting, when no handler of ours could catch it yet."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Plays the server: it catches the interrupt (the real one shuts down) and checks that its
# children, hit during their interpreters' start and imports, carry on and end cleanly. A
# handler, not SIG_IGN: an ignored signal stays ignored in the children, which would hide
# what this test looks for.
SCRIPT = textwrap.dedent("""
    import asyncio, os, signal, time
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    from pagedllm.engine.engine_process import PendingEngine
    from pagedllm.inputs.chat import ChatRender
    from pagedllm.inputs.template_sandbox import TemplateSandbox

    pending = PendingEngine.launch()
    box = TemplateSandbox(1)
    time.sleep(0.02)
    os.killpg(0, signal.SIGINT)
    job = ChatRender("{{ messages[0].content }}!", [{"content": "hi"}], None, None, False,
                     False, {})
    print(asyncio.run(box.render(job)))
    box.close()
    pending.process.stdin.close()
    print("engine", pending.process.wait(timeout=120))
""")


def test_ctrl_c_while_children_start_reaches_only_their_owner():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=180, start_new_session=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["hi!", "engine 0"], done.stdout
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
