"""Running tasks: the poll loop, slots, each task's runner and reporter, the journal and spool,
recovery after a restart, isolation and resource checks."""
