"""Runner-side code: what a runner process (``runner_stub``, or any Python runner)
uses to take part in an fnlb cluster. Nothing here runs in the LB.

    from fnlb.runnerside import register_loop   # heartbeat Admin/AddRunner to an LB
"""

from fnlb.runnerside.registration import register_loop

__all__ = ["register_loop"]
