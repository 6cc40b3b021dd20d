"""CPU execution: the thread pool and its size thresholds, the threaded eager forward, and the
host memory cache."""
