"""Other tools run under the same benchmarks as the pipeline, on the same pages, for comparison."""
