"""The training machinery every stage shares: the state, the host loop, optimisers,
checkpoints, the fault guard, preemption and summaries."""
