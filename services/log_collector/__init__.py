"""The log collector: edge log pages into the pipeline log, exactly once, in order per edge."""
