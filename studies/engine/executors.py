"""Where cells run: in this process, on local worker processes, or on a Dask distributed cluster.

Every executor takes the study's module name and the pending cells as (index, cell) pairs and
yields (index, rows) as cells finish, in completion order; the runner puts the rows back in cell
order, so the data do not depend on the executor or the worker count. Cells travel in batches of
consecutive cells (one task each): a cell is small, and consecutive cells often share an input
that a study may keep in memory. Workers import the study module by name, so the repository must
be importable where they run (the project installed, or its root on the workers' path).
"""
import importlib
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed

#: batches per worker: enough to balance the load, few enough that scheduling costs little
BATCHES_PER_WORKER = 4


def compute_batch(module_name, cells):
    """Rows of each cell of a batch, computed by the study's cell function (runs in a worker)."""
    study = importlib.import_module(module_name).STUDY
    return [study.cell(cell) for cell in cells]


def batches(pending, workers):
    size = max(1, math.ceil(len(pending) / (workers * BATCHES_PER_WORKER)))
    return [pending[start:start + size] for start in range(0, len(pending), size)]


def run_serial(module_name, pending):
    study = importlib.import_module(module_name).STUDY
    for index, cell in pending:
        yield index, study.cell(cell)


def run_local(module_name, pending, workers):
    """Worker processes started fresh ("spawn"): a forked child of a process that has started
    numba's or PyTorch's thread pools can deadlock."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
        futures = {}
        for batch in batches(pending, workers):
            indices = [index for index, _ in batch]
            future = executor.submit(compute_batch, module_name, [cell for _, cell in batch])
            futures[future] = indices
        try:
            for future in as_completed(futures):
                yield from zip(futures[future], future.result())
        finally:
            for future in futures:
                future.cancel()


def run_dask(module_name, pending, address):
    from distributed import Client
    from distributed import as_completed as dask_completed

    with Client(address) as client:
        workers = max(1, sum(client.nthreads().values()))
        futures = {}
        for batch in batches(pending, workers):
            future = client.submit(compute_batch, module_name, [cell for _, cell in batch],
                                   pure=False)
            futures[future] = [index for index, _ in batch]
        try:
            for future in dask_completed(futures):
                yield from zip(futures[future], future.result())
        finally:
            client.cancel(list(futures))


def execute(module_name, pending, workers=1, scheduler=None, serial=False):
    """Yield (index, rows) for every pending cell: serially for a ``serial`` study or one worker,
    on the Dask cluster at ``scheduler`` if given, else on ``workers`` local processes."""
    if not pending:
        return iter(())
    if serial or (scheduler is None and workers <= 1):
        return run_serial(module_name, pending)
    if scheduler is not None:
        return run_dask(module_name, pending, scheduler)
    return run_local(module_name, pending, min(workers, len(pending)))
