"""Tasks (Pattern B): a planner route plans, executor routes run the routine steps, a person
approves irreversible tool calls, and repeated steps come from a cache. See docs/tasks.md."""
