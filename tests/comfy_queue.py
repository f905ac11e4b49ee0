"""ComfyUI's queue without its web server, for the scripts that run prompts in-process
(tests/real_comfyui_workflow.py, bench/comfyui_sampler.py): validate a prompt, then execute it."""
from __future__ import annotations

import asyncio
import itertools

_ids = itertools.count()


class Server:
    """What PromptExecutor needs of ComfyUI's PromptServer when no client is connected."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, *args, **kwargs):
        pass

    def queue_updated(self):
        pass


def validate(prompt: dict):
    """ComfyUI's own validation, as /prompt does it: (prompt id, output nodes to run, None) or (id, None, error)."""
    import execution
    pid = f"arcattn-{next(_ids)}"
    valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
    if not valid[0]:
        return pid, None, {"error": valid[1], "node_errors": valid[3]}
    return pid, valid[2], None


def execute(executor, prompt: dict, pid: str, outputs: list) -> None:
    """Run a validated prompt; a failed prompt raises with ComfyUI's last status message."""
    executor.execute(prompt, pid, {}, outputs)
    if not executor.success:
        raise RuntimeError(f"prompt failed: {executor.status_messages[-1]}")
