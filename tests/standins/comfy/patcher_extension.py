"""Stand-in for comfy/patcher_extension.py: the wrapper kinds and the executor's calling convention."""


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


def run_with_wrappers(wrappers: list, original, *args, **kwargs):
    """wrappers[0](executor, *args, **kwargs), each executor calling the next wrapper, the last the original."""
    def executor_at(i):
        def executor(*a, **kw):
            return wrappers[i](executor_at(i + 1), *a, **kw) if i < len(wrappers) else original(*a, **kw)
        return executor
    return executor_at(0)(*args, **kwargs)
