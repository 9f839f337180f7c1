"""The agent: one poll loop per server node (or per listening port), slots, task reporting,
drain. ``daemon`` runs it; its parts are grouped by concern: ``connections`` (reaching servers
and trusting them), ``running`` (taking and running tasks, nothing lost), ``kinds`` (what each
kind of task does beyond a script)."""
