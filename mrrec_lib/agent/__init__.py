"""The policy at work: the recommendation prompt (`prompt`), reading tool calls and the boxed answer (`parse`),
token-level generation (`policy`), the multi-turn rollout engine (`rollout`), its records (`trajectory`), and
running a policy over a table of queries with memory and rewards (`run.run_policy_on_queries`)."""
