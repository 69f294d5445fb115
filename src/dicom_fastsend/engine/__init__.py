"""The engine: the inventory, the walk and admission, scheduling, the coordinator,
its backends (local processes, Dask) and the worker with its association."""
