"""`zhclip demo` and its props: the generated sample in every source format, the loopback image
server (with the faults real crawls meet), the simulated web of many hosts for scale runs
(simweb*), synthetic download folders and damaged shard folders
that tests and benchmarks reuse."""
