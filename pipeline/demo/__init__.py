"""`zhclip demo` and its props: the generated sample in every source format, the loopback image
server (with the faults real crawls meet), synthetic download folders and damaged shard folders
that tests and benchmarks reuse."""
